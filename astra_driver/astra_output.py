"""ASTRA-Sim's printed results: the per-rank "finished" lines on stdout and the trace lines of log.log.

ASTRA-Sim logs through spdlog, so a line may carry a `[time] [logger] [level] ` prefix; the parsers search
for the message body anywhere in the line. The formatters write the bodies exactly as ASTRA-Sim's format
strings do (workload/Workload.cc: report(), issue(), call()), so pipesim's own output reads the same.

    sys[3] finished, 1660451 cycles, exposed communication 160451 cycles.
    issue,sys->id=0, tick=1000000, node->id=2, node->name=send_to_1, node->type=5
    callback,sys->id=0, tick=1020031, node->id=2, node->name=send_to_1, node->type=5

1 cycle = 1 ns in the analytical backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from llm_converter.errors import PipesimError

# Exposed communication is printed as `curr_tick - tics_gpu_ops` of unsigned ticks; allow a sign anyway so a
# wrapped or negative value is read rather than silently skipped.
_FINISH_RE = re.compile(
    r"sys\[(?P<rank>\d+)\] finished, (?P<finish>-?\d+) cycles, exposed communication (?P<exposed>-?\d+) cycles\."
)
# The node name is free text (it may hold commas), so it runs up to the last `, node->type=`.
_TRACE_RE = re.compile(
    r"(?P<kind>issue|callback),sys->id=(?P<rank>\d+), tick=(?P<tick>\d+), node->id=(?P<node>\d+), "
    r"node->name=(?P<name>.*), node->type=(?P<type>\d+)\s*$"
)


@dataclass(frozen=True, slots=True)
class FinishLine:
    """One `sys[R] finished, T cycles, exposed communication C cycles.` line."""

    rank: int
    finish_ns: int
    exposed_comm_ns: int


class TraceEvent(NamedTuple):
    """One trace-enabled line: a node issued (`issue`) or completed (`callback`) at `tick` on `rank`."""

    kind: str  # "issue" | "callback"
    rank: int
    tick: int
    node_id: int
    name: str
    node_type: int


class NodeTime(NamedTuple):
    """When one node of one rank ran: issue and end tick in ns (the engine's node_times tuples have this shape)."""

    node_id: int
    name: str
    type: int
    issue_ns: int
    end_ns: int


def format_finish_line(rank: int, finish_ns: int, exposed_comm_ns: int) -> str:
    """Exactly ASTRA-Sim's message body for a rank that finished."""
    return f"sys[{rank}] finished, {finish_ns} cycles, exposed communication {exposed_comm_ns} cycles."


def format_trace_line(event: TraceEvent) -> str:
    """Exactly ASTRA-Sim's trace-enabled message body for one node event."""
    return (
        f"{event.kind},sys->id={event.rank}, tick={event.tick}, node->id={event.node_id}, "
        f"node->name={event.name}, node->type={event.node_type}"
    )


def parse_finish_line(line: str) -> FinishLine | None:
    """The finish record of a line, or None when the line is something else."""
    match = _FINISH_RE.search(line)
    if match is None:
        return None
    return FinishLine(int(match["rank"]), int(match["finish"]), int(match["exposed"]))


def parse_finish_lines(lines: Iterable[str]) -> dict[int, FinishLine]:
    """rank -> its finish record, for every rank that printed one (a stalled rank is simply absent)."""
    finished: dict[int, FinishLine] = {}
    for line in lines:
        # Every record of the line: output captured from several writers can run two messages together.
        for match in _FINISH_RE.finditer(line):
            rank = int(match["rank"])
            finished[rank] = FinishLine(rank, int(match["finish"]), int(match["exposed"]))
    return finished


def parse_trace_line(line: str) -> TraceEvent | None:
    """The node event of a trace line, or None when the line is something else."""
    match = _TRACE_RE.search(line)
    if match is None:
        return None
    return TraceEvent(
        match["kind"], int(match["rank"]), int(match["tick"]), int(match["node"]), match["name"], int(match["type"])
    )


def node_times_from_trace(lines: Iterable[str], npus: int, source: Path | str = "log.log") -> list[list[NodeTime]]:
    """Pair every node's issue and callback lines into per-rank NodeTime lists, ordered by node id.

    A callback without an issue line is a node ASTRA-Sim skipped (an invalid node: it logs only the callback);
    it ran in zero time at that tick. An issue without a callback means the log is cut short or the run stalled.
    """
    issued: dict[tuple[int, int], TraceEvent] = {}
    done: list[dict[int, NodeTime]] = [{} for _ in range(npus)]
    for line in lines:
        event = parse_trace_line(line)
        if event is None:
            continue
        if not 0 <= event.rank < npus:
            raise PipesimError(
                f"{source}: trace line names sys->id={event.rank} but the network has {npus} NPUs "
                "(the log belongs to another run; clear the logging folder)"
            )
        key = (event.rank, event.node_id)
        if event.kind == "issue":
            issued[key] = event
            continue
        start = issued.pop(key, None)
        issue_ns = start.tick if start is not None else event.tick
        done[event.rank][event.node_id] = NodeTime(event.node_id, event.name, event.node_type, issue_ns, event.tick)
    if issued:
        rank, node_id = min(issued)
        raise PipesimError(
            f"{source}: node {node_id} of rank {rank} was issued but never completed ({len(issued)} such nodes); "
            "the log is truncated or the run stalled"
        )
    return [[times[node_id] for node_id in sorted(times)] for times in done]


def _open_log(path: Path):
    try:
        # Undecodable bytes are replaced: a binary's log may hold anything.
        return open(path, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file (the simulator wrote no log there)") from None
    except OSError as exc:
        raise PipesimError(f"{path}: cannot read the log ({exc.strerror})") from None


def read_lines(path: Path) -> list[str]:
    """A log file's lines, without line ends."""
    with _open_log(path) as handle:
        return handle.read().splitlines()


def iter_lines(path: Path) -> Iterator[str]:
    """A log file's lines, streamed (a trace-enabled log.log of a large run can be gigabytes)."""
    with _open_log(path) as handle:
        for line in handle:
            yield line.rstrip("\r\n")
