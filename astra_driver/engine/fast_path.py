"""A whole workload timed at once when nothing else can touch it (a TP serving iteration on its own engine).

When `add_workload` finds the engine quiescent (no event pending, no node live, no collective in flight) and
every graph of the workload is a chain (node i depends on node i - 1 only) of GPU compute nodes replayed from
their duration and collectives that run in one phase (a communicator group's ring, or one involved dimension)
among members that all belong to the workload, then the general path's ticks follow arithmetically:
- one node runs at a time per rank, so each node issues the tick its parent completes (slots are always free);
- a compute node completes `duration` (>= 1) ns after its issue;
- a collective with no phase completes at its issue; a one-phase collective's per-member finishes are the pure
  function `_single_phase_finishes` of its members' issue ticks, which the general path itself calls once the
  line's last member issues.
So the engine walks the chains here, without events, and pushes one E_FAST event per graph at its finish tick.
Equal-tick graph completions keep the general path's callback order: each completion carries the key of the event
whose processing pushed it (events at one tick run in push order), and the E_FAST events are pushed in key order.

Anything added while such a workload is in flight (between run_until calls or from one of its callbacks) first
`materialize`s it: the graphs are loaded through the general path at the tick they were added and the general
event loop replays them, callbacks suppressed, to exactly where the fast run stood, so from then on the
simulation is the general one. tests/test_engine_fast_path.py checks both paths tick for tick.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_converter.comm_groups import group_key
from llm_converter.errors import PipesimError
from llm_converter.graph import SIMULATED_COLLECTIVES, Graph, NodeType

if TYPE_CHECKING:
    from astra_driver.engine.core import Engine, GraphHandle, WorkloadHandle

_COMP = int(NodeType.COMP_NODE)
_COLL = int(NodeType.COMM_COLL_NODE)
_SIMULATED = frozenset(int(kind) for kind in SIMULATED_COLLECTIVES)
E_DONE, E_ACTIVATE, E_PHASE, E_FAST = 0, 1, 2, 4  # core's event codes
NOT_CHAIN = ()  # _walk_lockstep: the graphs are no chain (no fast path), unlike None (the general walk may try)


@dataclass(slots=True, eq=False)
class FastRun:
    """A workload timed by the fast path, in flight until its last graph's E_FAST event."""

    workload: WorkloadHandle
    graphs: list[Graph]
    ranks: list[int]
    added_at: int  # engine.now when it was added
    at: int
    finish: list[int]  # per graph: its finish tick
    compute: list[int]  # per graph: compute replayed
    saved: dict[int, tuple[dict[str, int], int, int]]  # rank -> (coll_seq, priority, finish) before the run
    left: int
    done: set[int] = field(default_factory=set)  # id() of handles whose E_FAST has been processed
    current: GraphHandle | None = None  # the handle whose E_FAST is being processed (its callbacks run)
    positions: dict[int, int] = field(default_factory=dict)  # id() of a handle -> its place in the workload


def try_run(engine: Engine, graphs: list[Graph], ranks: list[int], at: int, workload: WorkloadHandle) -> bool:
    """Time `graphs` (graph i on ranks[i]) arithmetically and schedule their completions; False (nothing
    changed) when the workload or the engine's state is outside what the fast path is proven equal for."""
    if not graphs or engine._events or engine._instances or len(set(ranks)) != len(ranks):
        return False
    for state in engine.ranks:
        if state.remaining:
            return False
    for rank in ranks:
        if not 0 <= rank < engine.npus:
            return False
    first = graphs[0].nodes
    lockstep = all(graph.nodes is first or _same_nodes(graph.nodes, first) for graph in graphs[1:])
    if lockstep:
        timed = _walk_lockstep(engine, first, ranks, at)
        if timed is NOT_CHAIN:
            return False
        if timed is None and not _is_chain(graphs[0]):
            return False
    else:
        for graph in graphs:
            if not _is_chain(graph):
                return False
        timed = None
    if timed is None:
        timed = _walk(engine, graphs, ranks, at)
    if timed is None:
        return False
    finish, compute, seqs, priorities, order = timed
    saved = {}
    for rank in ranks:
        state = engine.ranks[rank]
        saved[rank] = (state.coll_seq, state.priority, state.finish)
        state.coll_seq = seqs[rank]
        state.priority += priorities[rank]
    run = FastRun(workload, list(graphs), list(ranks), engine.now, at, finish, compute, saved, len(graphs))
    handles = []
    for rank, graph in zip(ranks, graphs, strict=True):
        count = len(graph.nodes)
        handle = _graph_handle(engine, rank, count, at, workload)
        handles.append(handle)
    workload.graphs.extend(handles)
    run.positions = {id(handle): place for place, handle in enumerate(handles)}
    for position in order:
        engine._push(finish[position], E_FAST, ranks[position], handles[position])
    engine._fast = run
    return True


def _graph_handle(engine: Engine, rank: int, count: int, at: int, workload: WorkloadHandle) -> GraphHandle:
    from astra_driver.engine.core import GraphHandle

    handle = GraphHandle(rank, engine.graphs_added, 0, count, at, count, None, 0, None, None)
    handle.workload = workload
    engine.graphs_added += 1
    return handle


def _is_chain(graph: Graph) -> bool:
    nodes = graph.nodes
    if not nodes:
        return False
    for position, node in enumerate(nodes):
        if node.id != position or node.ctrl_deps or node.is_cpu_op:
            return False
        deps = node.data_deps
        if position == 0:
            if deps:
                return False
        elif len(deps) != 1 or deps[0] != position - 1:
            return False
        node_type = int(node.type)
        if node_type == _COMP:
            continue
        if node_type != _COLL or node.comm_type not in _SIMULATED or not node.comm_size or node.comm_size <= 0:
            return False
    return True


def _same_nodes(nodes: list, first: list) -> bool:
    return len(nodes) == len(first) and all(map(operator.is_, nodes, first))


def _walk_lockstep(engine: Engine, nodes: list, ranks: list[int], at: int):
    """_walk for graphs that share their nodes (a TP stage's ranks: the converter builds the chain once) and whose
    collectives all run in one group made of exactly these ranks: every rank issues each collective at the same
    tick, so one walk times them all, as long as each collective's members all finish at one tick (else None:
    the general walk takes over). The completion order is kept as a permutation of the graphs: a compute or a
    phase-less collective keeps it; a one-phase collective reorders by line (lines in the order their last
    trigger ran), then by place in the line (see _walk's keys)."""
    count = len(ranks)
    graph_of_rank = {rank: g for g, rank in enumerate(ranks)}
    rank_set = frozenset(ranks)
    t = at
    compute = 0
    collectives = 0
    order = list(range(count))
    plans: dict[tuple, tuple] = {}  # (pg_name, type, size, involved) -> (group, phases, chunks, lines, orders)
    seqs: dict[str, int] = {}
    first_rank = ranks[0]
    states = engine.ranks
    if not nodes or nodes[0].data_deps:
        return NOT_CHAIN
    previous = -1
    for node in nodes:
        # The chain checks of _is_chain, in the same pass.
        node_id = node.id
        if node_id != previous + 1 or node.ctrl_deps or node.is_cpu_op:
            return NOT_CHAIN
        if previous >= 0:
            deps = node.data_deps
            if len(deps) != 1 or deps[0] != previous:
                return NOT_CHAIN
        previous = node_id
        if node.type == _COMP:
            duration = node.duration_micros * 1000 or 1
            compute += duration
            t += duration
            continue
        if node.type != _COLL:
            return NOT_CHAIN
        comm_type = node.comm_type
        size = node.comm_size
        involved = node.involved_dim
        plan_key = (node.pg_name, comm_type, size, None if involved is None else tuple(involved))
        planned = plans.get(plan_key)
        if planned is None:
            if comm_type not in _SIMULATED or not size or size <= 0:
                return NOT_CHAIN
            resolved = _group(engine, node.pg_name)
            if resolved is None or resolved[2] != rank_set:
                return None
            group, members = resolved[0], resolved[1]
            if group not in seqs:
                start = states[first_rank].coll_seq.get(group, 0)
                if any(states[rank].coll_seq.get(group, 0) != start for rank in ranks):
                    return None
                seqs[group] = start
            try:
                key = (group, seqs[group])
                instance = engine._new_instance(key, int(comm_type), int(size), members, node, first_rank)
            except PipesimError:
                return None
            phases = instance.phases
            if len(phases) > 1:
                return None
            lines: list[tuple[int, ...]] = []
            if phases:
                plan = phases[0]
                if plan.local:
                    lines = [members]
                else:
                    for rank in ranks:
                        line = engine._line(rank, plan.dim)
                        if line not in lines:
                            lines.append(line)
            # Finishes depend on the issue ticks relative to the earliest only: one offset from the issue tick.
            offset = 0
            finishes = set()
            for line in lines:
                finishes.update(engine._single_phase_finishes(phases[0], line, [0] * len(line), instance.chunks))
            if len(finishes) > 1:
                return None
            offset = finishes.pop() if finishes else 0
            planned = (group, bool(phases), offset, [[graph_of_rank[m] for m in line] for line in lines])
            plans[plan_key] = planned
        group, phased, offset, line_orders = planned
        seqs[group] += 1
        if not phased:
            continue
        collectives += 1
        t += offset
        if len(lines) == 1:
            order = line_orders[0]
        else:
            place = {g: i for i, g in enumerate(order)}
            ranked = sorted(line_orders, key=lambda members: max(place[g] for g in members))
            order = [g for members in ranked for g in members]
    step = 1 if engine._policy == "LIFO" else -1 if engine._policy == "FIFO" else 0
    rank_seqs = {}
    for rank in ranks:
        own = dict(states[rank].coll_seq)
        own.update(seqs)
        rank_seqs[rank] = own
    return [t] * count, [compute] * count, rank_seqs, dict.fromkeys(ranks, step * collectives), order


def _walk(engine: Engine, graphs: list[Graph], ranks: list[int], at: int):
    """The general path's ticks for chain graphs on a quiescent engine, or None where it would differ (a group
    error, a multi-phase collective, a member outside the workload, a tie in completion order it cannot tell)."""
    count = len(graphs)
    position = [0] * count
    tick = [at] * count
    compute = [0] * count
    # Per graph, the order key of its last completion event: (tick, key of the event whose processing pushed
    # it, place among that processing's pushes). The general loop runs equal-tick events in push order, and
    # pushes follow the order of the events being processed, so comparing keys compares (tick, seq). Roots are
    # pushed by the add (in graph order) before any event at their tick: key (at, (), g).
    last: list[tuple] = [(at, (), g) for g in range(count)]
    seqs = {rank: dict(engine.ranks[rank].coll_seq) for rank in ranks}
    priorities = dict.fromkeys(ranks, 0)
    graph_of_rank = {rank: g for g, rank in enumerate(ranks)}
    pending: dict[tuple[str, int], tuple] = {}  # key -> (instance, {rank: issue tick})
    work = list(range(count - 1, -1, -1))
    while work:
        g = work.pop()
        rank = ranks[g]
        nodes = graphs[g].nodes
        p = position[g]
        t = tick[g]
        while p < len(nodes):
            node = nodes[p]
            if node.type == _COMP:
                duration = node.duration_micros * 1000 or 1
                compute[g] += duration
                t += duration
                last[g] = (t, last[g], 0)
                p += 1
                continue
            resolved = _group(engine, node.pg_name)
            if resolved is None or rank not in resolved[2]:
                return None
            group, members = resolved[0], resolved[1]
            seq = seqs[rank].get(group, 0)
            seqs[rank][group] = seq + 1
            key = (group, seq)
            comm_type = int(node.comm_type)
            size = int(node.comm_size)
            entry = pending.get(key)
            if entry is None:
                for member in members:
                    if member not in graph_of_rank:
                        return None
                try:
                    instance = engine._new_instance(key, comm_type, size, members, node, rank)
                except PipesimError:
                    return None
                entry = (instance, {})
                pending[key] = entry
            instance, issued = entry
            if instance.comm_type != comm_type or instance.size != size:
                return None
            issued[rank] = t
            if not instance.phases:
                last[g] = (t, last[g], 0)
                p += 1
                continue
            if len(instance.phases) != 1:
                return None
            priorities[rank] += 1 if engine._policy == "LIFO" else -1 if engine._policy == "FIFO" else 0
            plan = instance.phases[0]
            line = instance.members if plan.local else engine._line(rank, plan.dim)
            if any(member not in issued for member in line):
                break  # blocked until the line's last member issues
            finishes = engine._single_phase_finishes(plan, line, [issued[member] for member in line], instance.chunks)
            # The members' completions are pushed together, in line order, while the event that let the line's
            # last member issue is processed: the latest of the members' triggers.
            try:
                trigger = max(last[graph_of_rank[member]] for member in line)
            except RecursionError:
                return None
            position[g] = p
            for place, member in enumerate(line):
                other = graph_of_rank[member]
                tick[other] = finishes[place]
                position[other] += 1
                last[other] = (finishes[place], trigger, place)
                if other != g:
                    work.append(other)
            p = position[g]
            t = tick[g]
        position[g] = p
        tick[g] = t
    for g in range(count):
        if position[g] != len(graphs[g].nodes):
            return None  # stuck: the general path names it
    for instance, issued in pending.values():
        if len(issued) != len(instance.members):
            return None
    try:
        order = sorted(range(count), key=last.__getitem__)  # the general path's completion order
    except RecursionError:
        return None
    return tick, compute, seqs, priorities, order


def _group(engine: Engine, pg_name):
    resolved = engine._group_cache.get(pg_name)
    if resolved is not None:
        return resolved
    group = group_key(pg_name)
    if group in ("", "0"):
        members = tuple(range(engine.npus))
        group = ""
    else:
        members = engine.groups.get(group)
        if members is None:
            return None
    resolved = (group, members, frozenset(members))
    engine._group_cache[pg_name] = resolved
    return resolved


def graph_done(engine: Engine, handle: GraphHandle, tick: int) -> None:
    """E_FAST: one graph of the fast run finished at `tick` (its callbacks may add graphs: materialize)."""
    run = engine._fast
    position = run.positions[id(handle)]
    state = engine.ranks[handle.rank]
    compute = run.compute[position]
    state.compute += compute
    handle.compute_ns = compute
    handle.remaining = 0
    if tick > state.finish:
        state.finish = tick
    run.left -= 1
    if run.left == 0:
        engine._fast = None  # nothing of it is left in flight: callbacks may add graphs freely
    run.current = handle
    engine._graph_done(handle, tick)
    run.current = None
    run.done.add(id(handle))


def materialize(engine: Engine) -> None:
    """Turn the fast run in flight into the general path's state at this point of the simulation."""
    run = engine._fast
    engine._fast = None
    events = engine._events
    events.clear()  # only the run's E_FAST events were pending (in place: a running _loop holds this list)
    current = run.current
    for position, (rank, handle) in enumerate(zip(run.ranks, run.workload.graphs, strict=True)):
        state = engine.ranks[rank]
        seq, priority, finish = run.saved[rank]
        state.coll_seq = seq
        state.priority = priority
        state.finish = finish
        if id(handle) in run.done or handle is current:
            state.compute -= run.compute[position]
        handle.finish_ns = None
        handle.compute_ns = 0
    workload = run.workload
    workload.remaining = len(run.graphs)
    now = engine.now
    engine.now = run.added_at
    engine._replay = run
    try:
        for rank, graph, handle in zip(run.ranks, run.graphs, workload.graphs, strict=True):
            engine._load(rank, graph, run.at, handle)
        _replay_until(engine, now, current)
    finally:
        engine._replay = None
    engine.now = now


def _replay_until(engine: Engine, now: int, current: GraphHandle | None) -> None:
    """The general event loop over every event up to `now`, stopping right after `current` finishes when the
    fast run was materialized from inside its callback (the caller's loop then issues its rank, as _loop does)."""
    import heapq

    events = engine._events
    ranks = engine.ranks
    run = engine._replay
    while events and events[0][0] <= now:
        tick, _, code, rank, payload = heapq.heappop(events)
        engine.now = tick
        if code == E_DONE:
            state = ranks[rank]
            engine._finish_node(state, payload, tick)
            if current is not None and run.current is None:
                return  # `current` finished: the rest of this tick is the caller's
            engine._issue(state)
        elif code == E_PHASE:
            engine._phase_done(payload, tick)
        elif code == E_ACTIVATE:
            engine._activate(ranks[rank], payload)
    if current is not None:
        raise AssertionError(f"fast path replay: graph on rank {current.rank} did not finish by tick {now}")


def replayed_done(engine: Engine, handle: GraphHandle, tick: int) -> bool:
    """During materialize: a graph whose completion the fast run already reported. Its callbacks do not run
    again; the one being reported right now leaves the workload's count to its own caller. True: handled."""
    run = engine._replay
    is_current = handle is run.current
    if not is_current and id(handle) not in run.done:
        return False
    position = run.positions[id(handle)]
    if tick != run.finish[position]:
        raise AssertionError(f"fast path replay: rank {handle.rank} finished at {tick}, not {run.finish[position]}")
    if is_current:
        run.current = None  # tells _replay_until to stop here
        return True
    run.workload.remaining -= 1
    return True
