"""The one exception type users see: a one-line message that names the file, the field and the fix."""

from __future__ import annotations


class PipesimError(Exception):
    """A failure the user caused (bad config, bad trace, missing file...). The CLI prints it on one line
    and exits with code 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class DeadlockError(PipesimError):
    """The simulation cannot progress: some nodes never become issuable or never complete."""

    def __init__(self, message: str, stuck: dict[int, list[int]]) -> None:
        super().__init__(message)
        self.stuck = stuck
