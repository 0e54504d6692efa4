"""The one exception type users see: a one-line message that names the file, the field and the fix.

Error lines stay short and printable whatever the input held: lists in messages go through `name_first`
(the first few, then a count of the rest), and PipesimError itself flattens whitespace, shows control
characters and lone surrogates as escapes, and cuts the middle out of anything longer than MAX_MESSAGE_CHARS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import islice

# A message longer than this keeps its head (what failed) and its tail (the fix), with the middle cut out.
MAX_MESSAGE_CHARS = 1000
_TAIL_CHARS = 200
# Control characters a file's text may carry into a message (a terminal would act on them).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def name_first(items: Iterable[object], limit: int = 5, sep: str = ", ") -> str:
    """`items` joined, but at most `limit` of them, then a count of the rest: "3, 7, 9 and 99997 more".

    The one home of list truncation in error messages: a node with 100,000 missing dependencies must not
    print a 690 KB line."""
    iterator = iter(items)
    shown = [str(item) for item in islice(iterator, limit)]
    rest = sum(1 for _ in iterator)
    text = sep.join(shown)
    return f"{text} and {rest} more" if rest else text


def one_line(message: str) -> str:
    """`message` as one short printable line (see the module docstring)."""
    text = " ".join(str(message).split())
    text = _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)
    # Lone surrogates (from a JSON "\ud800" or a file read with surrogateescape) cannot be printed as UTF-8.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_MESSAGE_CHARS:
        head = MAX_MESSAGE_CHARS - _TAIL_CHARS
        cut = len(text) - head - _TAIL_CHARS
        text = f"{text[:head]} [... {cut} characters left out ...] {text[-_TAIL_CHARS:]}"
    return text


class PipesimError(Exception):
    """A failure the user caused (bad config, bad trace, missing file...). The CLI prints it on one line
    and exits with code 2, without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class DeadlockError(PipesimError):
    """The simulation cannot progress: some nodes never become issuable or never complete. `stuck` maps each
    stuck rank to its stuck node ids (complete, for programs; the message names only the first few)."""

    def __init__(self, message: str, stuck: dict[int, list[int]]) -> None:
        super().__init__(message)
        self.stuck = stuck
