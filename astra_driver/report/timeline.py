"""Timelines of a simulated run as Chrome trace JSON (the Trace Event Format that Perfetto and chrome://tracing open).

One process per NPU, named "NPU r" (pid r + 1: viewers treat pid 0 as the kernel's idle task), and in it one
track (thread) per slot of ASTRA-Sim's analytical backend as the engine schedules them
(../shared/astra-sim/README.md): compute, communication (sends, collectives, memory nodes) and recv (receives
take no slot, so any number may be posted at once). Every node is one complete event (`ph: "X"`) named after
the node, with its type, id, exact issue/end ticks and, when the workload is known, its bytes and peer in
`args`. Events that overlap on one track would not nest, which the viewers cannot draw: they go to extra lanes
of that slot ("recv #2", ...).

Other parts of a run add their own tracks (`Track`): a serving run its iterations per instance and request
spans, a training run its F/B/W actions. A track whose process is named "NPU r" sits with that NPU's slots.

    timeline = build_timeline(result.node_times, facts=node_facts(workload), tracks=[...])
    write_timeline(Path("run.json"), timeline)

Large runs stay usable: `window` keeps only what overlaps a time window, `npus` a subset of ranks, and
`max_events` the earliest events up to a limit (the file says how many there were and how many it kept).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Node, NodeType, Workload
from llm_converter.io import write_atomic

# Slots of one NPU, in the order their tracks are shown.
COMPUTE = "compute"
COMMUNICATION = "communication"
RECV = "recv"
OTHER = "other"  # INVALID / METADATA nodes: no slot in ASTRA-Sim, shown apart
SLOTS = (COMPUTE, COMMUNICATION, RECV, OTHER)
_SLOT_OF_TYPE = {
    NodeType.COMP_NODE: COMPUTE,
    NodeType.COMM_SEND_NODE: COMMUNICATION,
    NodeType.COMM_COLL_NODE: COMMUNICATION,
    NodeType.MEM_LOAD_NODE: COMMUNICATION,
    NodeType.MEM_STORE_NODE: COMMUNICATION,
    NodeType.COMM_RECV_NODE: RECV,
}
# A track id is slot * stride + lane, so lanes of one slot sort together.
_LANE_STRIDE = 1000
# Extra processes (serving instances, requests, ...) get pids after every NPU's.
_EXTRA_PID_BASE = 1 << 20

DEFAULT_MAX_EVENTS = 2_000_000


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the workload says about one node, beyond the engine's times."""

    bytes: int | None = None  # comm_size (send, recv, collective), tensor_size (memory, compute)
    peer: int | None = None  # the other rank of a send (comm_dst) or recv (comm_src)
    collective: str | None = None  # ALL_REDUCE, ...
    group: str | None = None  # pg_name of a collective
    tag: int | None = None  # comm_tag of a send/recv


@dataclass(frozen=True, slots=True)
class Span:
    """One interval of an extra track: an iteration, a request, a pipeline action."""

    name: str
    start_ns: int
    end_ns: int
    args: Mapping[str, Any] = field(default_factory=dict)
    category: str = ""


@dataclass(frozen=True, slots=True)
class Instant:
    """One moment of an extra track: a request's arrival, its first token."""

    name: str
    at_ns: int
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Track:
    """An extra track: shown in process `process` ("NPU r" joins that NPU's slots) under the name `name`.
    Overlapping spans are spread over lanes, "name", "name #2", ..."""

    process: str
    name: str
    spans: Sequence[Span] = ()
    instants: Sequence[Instant] = ()


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """[start_ns, end_ns]; None is open. An event is kept when it overlaps the window (it is not cut)."""

    start_ns: int | None = None
    end_ns: int | None = None

    def overlaps(self, start_ns: int, end_ns: int) -> bool:
        if self.start_ns is not None and end_ns < self.start_ns:
            return False
        return self.end_ns is None or start_ns <= self.end_ns


def parse_window(text: str, flag: str = "--timeline-window") -> TimeWindow:
    """`START_US:END_US` in microseconds, either side may be empty: `100:250.5`, `1000:`, `:500`."""
    parts = text.split(":")
    if len(parts) != 2:
        raise PipesimError(f"{flag} {text!r}: expected START_US:END_US (microseconds; either may be empty)")
    bounds: list[int | None] = []
    for part in parts:
        if not part.strip():
            bounds.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise PipesimError(f"{flag} {text!r}: {part!r} is not a number of microseconds") from None
        if not math.isfinite(value) or value < 0:
            raise PipesimError(f"{flag} {text!r}: {part!r} must be a finite number >= 0")
        bounds.append(round(value * 1000))
    start, end = bounds
    if start is not None and end is not None and end < start:
        raise PipesimError(f"{flag} {text!r}: the end is before the start")
    return TimeWindow(start, end)


def parse_npus(text: str, flag: str = "--timeline-npus") -> frozenset[int]:
    """`0-7,64,120-127`: the ranks to keep."""
    ranks: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise PipesimError(f"{flag} {text!r}: expected ranks and ranges like 0-7,64")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise PipesimError(f"{flag} {text!r}: range {part.strip()!r} runs backwards")
        ranks.update(range(first, last + 1))
    return frozenset(ranks)


def node_facts(workload: Workload) -> list[dict[int, NodeFacts]]:
    """Per rank, node id -> its bytes, peer, collective and group, read from the graphs."""
    table: list[dict[int, NodeFacts]] = []
    for graph in workload.graphs:
        facts: dict[int, NodeFacts] = {}
        for node in graph.nodes:
            fact = facts_of(node)
            if fact is not None:
                facts[node.id] = fact
        table.append(facts)
    return table


def facts_of(node: Node, peer: Callable[[int | None], int | None] = lambda rank: rank) -> NodeFacts | None:
    """One node's bytes, peer (mapped through `peer`, e.g. to cluster NPU ids), collective and group."""
    kind = node.type
    if kind == NodeType.COMM_SEND_NODE:
        return NodeFacts(node.comm_size, peer(node.comm_dst), tag=node.comm_tag)
    if kind == NodeType.COMM_RECV_NODE:
        return NodeFacts(node.comm_size, peer(node.comm_src), tag=node.comm_tag)
    if kind == NodeType.COMM_COLL_NODE:
        return NodeFacts(node.comm_size, None, _collective_name(node.comm_type), node.pg_name or None)
    if node.tensor_size is not None:
        return NodeFacts(node.tensor_size)
    return None


def _collective_name(comm_type: int | None) -> str | None:
    if comm_type is None:
        return None
    try:
        return CollectiveType(comm_type).name
    except ValueError:
        return str(comm_type)


# A per-rank table (node id -> facts) or a function of (rank, node id).
FactsSource = Sequence[Mapping[int, NodeFacts]] | Callable[[int, int], NodeFacts | None]


def _facts_lookup(facts: FactsSource | None) -> Callable[[int, int], NodeFacts | None]:
    if facts is None:
        return lambda rank, node_id: None
    if callable(facts):
        return facts
    table = facts

    def lookup(rank: int, node_id: int) -> NodeFacts | None:
        return table[rank].get(node_id) if rank < len(table) else None

    return lookup


def slot_of(node_type: int) -> str:
    try:
        return _SLOT_OF_TYPE.get(NodeType(node_type), OTHER)
    except ValueError:
        return OTHER


def _us(ns: int) -> float | int:
    # Microseconds, the format's unit; integral values stay ints so the JSON reads cleanly.
    return ns // 1000 if ns % 1000 == 0 else ns / 1000


class _Lanes:
    """Greedy interval partitioning: an interval goes to the first lane free at its start (ends are exclusive,
    so back-to-back events share a lane). Intervals must arrive sorted by start."""

    def __init__(self) -> None:
        self.ends: list[int] = []

    def place(self, start: int, end: int) -> int:
        for lane, lane_end in enumerate(self.ends):
            if lane_end <= start:
                self.ends[lane] = max(end, start)
                return lane
        self.ends.append(max(end, start))
        return len(self.ends) - 1


def _lane_name(base: str, lane: int) -> str:
    return base if lane == 0 else f"{base} #{lane + 1}"


@dataclass
class Timeline:
    """A Chrome trace: `trace_events` plus what was left out. `to_json()` gives the file's object."""

    trace_events: list[dict[str, Any]]
    npus: int
    events_total: int
    events_kept: int
    window: TimeWindow | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        other: dict[str, Any] = {
            "generator": "pipesim",
            "npus": self.npus,
            "events_total": self.events_total,
            "events_kept": self.events_kept,
            **self.metadata,
        }
        if self.window is not None:
            other["window_ns"] = [self.window.start_ns, self.window.end_ns]
        return {"traceEvents": self.trace_events, "displayTimeUnit": "ns", "otherData": other}

    def events_of_npu(self, rank: int) -> list[dict[str, Any]]:
        """The complete events of NPU `rank`'s process."""
        pid = npu_pid(rank)
        return [event for event in self.trace_events if event.get("ph") == "X" and event["pid"] == pid]


def build_timeline(
    node_times: Sequence[Sequence[Sequence[Any]]],
    facts: FactsSource | None = None,
    tracks: Sequence[Track] = (),
    window: TimeWindow | None = None,
    npus: Iterable[int] | None = None,
    max_events: int | None = DEFAULT_MAX_EVENTS,
    metadata: Mapping[str, Any] | None = None,
    messages: bool = True,
) -> Timeline:
    """The Chrome trace of a run.

    node_times: per rank, (node_id, name, type, issue_ns, end_ns) for each node: the engine's
    SimResult.node_times or a BackendResult's NodeTime lists. facts: bytes/peer per node (node_facts()).
    tracks: extra tracks. window / npus / max_events: what to keep (max_events keeps the earliest by start).
    messages: draw an arrow (a flow event pair) from each send to the recv it matched, when facts are known.
    """
    if max_events is not None and max_events < 1:
        raise PipesimError(f"--timeline-max-events {max_events}: must be >= 1")
    lookup = _facts_lookup(facts)
    keep_ranks = None if npus is None else frozenset(npus)
    # (start, end, pid, slot index, name, category, args) for every event that passes the filters.
    pending: list[tuple[int, int, int, int, str, str, dict[str, Any]]] = []
    total = 0
    used_slots: dict[int, set[int]] = {}
    kinds: dict[int, tuple[int, str]] = {}  # node type -> (slot index, type name), computed once per type
    for rank, times in enumerate(node_times):
        if keep_ranks is not None and rank not in keep_ranks:
            continue
        pid = npu_pid(rank)
        used_slots.setdefault(pid, set())
        for node_id, name, node_type, issue_ns, end_ns in times:
            total += 1
            if window is not None and not window.overlaps(issue_ns, end_ns):
                continue
            kind = kinds.get(node_type)
            if kind is None:
                kind = kinds[node_type] = (SLOTS.index(slot_of(node_type)), _type_name(node_type))
            slot, type_name = kind
            args: dict[str, Any] = {"node_id": node_id, "type": type_name}
            known = lookup(rank, node_id)
            if known is not None:
                if known.bytes is not None:
                    args["bytes"] = known.bytes
                if known.peer is not None:
                    args["peer"] = known.peer
                if known.collective is not None:
                    args["collective"] = known.collective
                if known.group is not None:
                    args["group"] = known.group
                if known.tag is not None:
                    args["tag"] = known.tag
            args["issue_ns"] = issue_ns
            args["end_ns"] = end_ns
            pending.append((issue_ns, end_ns, pid, slot, name, args["type"], args))
    extra_pids: dict[str, int] = {}
    extra_tracks: list[tuple[int, Track]] = []
    for track in tracks:
        rank = _npu_rank(track.process)
        if rank is None:
            pid = extra_pids.setdefault(track.process, _EXTRA_PID_BASE + len(extra_pids))
        elif keep_ranks is not None and rank not in keep_ranks:
            continue
        else:
            pid = npu_pid(rank)
            used_slots.setdefault(pid, set())
        extra_tracks.append((pid, track))
        total += len(track.spans) + len(track.instants)

    pending.sort(key=lambda item: (item[0], item[2], item[3], item[1]))
    if max_events is not None and len(pending) > max_events:
        pending = pending[:max_events]

    events: list[dict[str, Any]] = []
    lanes: dict[tuple[int, int], _Lanes] = {}
    thread_names: dict[tuple[int, int], str] = {}
    for start, end, pid, slot, name, category, args in pending:
        lane = lanes.setdefault((pid, slot), _Lanes()).place(start, end)
        tid = (slot + 1) * _LANE_STRIDE + lane
        thread_names[(pid, tid)] = _lane_name(SLOTS[slot], lane)
        events.append(
            {
                "name": name,
                "cat": category,
                "ph": "X",
                "ts": _us(start),
                "dur": _us(end - start),
                "pid": pid,
                "tid": tid,
                "args": args,
            }
        )
        used_slots.setdefault(pid, set()).add(slot)
    kept = len(events)
    flows = _message_flows(node_times, lookup, events) if messages and facts is not None else []
    budget = None if max_events is None else max(0, max_events - kept)
    for index, (pid, track) in enumerate(extra_tracks):
        base_tid = (len(SLOTS) + 1 + index) * _LANE_STRIDE
        track_lanes = _Lanes()
        spans = sorted(track.spans, key=lambda span: (span.start_ns, span.end_ns))
        for span in spans:
            if window is not None and not window.overlaps(span.start_ns, span.end_ns):
                continue
            if budget is not None and budget <= 0:
                break
            lane = track_lanes.place(span.start_ns, span.end_ns)
            tid = base_tid + lane
            thread_names[(pid, tid)] = _lane_name(track.name, lane)
            events.append(
                {
                    "name": span.name,
                    "cat": span.category or track.name,
                    "ph": "X",
                    "ts": _us(span.start_ns),
                    "dur": _us(span.end_ns - span.start_ns),
                    "pid": pid,
                    "tid": tid,
                    "args": {**span.args, "start_ns": span.start_ns, "end_ns": span.end_ns},
                }
            )
            if budget is not None:
                budget -= 1
        for instant in sorted(track.instants, key=lambda item: item.at_ns):
            if window is not None and not window.overlaps(instant.at_ns, instant.at_ns):
                continue
            if budget is not None and budget <= 0:
                break
            thread_names.setdefault((pid, base_tid), track.name)
            events.append(
                {
                    "name": instant.name,
                    "cat": track.name,
                    "ph": "i",
                    "s": "t",
                    "ts": _us(instant.at_ns),
                    "pid": pid,
                    "tid": base_tid,
                    "args": {**instant.args, "at_ns": instant.at_ns},
                }
            )
            if budget is not None:
                budget -= 1
        if not spans and not track.instants:
            thread_names.setdefault((pid, base_tid), track.name)

    meta: list[dict[str, Any]] = []
    npu_pids = sorted(pid for pid in used_slots if pid < _EXTRA_PID_BASE)
    for pid in npu_pids:
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"NPU {pid - 1}"}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for process, pid in extra_pids.items():
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": process}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
    for (pid, tid), thread in sorted(thread_names.items()):
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": thread}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid, "args": {"sort_index": tid}})
    return Timeline(
        trace_events=meta + events + flows,
        npus=len(node_times),
        events_total=total,
        events_kept=len(events),
        window=window,
        metadata={**(metadata or {}), "messages": len(flows) // 2},
    )


def _message_flows(
    node_times: Sequence[Sequence[Sequence[Any]]],
    lookup: Callable[[int, int], NodeFacts | None],
    kept: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Flow events ("s" at the send, "f" at the recv) pairing each send with the recv that received it, as
    ASTRA-Sim matches them: on (src, dst, tag, size), first issued with first issued among equal keys. Matched
    over the whole run (a window or rank filter must not shift the pairs), drawn where both ends were kept."""
    sends: dict[tuple[int, int, int, int], list[tuple[int, int, int]]] = {}
    recvs: dict[tuple[int, int, int, int], list[tuple[int, int, int]]] = {}
    for rank, times in enumerate(node_times):
        for node_id, _name, node_type, issue_ns, _end_ns in times:
            if node_type not in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
                continue
            known = lookup(rank, node_id)
            if known is None or known.peer is None or known.tag is None:
                continue
            size = known.bytes or 0
            if node_type == NodeType.COMM_SEND_NODE:
                sends.setdefault((rank, known.peer, known.tag, size), []).append((issue_ns, node_id, rank))
            else:
                recvs.setdefault((known.peer, rank, known.tag, size), []).append((issue_ns, node_id, rank))
    by_node = {
        (event["pid"] - 1, event["args"]["node_id"]): event
        for event in kept
        if event["args"]["type"] in ("COMM_SEND_NODE", "COMM_RECV_NODE")
    }
    flows: list[dict[str, Any]] = []
    for key, sent in sends.items():
        for (_, send_id, src), (_, recv_id, dst) in zip(sorted(sent), sorted(recvs.get(key, ())), strict=False):
            send, recv = by_node.get((src, send_id)), by_node.get((dst, recv_id))
            if send is None or recv is None:
                continue
            flow_id = len(flows) // 2 + 1
            # The arrow ends where the data arrived: 1 ns before the recv's end, so it binds inside the slice.
            end_ns = recv["args"]["end_ns"]
            at_ns = end_ns - 1 if end_ns > recv["args"]["issue_ns"] else end_ns
            common = {"name": "message", "cat": "message", "id": flow_id}
            flows.append({**common, "ph": "s", "pid": send["pid"], "tid": send["tid"], "ts": send["ts"]})
            flows.append({**common, "ph": "f", "bp": "e", "pid": recv["pid"], "tid": recv["tid"], "ts": _us(at_ns)})
    return flows


def npu_pid(rank: int) -> int:
    """The pid of NPU `rank`'s process."""
    return rank + 1


def _npu_rank(process: str) -> int | None:
    match = re.fullmatch(r"NPU (\d+)", process)
    return int(match.group(1)) if match else None


def _type_name(node_type: int) -> str:
    try:
        return NodeType(node_type).name
    except ValueError:
        return str(node_type)


def write_timeline(path: Path, timeline: Timeline) -> None:
    """The trace as JSON, written atomically (a viewer never opens half a file)."""
    data = json.dumps(timeline.to_json(), separators=(",", ":"))
    write_atomic(path, data.encode())


def read_timeline(path: Path) -> dict[str, Any]:
    """A trace file back as its object (tests, tools)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PipesimError(f"{path}: not a readable Chrome trace ({exc})") from None
