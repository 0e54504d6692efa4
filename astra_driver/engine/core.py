"""The discrete-event engine: per-NPU issue slots, p2p matching, collectives through per-dimension queues.

State per rank is a set of flat lists indexed by node position (nodes of each added graph sorted by id, graphs
appended in the order they were added), so the hot loop touches ints and lists only:
    kind, slot, duration (ns), pending parent count, children, issue/end ticks.
Events live in one heap of (tick, sequence, code, rank, payload); equal ticks run in the order they were
scheduled, the way ASTRA-Sim's event queue does.

A long-running simulation (the serving loop adds graphs for hours of simulated time) stays flat in memory: a
finished graph drops its nodes at once, and `run_until` renumbers a rank's lists once the finished graphs at
their front outweigh the live ones (`_compact`), so per-rank state holds only the graphs still running.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from astra_driver.astra_config import AstraConfig
from astra_driver.engine import compaction, diagnostics, fast_path
from astra_driver.engine.coll_runtime import CollectiveRuntime, _Instance, _Stream
from astra_driver.engine.collectives import (
    A2A,
    AG,
    AR,
    DOUBLE_BINARY_TREE,
    RS,
    PhasePlan,
)
from astra_driver.engine.network import Network
from llm_converter.errors import PipesimError
from llm_converter.graph import SIMULATED_COLLECTIVES, CollectiveType, Graph, NodeType, Workload
from llm_converter.graphs.tags import TAG_MODULUS

# What a node does when issued.
K_TIMED = 0  # completes after `duration` ns (compute, BROADCAST, replay-only, memory)
K_SEND = 1
K_RECV = 2
K_COLL = 3
K_STALL = 4  # INVALID/METADATA: completes at once, but ASTRA-Sim never releases its children

# Issue slots.
S_GPU, S_COMM, S_CPU, S_NONE = 0, 1, 2, 3

# Event codes.
E_DONE = 0  # node finished: (rank, node index)
E_ACTIVATE = 1  # graph added at a later tick: (rank, graph number)
E_PHASE = 2  # a collective chunk finished its current phase on a rank: (rank, stream)
E_WAKE = 3  # run_until bookkeeping: nothing to do
E_FAST = 4  # a graph of a fast-path workload finished: (rank, GraphHandle) (astra_driver/engine/fast_path.py)

_SIMULATED = frozenset(int(kind) for kind in SIMULATED_COLLECTIVES)  # ints: the hot loop compares ints
_COMP = int(NodeType.COMP_NODE)
_COLL = int(NodeType.COMM_COLL_NODE)
# Renumber a rank once this many finished nodes sit at the front of its lists (and they are at least half).
COMPACT_MIN_NODES = 4096


@dataclass(slots=True)
class SimResult:
    """Per rank: finish tick, exposed communication (finish - compute replayed), and optionally per-node ticks
    (node_id, name, type, issue_ns, end_ns) in completion order."""

    finish_ns: list[int]
    exposed_comm_ns: list[int]
    node_times: list[list[tuple[int, str, int, int, int]]] | None = None


@dataclass(slots=True, eq=False)
class GraphHandle:
    """One graph added to one rank of a running simulation.

    `finish_ns` is set when its last node completes; `compute_ns` is the compute its own nodes replayed, so
    `exposed_comm_ns` (its span from `at_ns` minus that compute) is this graph's, not the rank's whole run."""

    rank: int
    number: int
    first: int  # first node index on the rank (internal: renumbered while the graph runs, stale afterwards)
    count: int
    at_ns: int
    remaining: int
    finish_ns: int | None = None
    compute_ns: int = 0
    nodes: list | None = None  # the graph's nodes sorted by id, dropped when it finishes
    on_done: Callable[[GraphHandle, int], None] | None = None
    workload: WorkloadHandle | None = None  # the add_workload call it came in, until it finishes
    unreceived: int = 0  # its sends that arrived before any recv took them

    @property
    def exposed_comm_ns(self) -> int | None:
        """Span from at_ns to finish_ns not covered by this graph's compute (None while it runs)."""
        return None if self.finish_ns is None else self.finish_ns - self.at_ns - self.compute_ns


@dataclass(slots=True, eq=False)
class WorkloadHandle:
    """Graphs added together (one serving iteration on its NPUs): done when the last of them is."""

    label: object
    at_ns: int
    graphs: list[GraphHandle]
    remaining: int
    on_done: Callable[[WorkloadHandle, int], None] | None = None
    check_sends: bool = True
    finish_ns: int | None = None

    def graph(self, rank: int) -> GraphHandle:
        for handle in self.graphs:
            if handle.rank == rank:
                return handle
        raise KeyError(rank)


class _Rank:
    __slots__ = (
        "rank",
        "ids",
        "names",
        "types",
        "kinds",
        "slots",
        "durations",
        "pending",
        "children",
        "graph_of",
        "issue",
        "end",
        "ready",
        "instant",
        "busy",
        "remaining",
        "finish",
        "compute",
        "colls_left",
        "coll_seq",
        "priority",
        "queues",
        "running",
        "waiting_recvs",
        "arrived",
        "missing",
        "order",
        "handles",
    )

    def __init__(self, rank: int, dims: int) -> None:
        self.rank = rank
        self.ids: list[int] = []
        self.names: list[str] = []
        self.types: list[int] = []
        self.kinds: list[int] = []
        self.slots: list[int] = []
        self.durations: list[int] = []
        self.pending: list[int] = []
        self.children: list[list[int] | None] = []
        self.graph_of: list[GraphHandle] = []
        self.issue: list[int] = []
        self.end: list[int] = []
        self.ready: list[list[int]] = [[], [], []]
        self.instant: list[int] = []
        self.busy = [False, False, False]
        self.remaining = 0
        self.finish = 0
        self.compute = 0
        self.colls_left: dict[int, int] = {}
        self.coll_seq: dict[str, int] = {}
        self.priority = 0
        self.queues: list[list[_Stream]] = [[] for _ in range(max(dims, 1))]
        self.running = [0] * max(dims, 1)
        self.waiting_recvs: dict[tuple[int, int, int], deque[int]] = {}
        # Messages that arrived before their recv was posted: key -> FIFO of (arrival tick, sender rank, sender
        # node index); the sender is kept so an unmatched send can be named.
        self.arrived: dict[tuple[int, int, int], deque[tuple[int, int, int]]] = {}
        self.missing: dict[int, list[int]] = {}
        self.order: list[int] = []  # completion order, for node_times
        self.handles: deque[GraphHandle] = deque()  # graphs whose nodes are still in the lists, in add order


class Engine(CollectiveRuntime):
    """An incremental simulation: add graphs (now or at a later tick), run, query when they finished.

    engine = Engine(config, npus)
    handle = engine.add_graph(rank, graph, at_ns=0)
    engine.run_until(t)   # or engine.run()
    handle.finish_ns
    """

    def __init__(
        self,
        config: AstraConfig,
        npus: int | None = None,
        comm_groups: dict[str, list[int]] | None = None,
        record_node_times: bool = False,
        on_graph_done: Callable[[GraphHandle, int], None] | None = None,
        injection_scale: float = 1.0,
    ) -> None:
        self.config = config
        self.network = Network(config.network)
        self.npus = self.network.npus if npus is None else npus
        if self.npus != self.network.npus:
            raise PipesimError(
                f"workload has {self.npus} ranks but network.yml describes {self.network.npus} NPUs "
                f"(npus_count {config.network.npus_count}); make the product of npus_count equal {self.npus}"
            )
        system = config.system
        self.groups: dict[str, tuple[int, ...]] = {}
        for name, ranks in {**config.comm_groups, **(comm_groups or {})}.items():
            for rank in ranks:
                if not 0 <= rank < self.npus:
                    raise PipesimError(f"comm group {name}: rank {rank} is outside the network's {self.npus} NPUs")
            self.groups[str(name)] = tuple(sorted(ranks))
        self.record = record_node_times
        self.on_graph_done = on_graph_done
        self.now = 0
        self._events: list[tuple[int, int, int, int, object]] = []
        self._seq = 0
        dims = self.network.dims
        self.ranks = [_Rank(rank, dims) for rank in range(self.npus)]
        self.graphs_added = 0
        self._stop = False
        self._finished_front: set[int] = set()  # ranks where a graph finished since the last compaction check
        self._instances: dict[tuple[str, int], _Instance] = {}
        self._phase_cache: dict[tuple, list[int]] = {}
        self._single_cache: dict[tuple, list[int]] = {}  # one-phase collectives: relative finishes per member
        self._plan_cache: dict[tuple, tuple[list[PhasePlan], int]] = {}  # (group, type, size, dims) -> phases
        self._group_cache: dict[str | None, tuple[str, tuple[int, ...], frozenset[int]]] = {}
        self._lines: dict[tuple[int, int], tuple[int, ...]] = {}
        # ASTRA-Sim's DoubleBinaryTreeTopology counters: one per (logical topology = collective type, dimension),
        # advanced once per chunk and doubleBinaryTree phase on that dimension, on every NPU alike.
        self._tree_calls: dict[tuple[int, int], int] = {}
        self._splits = system.preferred_dataset_splits
        self._threshold = system.active_chunks_per_dimension
        self._policy = system.scheduling_policy
        self._endpoint_delay = int(system.endpoint_delay * injection_scale)
        self._local_mem = float(system.local_mem_bw)  # bytes per ns (GB = 1e9 bytes)
        self._peak_flops = system.peak_perf * 1e12  # FLOP/s
        self._roofline = system.roofline_enabled
        self._replay_only = system.replay_only
        self._impls = {
            AR: _per_dim(system.all_reduce_implementation, dims),
            AG: _per_dim(system.all_gather_implementation, dims),
            RS: _per_dim(system.reduce_scatter_implementation, dims),
            A2A: _per_dim(system.all_to_all_implementation, dims),
        }
        # Whole-workload fast path (fast_path.py): on unless node times are recorded or a subclass times nodes.
        self.fast_path = (
            not record_node_times
            and not system.replay_only
            and not system.roofline_enabled
            and type(self)._classify is Engine._classify
            and not any(name == DOUBLE_BINARY_TREE for names in self._impls.values() for name in names)
        )
        self._fast: fast_path.FastRun | None = None  # the fast-path workload in flight
        self._replay: fast_path.FastRun | None = None  # set while materialize() replays one
        self._strides = [1] * dims
        for dim in range(1, dims):
            self._strides[dim] = self._strides[dim - 1] * self.network.counts[dim - 1]

    # ------------------------------------------------------------------------------------------------------
    # Loading graphs
    # ------------------------------------------------------------------------------------------------------
    def add_workload(
        self,
        graphs: Workload | list[Graph],
        at_ns: int | None = None,
        ranks: list[int] | None = None,
        on_done: Callable[[WorkloadHandle, int], None] | None = None,
        label: object = None,
        check_sends: bool = True,
    ) -> WorkloadHandle:
        """Add graphs together (graph i on `ranks[i]`, default its own rank): one handle, done when all are.

        With `check_sends`, a send of these graphs still unreceived when the last of them finishes is a
        DeadlockError at once (their recvs were all in these graphs), not at the end of the simulation."""
        items = graphs.graphs if isinstance(graphs, Workload) else graphs
        targets = [graph.rank for graph in items] if ranks is None else ranks
        if len(targets) != len(items):
            raise PipesimError(f"add_workload: {len(items)} graphs but {len(targets)} ranks")
        at = self.now if at_ns is None else int(at_ns)
        if self._fast is not None:
            fast_path.materialize(self)
        handle = WorkloadHandle(label, at, [], len(items), on_done, check_sends)
        if self.fast_path and at >= self.now and fast_path.try_run(self, items, targets, at, handle):
            return handle
        for rank, graph in zip(targets, items, strict=True):
            handle.graphs.append(self.add_graph(rank, graph, at, _workload=handle))
        if not items:
            handle.finish_ns = at
        return handle

    def add_graph(
        self,
        rank: int,
        graph: Graph,
        at_ns: int | None = None,
        on_done: Callable[[GraphHandle, int], None] | None = None,
        _workload: WorkloadHandle | None = None,
    ) -> GraphHandle:
        """Append `graph` to `rank`; its dependency-free nodes become issuable at `at_ns` (default: now).
        `on_done(handle, tick)` is called when its last node completes (as is the engine's on_graph_done)."""
        if not 0 <= rank < self.npus:
            raise PipesimError(f"add_graph: rank {rank} is outside the network's {self.npus} NPUs")
        at = self.now if at_ns is None else int(at_ns)
        if at < self.now:
            raise PipesimError(f"add_graph: at_ns {at} is before the simulation's current tick {self.now}")
        if self._fast is not None:
            fast_path.materialize(self)  # a whole-workload fast run is in flight: make it ordinary events first
        handle = GraphHandle(rank, self.graphs_added, 0, 0, at, 0, None, 0, None, on_done)
        handle.workload = _workload
        self.graphs_added += 1
        self._load(rank, graph, at, handle)
        return handle

    def _load(self, rank: int, graph: Graph, at: int, handle: GraphHandle) -> None:
        """Append the graph's nodes to the rank's columns under `handle`; activate it now or at `at`."""
        state = self.ranks[rank]
        nodes = graph.nodes
        first = len(state.ids)
        index_of: dict[int, int] | _Offset
        total = len(nodes)
        in_order = all(node.id == position for position, node in enumerate(nodes))
        if in_order:
            index_of = _Offset(first, total)  # ids 0..n-1 in order (what pipesim writes): no lookup table
            nodes = list(nodes)
        else:
            nodes = sorted(nodes, key=_node_id)
            index_of = {}
            for offset, node in enumerate(nodes):
                if node.id in index_of:
                    raise PipesimError(f"rank {rank}: node id {node.id} appears twice; ids must be unique per graph")
                index_of[node.id] = first + offset
        handle.first = first
        handle.count = handle.remaining = len(nodes)
        handle.nodes = nodes
        ids, names, types = state.ids, state.names, state.types
        children = state.children
        # Columns of the new nodes, built as lists and appended at once (a third of add_graph's time was appends).
        first_index = len(ids)
        node_types = [int(node.type) for node in nodes]
        children.extend([None] * len(nodes))
        new_kinds: list[int] = []
        new_slots: list[int] = []
        new_durations: list[int] = []
        new_pending: list[int] = []
        # GPU compute nodes replayed from their duration, the bulk of every graph, skip _classify.
        plain_compute = not self._roofline and not self._replay_only and type(self)._classify is Engine._classify
        # The collective shortcut below only stands for Engine's own _classify (a subclass may time them itself).
        plain_collectives = not self._replay_only and type(self)._classify is Engine._classify
        missing = state.missing
        for offset, node in enumerate(nodes):
            index = first_index + offset
            node_type = node_types[offset]
            if plain_compute and node_type == _COMP and not node.is_cpu_op:
                new_kinds.append(K_TIMED)
                new_slots.append(S_GPU)
                new_durations.append(node.duration_micros * 1000 or 1)
            elif (
                plain_collectives
                and node_type == _COLL
                and node.comm_type in _SIMULATED
                and not node.is_cpu_op
                and node.comm_size is not None
                and node.comm_size > 0
            ):
                new_kinds.append(K_COLL)  # what _classify says of a simulated collective, without its checks
                new_slots.append(S_COMM)
                new_durations.append(0)
            else:
                kind, slot, duration = self._classify(rank, node)
                new_kinds.append(kind)
                new_slots.append(slot)
                new_durations.append(duration)
            parents = node.data_deps
            if node.ctrl_deps:
                parents = list(dict.fromkeys([*parents, *node.ctrl_deps]))
            elif len(parents) > 1:
                parents = list(dict.fromkeys(parents))
            count = 0
            for parent in parents:
                if in_order:
                    parent_index = first + parent if 0 <= parent < total else None
                else:
                    parent_index = index_of.get(parent)
                if parent_index is None:
                    missing.setdefault(index, []).append(parent)
                    count += 1
                    continue
                if parent_index < index:
                    siblings = children[parent_index]
                    if siblings is None:
                        children[parent_index] = [index]
                    else:
                        siblings.append(index)
                else:
                    missing.setdefault(-index - 1, []).append(parent_index)  # fixed up below
                count += 1
            new_pending.append(count)
        ids.extend([node.id for node in nodes])
        names.extend([node.name for node in nodes])
        types.extend(node_types)
        state.kinds.extend(new_kinds)
        state.slots.extend(new_slots)
        state.durations.extend(new_durations)
        state.pending.extend(new_pending)
        # Children that appear before their parents in id order (allowed by feeder_v3).
        forward = [key for key in state.missing if key < 0]
        for key in forward:
            child = -key - 1
            for parent_index in state.missing.pop(key):
                siblings = children[parent_index]
                if siblings is None:
                    children[parent_index] = [child]
                else:
                    siblings.append(child)
        state.graph_of.extend([handle] * len(nodes))
        if self.record:
            state.issue.extend([-1] * len(nodes))
            state.end.extend([-1] * len(nodes))
        state.remaining += len(nodes)
        if not nodes:
            handle.finish_ns = at
            handle.nodes = None
            if handle.workload is not None:
                handle.workload.remaining -= 1  # add_workload finishes an all-empty workload itself
            return
        state.handles.append(handle)
        if at == self.now:
            self._activate(state, handle)
        else:
            self._push(at, E_ACTIVATE, rank, handle)

    def _classify(self, rank: int, node) -> tuple[int, int, int]:
        node_type = node.type
        cpu = bool(node.is_cpu_op)
        duration = node.duration_micros * 1000 or 1
        if node_type == NodeType.COMP_NODE:
            slot = S_CPU if cpu else S_GPU
            if self._roofline and not cpu and not self._replay_only:
                duration = self._roofline_ns(rank, node)
            return K_TIMED, slot, duration
        if self._replay_only:
            return K_TIMED, S_NONE if node_type == NodeType.COMM_RECV_NODE else S_COMM, duration
        if node_type == NodeType.COMM_COLL_NODE:
            if cpu:
                raise PipesimError(f"rank {rank} node {node.id} {node.name}: Comm node should not be on CPU")
            if node.comm_type is None:
                raise PipesimError(f"rank {rank} node {node.id} {node.name}: Attribute comm_type not found")
            comm_type = int(node.comm_type)
            if comm_type == CollectiveType.BROADCAST:
                return K_TIMED, S_COMM, duration
            if comm_type not in _SIMULATED:
                name = CollectiveType(comm_type).name if comm_type in set(CollectiveType) else str(comm_type)
                raise PipesimError(
                    f"rank {rank} node {node.id} {node.name}: Unsupported collective comm type {name} "
                    "(ASTRA-Sim simulates ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL; BROADCAST is replayed)"
                )
            if not node.comm_size or node.comm_size <= 0:
                raise PipesimError(f"rank {rank} node {node.id} {node.name}: comm_size must be > 0 bytes")
            return K_COLL, S_COMM, 0
        if node_type in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
            send = node_type == NodeType.COMM_SEND_NODE
            for attr in ("comm_tag", "comm_size") + (("comm_dst",) if send else ("comm_src",)):
                if getattr(node, attr) is None:
                    raise PipesimError(f"rank {rank} node {node.id} {node.name}: Attribute {attr} not found")
            own = node.comm_src if send else node.comm_dst
            if own is not None and own != rank:
                who = "sender" if send else "receiver"
                raise PipesimError(
                    f"rank {rank} node {node.id} {node.name}: {'Send' if send else 'Recv'} node should be issued "
                    f"by the {who} (comm_{'src' if send else 'dst'} {own} != rank {rank})"
                )
            peer = node.comm_dst if send else node.comm_src
            if not 0 <= peer < self.npus or peer == rank:
                raise PipesimError(f"rank {rank} node {node.id} {node.name}: peer rank {peer} is not another NPU")
            if node.comm_size <= 0:
                raise PipesimError(f"rank {rank} node {node.id} {node.name}: comm_size must be > 0 bytes")
            return (K_SEND, S_COMM, 0) if send else (K_RECV, S_NONE, 0)
        if node_type in (NodeType.MEM_LOAD_NODE, NodeType.MEM_STORE_NODE):
            return K_TIMED, S_COMM, self._memory_ns(rank, node)
        return K_STALL, S_COMM, 0  # INVALID_NODE, METADATA_NODE

    def _roofline_ns(self, rank: int, node) -> int:
        if node.num_ops is None or node.tensor_size is None:
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: roofline-enabled needs num_ops and tensor_size on "
                "every GPU compute node (add them, or set roofline-enabled 0)"
            )
        if node.tensor_size == 0:
            return 0  # ASTRA-Sim skips the node
        if node.num_ops <= 0:
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: num_ops {node.num_ops} in roofline mode; ASTRA-Sim "
                "divides 0 by a zero performance there (give num_ops >= 1, or set roofline-enabled 0)"
            )
        intensity = node.num_ops / node.tensor_size
        perf = min(self._peak_flops, self._local_mem * 1e9 * intensity)  # FLOP/s
        return int(node.num_ops / perf * 1e9)

    def _memory_ns(self, rank: int, node) -> int:
        memory = self.config.memory
        if memory.memory_type == "NO_MEMORY_EXPANSION":
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: Remote memory access is not supported with memory-type "
                "NO_MEMORY_EXPANSION (use PER_NODE_MEMORY_EXPANSION, PER_NPU_MEMORY_EXPANSION or MEMORY_POOL)"
            )
        if node.tensor_size is None:
            raise PipesimError(f"rank {rank} node {node.id} {node.name}: Attribute tensor_size not found")
        bytes_per_ns = memory.remote_mem_bw * (1 << 30) / 1e9
        return int(memory.remote_mem_latency + node.tensor_size / bytes_per_ns)

    def _activate(self, state: _Rank, handle: GraphHandle) -> None:
        pending = state.pending
        for index in range(handle.first, handle.first + handle.count):
            if pending[index] == 0:
                self._make_ready(state, index)
        self._issue(state)

    # ------------------------------------------------------------------------------------------------------
    # Running
    # ------------------------------------------------------------------------------------------------------
    def _push(self, tick: int, code: int, rank: int, payload: object) -> None:
        heapq.heappush(self._events, (tick, self._seq, code, rank, payload))
        self._seq += 1

    def run_until(self, tick: int | None, advance_clock: bool = True) -> bool:
        """Process every event at or before `tick`; afterwards `now` is `tick`.

        `tick` None (what next_event_ns() returns once nothing is left) runs to the end: a clean end when every
        node completed, else DeadlockError naming the stuck nodes.

        A callback may call `request_stop()`: the engine then finishes the events of the current tick and
        returns True with `now` at that tick, so a driver can react (add graphs) exactly there. With
        `advance_clock` False, `now` stays at the last event processed instead of moving on to `tick`."""
        if tick is None:
            self.run()
            return False
        self._stop = False
        self._loop(tick)
        stopped = self._stop
        self._stop = False
        if advance_clock and not stopped and tick > self.now:
            self.now = tick
        if self._finished_front:
            self._compact_finished()
        return stopped

    def request_stop(self) -> None:
        """From a callback: end the current run_until once this tick's events are done."""
        self._stop = True

    def next_event_ns(self) -> int | None:
        """Tick of the next pending event, or None when nothing is left to run.

        A driver steps with `run_until(engine.next_event_ns())` to stop exactly when a graph finishes, then adds
        the next graphs at that tick."""
        return self._events[0][0] if self._events else None

    def run(self) -> None:
        """Run until nothing is left to do; raise DeadlockError if some node can never complete."""
        self._stop = False
        self._loop(None)
        while self._stop:  # a callback asked to stop: there is no driver step here, carry on
            self._stop = False
            self._loop(None)
        if self._finished_front:
            self._compact_finished()
        self.check_complete()

    def _loop(self, limit: int | None) -> None:
        events = self._events
        ranks = self.ranks
        pop = heapq.heappop
        push = heapq.heappush
        start = self._start
        record = self.record
        if limit is None:
            limit = 1 << 63
        while events:
            head = events[0][0]
            if head > limit:
                return
            if self._stop and head > self.now:
                return
            tick, _, code, rank, index = pop(events)
            self.now = tick
            if code == E_DONE:
                # _finish_node then _issue, inlined: this is the engine's innermost loop.
                state = ranks[rank]
                slot = state.slots[index]
                busy = state.busy
                if slot != S_NONE:
                    busy[slot] = False
                if record:
                    state.end[index] = tick
                    state.order.append(index)
                state.remaining -= 1
                if tick > state.finish:
                    state.finish = tick
                kids = state.children[index]
                if kids is not None and state.kinds[index] != K_STALL:
                    pending = state.pending
                    slots = state.slots
                    for child in kids:
                        left = pending[child] - 1
                        pending[child] = left
                        if left == 0:
                            child_slot = slots[child]
                            if child_slot == S_NONE:
                                state.instant.append(child)
                            else:
                                push(state.ready[child_slot], child)
                handle = state.graph_of[index]
                handle.remaining -= 1
                if handle.remaining == 0:
                    self._graph_done(handle, tick)
                if state.instant:
                    self._issue(state)
                    continue
                ready = state.ready
                if ready[0] and not busy[0]:
                    busy[0] = True
                    start(state, pop(ready[0]), tick)
                if ready[1] and not busy[1]:
                    busy[1] = True
                    start(state, pop(ready[1]), tick)
                if ready[2] and not busy[2]:
                    busy[2] = True
                    start(state, pop(ready[2]), tick)
                continue
            payload = index
            if code == E_PHASE:
                self._phase_done(payload, tick)
            elif code == E_ACTIVATE:
                self._activate(ranks[rank], payload)
            elif code == E_FAST:
                fast_path.graph_done(self, payload, tick)
                self._issue(ranks[rank])

    def _make_ready(self, state: _Rank, index: int) -> None:
        slot = state.slots[index]
        if slot == S_NONE:
            state.instant.append(index)
        else:
            heapq.heappush(state.ready[slot], index)

    def _issue(self, state: _Rank) -> None:
        """Issue ready nodes, lowest index first per slot, while their slot is free."""
        tick = self.now
        if state.instant:
            instant = sorted(state.instant)
            state.instant.clear()
            for index in instant:
                self._start(state, index, tick)
        busy = state.busy
        for slot in (S_GPU, S_COMM, S_CPU):
            heap = state.ready[slot]
            if heap and not busy[slot]:
                index = heapq.heappop(heap)
                busy[slot] = True
                self._start(state, index, tick)

    def _start(self, state: _Rank, index: int, tick: int) -> None:
        if self.record:
            state.issue[index] = tick
        kind = state.kinds[index]
        if kind == K_TIMED:
            duration = state.durations[index]
            if state.types[index] == _COMP:
                state.compute += duration
                state.graph_of[index].compute_ns += duration
            heapq.heappush(self._events, (tick + duration, self._seq, E_DONE, state.rank, index))
            self._seq += 1
        elif kind == K_SEND:
            self._send(state, index, tick)
        elif kind == K_RECV:
            self._recv(state, index, tick)
        elif kind == K_COLL:
            self._collective(state, index, tick)
        else:
            self._push(tick, E_DONE, state.rank, index)

    def _finish_node(self, state: _Rank, index: int, tick: int) -> None:
        slot = state.slots[index]
        if slot != S_NONE:
            state.busy[slot] = False
        if self.record:
            state.end[index] = tick
            state.order.append(index)
        state.remaining -= 1
        if tick > state.finish:
            state.finish = tick
        kids = state.children[index]
        if kids is not None and state.kinds[index] != K_STALL:
            pending = state.pending
            for child in kids:
                pending[child] -= 1
                if pending[child] == 0:
                    self._make_ready(state, child)
        handle = state.graph_of[index]
        handle.remaining -= 1
        if handle.remaining == 0:
            self._graph_done(handle, tick)

    def _graph_done(self, handle: GraphHandle, tick: int) -> None:
        handle.finish_ns = tick
        handle.nodes = None  # nothing looks a finished graph's nodes up again
        self._finished_front.add(handle.rank)
        if self._replay is not None and fast_path.replayed_done(self, handle, tick):
            return  # its callbacks already ran on the fast path
        if handle.on_done is not None:
            handle.on_done(handle, tick)
        if self.on_graph_done is not None:
            self.on_graph_done(handle, tick)
        workload = handle.workload
        if workload is not None:
            handle.workload = None  # no handle <-> workload cycle left for the garbage collector
            workload.remaining -= 1
            if workload.remaining == 0:
                workload.finish_ns = tick
                if workload.check_sends:
                    diagnostics.check_workload_sends(self, workload.graphs, workload.label)
                if workload.on_done is not None:
                    workload.on_done(workload, tick)

    # ------------------------------------------------------------------------------------------------------
    # Freeing finished graphs
    # ------------------------------------------------------------------------------------------------------
    def _compact_finished(self) -> None:
        """Drop the finished graphs at the front of each rank where one finished (between events only)."""
        ranks = self._finished_front
        self._finished_front = set()
        if self.record:
            return  # node_times needs every node
        for rank in ranks:
            state = self.ranks[rank]
            handles = state.handles
            # A finished graph whose send still waits for its recv keeps its nodes: the recv names it.
            while handles and handles[0].finish_ns is not None and not handles[0].unreceived:
                handles.popleft()
            shift = handles[0].first if handles else len(state.ids)
            if shift >= COMPACT_MIN_NODES and 2 * shift >= len(state.ids):
                self._compact(state, shift)

    def _compact(self, state: _Rank, shift: int) -> None:
        compaction.drop_front(self, state, shift)

    # ------------------------------------------------------------------------------------------------------
    # Point to point
    # ------------------------------------------------------------------------------------------------------
    def _send(self, state: _Rank, index: int, tick: int) -> None:
        node = self._node(state, index)
        dst, size = node.comm_dst, node.comm_size
        arrival = tick + self.network.delay(state.rank, dst, size)
        self._push(arrival, E_DONE, state.rank, index)
        key = (state.rank, node.comm_tag % TAG_MODULUS, size)
        target = self.ranks[dst]
        waiting = target.waiting_recvs.get(key)
        if waiting:
            recv = waiting.popleft()
            if not waiting:
                del target.waiting_recvs[key]  # tags are unique per iteration: keep no empty queue per tag
            self._push(arrival, E_DONE, dst, recv)
        else:
            target.arrived.setdefault(key, deque()).append((arrival, state.rank, index))
            state.graph_of[index].unreceived += 1

    def _recv(self, state: _Rank, index: int, tick: int) -> None:
        node = self._node(state, index)
        key = (node.comm_src, node.comm_tag % TAG_MODULUS, node.comm_size)
        arrived = state.arrived.get(key)
        if arrived:
            arrival, sender, sender_index = arrived.popleft()
            if not arrived:
                del state.arrived[key]
            self.ranks[sender].graph_of[sender_index].unreceived -= 1
            self._push(max(arrival, tick), E_DONE, state.rank, index)
        else:
            state.waiting_recvs.setdefault(key, deque()).append(index)

    def _node(self, state: _Rank, index: int):
        handle = state.graph_of[index]
        return handle.nodes[index - handle.first]

    # ------------------------------------------------------------------------------------------------------
    # Results and deadlocks (astra_driver/engine/diagnostics.py says why a node is stuck)
    # ------------------------------------------------------------------------------------------------------
    def check_sends_received(self) -> None:
        """Raise DeadlockError when a send was never received. ASTRA-Sim completes sends eagerly, so every rank
        still finishes, but a message nobody receives is a broken trace (a recv missing or mismatched)."""
        diagnostics.check_sends_received(self)

    def check_complete(self) -> None:
        """Raise DeadlockError naming the stuck nodes when some rank has nodes left."""
        diagnostics.check_complete(self)

    def result(self) -> SimResult:
        finish = [state.finish for state in self.ranks]
        exposed = [state.finish - state.compute for state in self.ranks]
        node_times = None
        if self.record:
            node_times = [
                [(state.ids[i], state.names[i], state.types[i], state.issue[i], state.end[i]) for i in state.order]
                for state in self.ranks
            ]
        return SimResult(finish, exposed, node_times)


def _node_id(node) -> int:
    return node.id


class _Offset:
    """index_of for a graph whose ids are 0..count-1 in order: id -> first + id."""

    __slots__ = ("first", "count")

    def __init__(self, first: int, count: int) -> None:
        self.first = first
        self.count = count

    def get(self, node_id: int) -> int | None:
        return self.first + node_id if 0 <= node_id < self.count else None


def _per_dim(names: list[str], dims: int) -> list[str]:
    """One implementation per dimension; a shorter list repeats its last entry."""
    if not names:
        return ["ring"] * dims
    return [names[min(dim, len(names) - 1)] for dim in range(dims)]
