"""A progress bar for `pipesim run`: on a terminal only (stderr), nothing at all when output is redirected.

    with ServingProgress(total_requests=len(requests)) as progress:
        ...
        progress.update(done_requests, sim_ns)   # as often as you like: redraws at most 10 times a second

The bar shows finished requests of the total, the simulated time reached and the wall time. rich is imported
only when the bar is shown, so a redirected run pays nothing for it.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

NS_PER_S = 1_000_000_000
REFRESH_S = 0.1  # the least wall time between two redraws


class ServingProgress:
    """Context manager; `enabled=None` shows the bar exactly when `stream` (stderr by default) is a terminal."""

    def __init__(
        self,
        total_requests: int,
        enabled: bool | None = None,
        stream: IO[str] | None = None,
        unit: str = "requests",
        show_sim_time: bool = True,
    ) -> None:
        self.total_requests = total_requests
        self.unit = unit  # what is counted (`pipesim sweep` counts "points" and has no simulated time)
        self.show_sim_time = show_sim_time
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None
        self._last_draw = 0.0
        self._done = 0
        self._sim_ns = 0

    def __enter__(self) -> ServingProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("simulating"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit + (", sim {task.fields[sim_s]:.3f} s" if self.show_sim_time else "")),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,  # the summary printed after the run replaces it
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("serving", total=self.total_requests, sim_s=0.0)
        return self

    def update(self, done_requests: int, sim_ns: int) -> None:
        """Record progress; redraws at most every REFRESH_S of wall time (cheap to call every iteration)."""
        self._done = done_requests
        self._sim_ns = sim_ns
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last_draw >= REFRESH_S:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        self._progress.update(self._task, completed=self._done, sim_s=self._sim_ns / NS_PER_S)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._draw()
            self._progress.__exit__(*exc)
            self._progress = None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
