"""Why a simulation cannot finish: the stuck nodes of each rank, root causes first, as one DeadlockError.

ASTRA-Sim exits 0 with some ranks silent when a trace is broken; the engine names what is wrong instead: a recv
whose send never comes (or comes with another size), a collective some member never issues, a missing
dependency, a dependency cycle, an INVALID/METADATA node with children, a send nobody receives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from astra_driver.engine.collectives import COLLECTIVE_NAMES
from llm_converter.errors import DeadlockError
from llm_converter.graph import NodeType

if TYPE_CHECKING:
    from astra_driver.engine.core import Engine, GraphHandle, _Rank

_TYPE_NAMES = {int(t): t.name for t in NodeType}
K_STALL = 4  # core.K_STALL (not imported: core imports this module)


def unreceived_sends(engine: Engine, only: set[int] | None = None) -> dict[int, list[tuple[int, str]]]:
    """sender rank -> [(node id, why)] of every delivered message no recv took; `only`: ids of sender handles."""
    unmatched: dict[int, list[tuple[int, str]]] = {}
    for state in engine.ranks:
        for (src, tag, size), queue in state.arrived.items():
            for _, sender, index in queue:
                sender_state = engine.ranks[sender]
                if only is not None and id(sender_state.graph_of[index]) not in only:
                    continue
                why = f"sends {src}->{state.rank} tag {tag} size {size} but rank {state.rank} never receives it"
                unmatched.setdefault(sender, []).append((sender_state.ids[index], f"{sender_state.names[index]} {why}"))
    return unmatched


def _raise_unreceived(unmatched: dict[int, list[tuple[int, str]]], what: str) -> None:
    reasons = [f"rank {rank} node {node_id} {why}" for rank, sent in unmatched.items() for node_id, why in sent]
    tail = f" (and {len(reasons) - 3} more unreceived sends)" if len(reasons) > 3 else ""
    raise DeadlockError(
        "{}: {}{}".format(what, "; ".join(reasons[:3]), tail),
        stuck={rank: sorted(node_id for node_id, _ in entries) for rank, entries in unmatched.items()},
    )


def check_sends_received(engine: Engine) -> None:
    """Every delivered message was received (ASTRA-Sim completes sends eagerly; an unreceived one is a bug)."""
    unmatched = unreceived_sends(engine)
    if unmatched:
        _raise_unreceived(unmatched, "unreceived send(s)")


def check_workload_sends(engine: Engine, graphs: list[GraphHandle], label: object) -> None:
    """When a workload finished, none of its sends may still wait for a recv: its recvs were all in it."""
    if not any(handle.unreceived for handle in graphs):
        return
    unmatched = unreceived_sends(engine, {id(handle) for handle in graphs})
    _raise_unreceived(unmatched, f"workload {label} finished with unreceived send(s)")


def check_complete(engine: Engine) -> None:
    stuck = {state.rank: _stuck_nodes(engine, state) for state in engine.ranks if state.remaining}
    if not stuck:
        return
    reasons = []
    for rank, entries in stuck.items():
        state = engine.ranks[rank]
        for index, why in entries[:3]:
            reasons.append(f"rank {rank} node {state.ids[index]} {state.names[index]} {why}")
    more = sum(len(v) for v in stuck.values()) - len(reasons)
    tail = f" (and {more} more stuck nodes)" if more > 0 else ""
    raise DeadlockError(
        "simulation stalled at tick {}: {}{}".format(engine.now, "; ".join(reasons), tail),
        stuck={rank: [engine.ranks[rank].ids[i] for i, _ in entries] for rank, entries in stuck.items()},
    )


def _stuck_nodes(engine: Engine, state: _Rank) -> list[tuple[int, str]]:
    """(node index, why) for a stalled rank: root causes first, then anything else left."""
    causes: list[tuple[int, str]] = []
    rank = state.rank
    for (src, tag, size), queue in state.waiting_recvs.items():
        sizes = [k[2] for k, q in state.arrived.items() if q and k[0] == src and k[1] == tag and k[2] != size]
        for index in queue:
            if sizes:
                why = f"waits for a send {src}->{rank} tag {tag} size {size}, but that send has size {sizes[0]}"
            else:
                why = f"waits for a send {src}->{rank} tag {tag} size {size} that never comes"
            causes.append((index, why))
    for index in state.colls_left:
        why = "is a collective whose other members never reach the same phase"
        for instance in engine._instances.values():
            if instance.issued.get(rank, (-1, 0))[0] == index:
                absent = [m for m in instance.members if m not in instance.issued]
                why = (
                    f"({COLLECTIVE_NAMES[instance.comm_type]} #{instance.key[1]} of group "
                    f"{instance.key[0] or 'all'}) waits for ranks {absent[:8]} that never issue it"
                )
        causes.append((index, why))
    for index, parents in state.missing.items():
        causes.append((index, f"depends on missing node id(s) {parents[:4]}"))
    for index, kids in enumerate(state.children):
        if kids and state.kinds[index] == K_STALL and any(state.pending[k] > 0 for k in kids):
            kind = _TYPE_NAMES[state.types[index]]
            causes.append((index, f"is a {kind}: ASTRA-Sim never releases its children (give it none)"))
    cycle = _cycle_nodes(state)
    if cycle:
        causes.append((cycle[0], f"is in a dependency cycle ({len(cycle)} nodes on or after it)"))
    if not causes:
        causes = [(i, "never becomes ready") for i in range(len(state.ids)) if state.pending[i] > 0][:1]
    unique: dict[int, str] = {}
    for index, why in causes:
        unique.setdefault(index, why)
    return list(unique.items())


def _cycle_nodes(state: _Rank) -> list[int]:
    """Nodes on a dependency cycle (Kahn's algorithm leftovers that are not downstream of missing deps)."""
    count = len(state.ids)
    indegree = [0] * count
    for index in range(count):
        for child in state.children[index] or ():
            indegree[child] += 1
    queue = [i for i in range(count) if indegree[i] == 0]
    seen = 0
    while queue:
        index = queue.pop()
        seen += 1
        for child in state.children[index] or ():
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if seen == count:
        return []
    return [i for i in range(count) if indegree[i] > 0]
