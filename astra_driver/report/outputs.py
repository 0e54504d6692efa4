"""The timeline outputs a verb writes (`--timeline`, `--timeline-png` and their options), in one place so replay,
simulate, run and train take the same flags and write the same files.

    request = TimelineRequest.from_flags(timeline, timeline_png, window, npus, max_events, rows)  # before the run
    ... run ...
    write_timelines(request, node_times, facts=..., tracks=[...])                                 # after it
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from astra_driver.paths import check_output_path
from astra_driver.report.gantt import DEFAULT_MAX_ROWS, draw_gantt
from astra_driver.report.timeline import (
    DEFAULT_MAX_EVENTS,
    FactsSource,
    TimeWindow,
    Track,
    build_timeline,
    parse_npus,
    parse_window,
    write_timeline,
)
from llm_converter.errors import PipesimError

# typer options a verb adds to its signature (the defaults are the "not given" values).
TimelineFlag = Annotated[
    Path | None,
    typer.Option("--timeline", help="Write a Chrome trace (Perfetto, chrome://tracing) of every node to FILE.json."),
]
TimelinePngFlag = Annotated[
    Path | None, typer.Option("--timeline-png", help="Draw a Gantt chart per NPU (compute, communication) to FILE.png.")
]
TimelineWindowFlag = Annotated[
    str | None,
    typer.Option("--timeline-window", help="Only what overlaps START_US:END_US (microseconds; either may be empty)."),
]
TimelineNpusFlag = Annotated[
    str | None, typer.Option("--timeline-npus", help="Only these ranks, e.g. 0-7,64 (timeline and chart).")
]
TimelineMaxEventsFlag = Annotated[
    int,
    typer.Option("--timeline-max-events", help="Keep at most N events in the trace, the earliest first."),
]
TimelineRowsFlag = Annotated[
    int, typer.Option("--timeline-rows", help="Chart rows at most; more NPUs share a row (busy fractions).")
]


@dataclass(frozen=True)
class TimelineRequest:
    """What timeline files to write and what to keep in them."""

    json_path: Path | None = None
    png_path: Path | None = None
    window: TimeWindow | None = None
    npus: frozenset[int] | None = None
    max_events: int | None = DEFAULT_MAX_EVENTS
    max_rows: int = DEFAULT_MAX_ROWS

    @property
    def wanted(self) -> bool:
        """Whether any file is asked for (then the run must record node times)."""
        return self.json_path is not None or self.png_path is not None

    @classmethod
    def from_flags(
        cls,
        timeline: Path | None = None,
        timeline_png: Path | None = None,
        window: str | None = None,
        npus: str | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        rows: int = DEFAULT_MAX_ROWS,
    ) -> TimelineRequest:
        """Parse and check the flags before the run (a bad path or value fails before hours of simulation)."""
        if timeline is not None:
            check_output_path(timeline, "--timeline")
        if timeline_png is not None:
            check_output_path(timeline_png, "--timeline-png")
        if max_events < 1:
            raise PipesimError(f"--timeline-max-events {max_events}: must be >= 1")
        if rows < 1:
            raise PipesimError(f"--timeline-rows {rows}: must be >= 1")
        return cls(
            json_path=timeline,
            png_path=timeline_png,
            window=parse_window(window) if window else None,
            npus=parse_npus(npus) if npus else None,
            max_events=max_events,
            max_rows=rows,
        )


def write_timelines(
    request: TimelineRequest,
    node_times: Sequence[Sequence[Sequence[Any]]],
    facts: FactsSource | None = None,
    tracks: Sequence[Track] = (),
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write what `request` asks for from per-rank (node_id, name, type, issue_ns, end_ns) node times."""
    if request.npus is not None:
        missing = sorted(rank for rank in request.npus if rank >= len(node_times))
        if missing:
            last = len(node_times) - 1
            raise PipesimError(f"--timeline-npus: rank {missing[0]} is not in the run (its NPUs are 0-{last})")
    if request.json_path is not None:
        timeline = build_timeline(
            node_times,
            facts=facts,
            tracks=tracks,
            window=request.window,
            npus=request.npus,
            max_events=request.max_events,
            metadata=metadata,
        )
        write_timeline(request.json_path, timeline)
    if request.png_path is not None:
        draw_gantt(
            request.png_path,
            node_times,
            window=request.window,
            max_rows=request.max_rows,
            npus=sorted(request.npus) if request.npus is not None else None,
        )
