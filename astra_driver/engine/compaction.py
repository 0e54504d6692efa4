"""Keeping a long simulation flat in memory: dropping the finished graphs at the front of a rank's lists.

A rank's per-node state lives in flat lists indexed by position (core.py). Once the graphs at the front have all
finished, `drop_front` deletes their entries and shifts every index that refers to the rest: children lists,
ready heaps, pending events, recv queues (the rank's own and the messages it sent that wait elsewhere),
collective state. It runs between events only (Engine.run_until), never inside the event loop.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from astra_driver.engine.core import Engine, _Rank

E_DONE = 0  # core.E_DONE (not imported: core imports this module)


def drop_front(engine: Engine, state: _Rank, shift: int) -> None:
    """Remove the first `shift` nodes of a rank (all finished) and renumber every reference to the rest."""
    rank = state.rank
    for values in (
        state.ids,
        state.names,
        state.types,
        state.kinds,
        state.slots,
        state.durations,
        state.pending,
        state.children,
        state.graph_of,
    ):
        del values[:shift]
    children = state.children
    for position, kids in enumerate(children):
        if kids is not None:
            children[position] = [kid - shift for kid in kids]
    state.ready = [[index - shift for index in heap] for heap in state.ready]  # order is kept: still heaps
    state.instant = [index - shift for index in state.instant]
    for handle in state.handles:
        handle.first -= shift
    state.waiting_recvs = {key: deque(index - shift for index in queue) for key, queue in state.waiting_recvs.items()}
    state.colls_left = {index - shift: left for index, left in state.colls_left.items()}
    state.missing = {index - shift: parents for index, parents in state.missing.items()}
    for other in engine.ranks:
        for key, queue in other.arrived.items():
            if any(sender == rank for _, sender, _ in queue):
                other.arrived[key] = deque(
                    (arrival, sender, index - shift if sender == rank else index) for arrival, sender, index in queue
                )
    for queue in state.queues:
        for stream in queue:
            stream.node -= shift
    for instance in engine._instances.values():
        issued = instance.issued.get(rank)
        if issued is not None and issued[0] >= shift:
            instance.issued[rank] = (issued[0] - shift, issued[1])
    events = engine._events
    for position, event in enumerate(events):
        if event[2] == E_DONE and event[3] == rank:
            events[position] = (event[0], event[1], E_DONE, rank, event[4] - shift)
