"""Collectives the way ASTRA-Sim's system layer runs them: chunks, phases, and per-phase algorithms.

A collective of `comm_size` bytes is cut into chunks of comm_size // preferred-dataset-splits bytes. Each chunk
runs a list of phases, one per involved network dimension (all-reduce with localBWAware: reduce-scatter on the
lower dimensions, all-reduce on the last one, all-gather back down; all-gather visits dimensions in reverse).
A communicator group that is not the whole network is one ring over its sorted members (ring algorithm only).

Each phase runs an algorithm (Ring, Direct = AllToAll class, HalvingDoubling) among the NPUs of one line of
its dimension. `PhaseAlgorithm.run` replays that algorithm's state machine packet by packet, with every
member's own start time: a "bundle" (endpoint delay, plus 3 * floor(bytes / local-mem-bw) when it reduces)
precedes each send; a receive completes at the later of the data's arrival and the recv's posting. The result
only depends on the members' start times relative to each other, so it is memoised: a replay of thousands of
identical, synchronised collectives simulates one.

doubleBinaryTree (`binary_tree_parents`, `tree_phase_finishes`) is ASTRA-Sim's DoubleBinaryTreeAllReduce: one
binary tree per chunk, alternating between the tree rooted at the line's last member and the one rooted at its
first. ASTRA-Sim builds that algorithm whatever collective named it, so a doubleBinaryTree phase of a
reduce-scatter, all-gather or all-to-all is a tree all-reduce of the phase's input that leaves the size as is.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType

AR = int(CollectiveType.ALL_REDUCE)
AG = int(CollectiveType.ALL_GATHER)
RS = int(CollectiveType.REDUCE_SCATTER)
A2A = int(CollectiveType.ALL_TO_ALL)

RING = "ring"
DIRECT = "direct"
HALVING_DOUBLING = "halvingDoubling"
DOUBLE_BINARY_TREE = "doubleBinaryTree"

# Implementation names of system.json -> the algorithm class ASTRA-Sim instantiates for them.
ALGORITHM_OF = {
    "ring": RING,
    "oneRing": RING,
    "direct": DIRECT,
    "oneDirect": DIRECT,
    "halvingDoubling": HALVING_DOUBLING,
    "oneHalvingDoubling": HALVING_DOUBLING,
    "doubleBinaryTree": DOUBLE_BINARY_TREE,
}

# Trees of ASTRA-Sim's DoubleBinaryTreeTopology: its counter picks RootMax on even calls, RootMin on odd ones.
ROOT_MAX, ROOT_MIN = 0, 1

COLLECTIVE_NAMES = {AR: "ALL_REDUCE", AG: "ALL_GATHER", RS: "REDUCE_SCATTER", A2A: "ALL_TO_ALL"}


def final_data_size(comm_type: int, n: int, data_size: int) -> int:
    """Bytes a phase leaves each member holding (the next phase's input)."""
    if comm_type == AG:
        return data_size * n
    if comm_type == RS:
        return data_size // n
    return data_size


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """One phase of every chunk: which queue (dimension), algorithm, collective, input bytes per member."""

    dim: int
    algorithm: str
    comm_type: int
    data_size: int
    local: bool  # a communicator-group ring: bundles take a fixed 10 ns ("Fast" transmission)
    # doubleBinaryTree only: chunk c runs tree (tree + c * tree_step) % 2 (ROOT_MAX / ROOT_MIN); the engine sets
    # both from its per-dimension tree counter when the collective is created.
    tree: int = ROOT_MAX
    tree_step: int = 0

    def tree_of(self, chunk: int) -> int:
        return (self.tree + chunk * self.tree_step) & 1


def _algorithm(impl: str) -> str:
    algorithm = ALGORITHM_OF.get(impl)
    if algorithm is None:
        raise PipesimError(
            f"system.json: collective implementation '{impl}' is not modelled by the builtin engine "
            f"(use one of {', '.join(ALGORITHM_OF)}, or replay with an ASTRA-Sim binary)"
        )
    return algorithm


def _phase(dim: int, n: int, impl: str, comm_type: int, data_size: int, local: bool) -> PhasePlan:
    algorithm = _algorithm(impl)
    if algorithm == DOUBLE_BINARY_TREE:
        if n & (n - 1):
            # BinaryTree only numbers 2^floor(log2 n) members; ASTRA-Sim dereferences a missing node for the rest.
            raise PipesimError(f"doubleBinaryTree needs a power-of-two number of NPUs per dimension, got {n}")
        # Sys::generate_collective_phase builds a DoubleBinaryTreeAllReduce for any collective type: its
        # final data size is its input size.
        comm_type = AR
    return PhasePlan(dim, algorithm, comm_type, data_size, local)


def plan_phases(
    comm_type: int,
    chunk_size: int,
    dims: list[tuple[int, int, str]],
    local_bw_aware: bool,
    local: bool,
) -> list[PhasePlan]:
    """Phases of one chunk. `dims` = involved (dimension, npus in it, implementation), ascending."""
    phases: list[PhasePlan] = []
    remain = chunk_size
    if comm_type != AR or not local_bw_aware:
        order = list(reversed(dims)) if comm_type == AG else dims
        for dim, n, impl in order:
            phase = _phase(dim, n, impl, comm_type, remain, local)
            phases.append(phase)
            remain = final_data_size(phase.comm_type, n, remain)
        return phases
    *lower, last = dims
    for dim, n, impl in lower:
        phase = _phase(dim, n, impl, RS, remain, local)
        phases.append(phase)
        remain = final_data_size(phase.comm_type, n, remain)
    dim, n, impl = last
    phases.append(_phase(dim, n, impl, AR, remain, local))
    for dim, n, impl in reversed(lower):
        phase = _phase(dim, n, impl, AG, remain, local)
        phases.append(phase)
        remain = final_data_size(phase.comm_type, n, remain)
    return phases


def binary_tree_parents(n: int, tree: int) -> list[int]:
    """Parent of each of n = 2^k members (-1: the root) in ASTRA-Sim's BinaryTree over one line.

    BinaryTree numbers the members in order (left subtree, node, right subtree) of a perfect tree of n - 1
    nodes hung under one extra root: RootMax puts the tree left of the root (the root is member n - 1),
    RootMin right of it (the root is member 0). In-order numbering puts each subtree's top in the middle of
    its range, e.g. n = 4: RootMax 3 <- 1 <- {0, 2}; RootMin 0 <- 2 <- {1, 3}.
    """
    parents = [-1] * n
    if tree == ROOT_MAX:
        root, low, high = n - 1, 0, n - 2
    else:
        root, low, high = 0, 1, n - 1
    ranges = [(low, high, root)]
    while ranges:
        low, high, up = ranges.pop()
        if low > high:
            continue
        top = (low + high) // 2
        parents[top] = up
        ranges.append((low, top - 1, top))
        ranges.append((top + 1, high, top))
    return parents


def tree_phase_finishes(
    parents: list[int],
    starts: list[int],
    delay: Callable[[int, int], int],
    endpoint: int,
    reduction: int,
) -> list[int]:
    """Finish tick of each member of one DoubleBinaryTreeAllReduce phase (all messages are the whole chunk).

    The state machine, per member (E = endpoint delay, X = reduction = 3 * floor(bytes / local-mem-bw)):
      leaf:         at start a bundle (E), then send up and post the recv from the parent; when the parent's
                    data is in, a bundle (E), then done.
      intermediate: at start post recvs from both children; each arrival starts a reducing bundle (E + X);
                    the first bundle's callback is only counted, the second sends up and posts the recv from
                    the parent; the parent's data starts a reducing bundle (E + X), then it sends to both
                    children and is done.
      root:         at start post the recv from its only child; on arrival a reducing bundle (E + X), then it
                    sends down and is done.
    A recv completes at the later of the data's arrival and its posting, so the tree reduces to a pass up
    (when each member sends up) and a pass down (when each member has the result); no event loop is needed.
    """
    n = len(parents)
    children: list[list[int]] = [[] for _ in range(n)]
    root = -1
    for member, parent in enumerate(parents):
        if parent < 0:
            root = member
        else:
            children[parent].append(member)
    order = [root]  # breadth first: parents before children
    for member in order:
        order.extend(children[member])
    up = [0] * n  # when a member sends its reduced data up (the root: when it has reduced its child's)
    for member in reversed(order):
        kids = children[member]
        if not kids:
            up[member] = starts[member] + endpoint
            continue
        start = starts[member]  # the recvs from the children are posted at start
        last = max(max(up[kid] + delay(kid, member), start) for kid in kids)
        up[member] = last + endpoint + reduction
    finish = [0] * n
    down = [0] * n  # when a member sends the result to its children
    down[root] = finish[root] = up[root]
    for member in order[1:]:
        parent = parents[member]
        # The recv from the parent is posted when the member sends up.
        arrived = max(down[parent] + delay(parent, member), up[member])
        if children[member]:
            down[member] = finish[member] = arrived + endpoint + reduction
        else:
            finish[member] = arrived + endpoint
    return finish


# ---------------------------------------------------------------------------------------------------------
# The per-phase algorithm state machines (one member each), replayed together in a small event loop.
# ---------------------------------------------------------------------------------------------------------

_INIT, _GENERAL, _RECEIVED = 0, 1, 2


class _Member:
    __slots__ = (
        "index",
        "stream_count",
        "parallel",
        "zero",
        "nonzero",
        "toggle",
        "free",
        "packets",
        "received",
        "receiver",
        "sender",
        "msg_size",
        "rank_offset",
        "multiplier",
        "done",
    )


class PhaseAlgorithm:
    """Replays one phase among n members; `delay(i, j, bytes)` is the network delay between members i and j."""

    def __init__(
        self,
        algorithm: str,
        comm_type: int,
        n: int,
        data_size: int,
        delay: Callable[[int, int, int], int],
        bundle_delay: int,
        local_mem_bytes_per_ns: float,
    ) -> None:
        if algorithm == HALVING_DOUBLING and (n & (n - 1)) != 0:
            raise PipesimError(f"halvingDoubling needs a power-of-two number of NPUs per dimension, got {n}")
        if algorithm == HALVING_DOUBLING and comm_type == A2A:
            raise PipesimError("halvingDoubling has no all-to-all in ASTRA-Sim (use ring or direct)")
        self.algorithm = algorithm
        self.comm_type = comm_type
        self.n = n
        self.data_size = data_size
        self.delay = delay
        self.bundle_delay = bundle_delay
        self.local_mem = local_mem_bytes_per_ns
        self.log2n = n.bit_length() - 1

    # -- setup ------------------------------------------------------------------------------------------
    def _member(self, index: int) -> _Member:
        n, kind = self.n, self.comm_type
        m = _Member()
        m.index = index
        m.toggle = False
        m.zero = 0
        m.nonzero = 0
        m.free = 0
        m.received = 0
        m.done = False
        m.packets = deque()
        m.parallel = 1
        if self.algorithm == HALVING_DOUBLING:
            m.stream_count = 2 * self.log2n if kind == AR else self.log2n
            if kind == AG:
                m.msg_size, m.rank_offset, m.multiplier = self.data_size, n // 2, 0.5
            else:
                m.msg_size, m.rank_offset, m.multiplier = self.data_size // 2, 1, 2.0
            self._hd_partner(m)
            return m
        m.rank_offset, m.multiplier = 0, 0.0
        if kind == AR:
            m.stream_count = 2 * (n - 1)
        elif kind == A2A:
            m.stream_count = (n - 1) * n // 2
        else:
            m.stream_count = n - 1
        m.msg_size = self.data_size if kind == AG else self.data_size // n
        m.receiver = (index + 1) % n
        m.sender = (index - 1) % n
        if self.algorithm == DIRECT:
            m.parallel = n - 1
            if kind == A2A:
                m.stream_count = n - 1
        return m

    def _hd_partner(self, m: _Member) -> None:
        clockwise = (m.index // m.rank_offset) % 2 == 0 if m.rank_offset else True
        step = m.rank_offset if clockwise else -m.rank_offset
        m.receiver = m.sender = (m.index + step) % self.n

    def _nonzero_packets(self, m: _Member) -> int:
        if self.algorithm == HALVING_DOUBLING:
            return self.log2n - 1
        if self.algorithm == DIRECT:
            return m.parallel  # the dimension is not "Local" for the network's own dimensions
        return (self.n - 1) * m.parallel

    # -- one phase -----------------------------------------------------------------------------------------
    def run(self, starts: list[int]) -> list[int]:
        n = self.n
        members = [self._member(i) for i in range(n)]
        finish = [0] * n
        events: list[tuple[int, int, int, int]] = []
        seq = 0
        for i, start in enumerate(starts):
            events.append((start, seq, i, _INIT))
            seq += 1
        heapq.heapify(events)
        messages: dict[tuple[int, int], deque[int]] = {}
        waiting: dict[tuple[int, int], deque[int]] = {}
        bundle = self.bundle_delay
        local_mem = self.local_mem
        comm_type = self.comm_type
        algorithm = self.algorithm
        remaining = n

        def release(m: _Member, now: int, processed: bool, size: int) -> None:
            nonlocal seq
            cost = bundle + (3 * int(size / local_mem) if processed else 0)
            heapq.heappush(events, (now + cost, seq, m.index, _GENERAL))
            seq += 1

        def insert_packet(m: _Member, now: int) -> None:
            if m.zero == 0 and m.nonzero == 0:
                m.zero = m.parallel
                m.nonzero = self._nonzero_packets(m)
                m.toggle = not m.toggle
            if m.zero > 0:
                processed = False
                m.zero -= 1
            elif m.nonzero > 0:
                processed = comm_type == RS or (comm_type == AR and m.toggle)
                m.nonzero -= 1
            else:
                raise AssertionError("collective algorithm injected a packet it does not have")
            m.packets.append((m.sender, m.receiver, m.msg_size))
            release(m, now, processed, m.msg_size)
            if algorithm == DIRECT:
                m.receiver = (m.receiver + 1) % n
                if m.receiver == m.index:
                    m.receiver = (m.receiver + 1) % n
                m.sender = (m.sender - 1) % n
                if m.sender == m.index:
                    m.sender = (m.sender - 1) % n
            elif algorithm == HALVING_DOUBLING:
                m.rank_offset = int(m.rank_offset * m.multiplier)
                m.msg_size = int(m.msg_size / m.multiplier)
                if m.rank_offset == n and comm_type == AR:
                    m.multiplier = 0.5
                    m.rank_offset = int(m.rank_offset * m.multiplier)
                    m.msg_size = int(m.msg_size / m.multiplier)
                if 0 < m.rank_offset < n:
                    self._hd_partner(m)

        def ready(m: _Member, now: int) -> None:
            nonlocal seq
            if not m.packets or m.stream_count == 0 or m.free == 0:
                return
            src, dst, size = m.packets.popleft()
            me = m.index
            arrival = now + self.delay(me, dst, size)
            key = (me, dst)
            posted = waiting.get(key)
            if posted:
                heapq.heappush(events, (max(arrival, posted.popleft()), seq, dst, _RECEIVED))
                seq += 1
            else:
                messages.setdefault(key, deque()).append(arrival)
            key = (src, me)
            arrived = messages.get(key)
            if arrived:
                heapq.heappush(events, (max(arrived.popleft(), now), seq, me, _RECEIVED))
                seq += 1
            else:
                waiting.setdefault(key, deque()).append(now)
            m.stream_count -= 1
            m.free -= 1

        while events:
            now, _, index, kind = heapq.heappop(events)
            m = members[index]
            if kind == _RECEIVED:
                m.received += 1
                insert_packet(m, now)
            elif kind == _GENERAL:
                m.free += 1
                if algorithm == DIRECT and comm_type == AR and m.stream_count <= n - 1:
                    if m.received < n - 1:
                        continue
                    for _ in range(m.parallel):
                        ready(m, now)
                else:
                    ready(m, now)
                if m.stream_count == 0 and m.free == m.parallel and not m.done:
                    m.done = True
                    finish[index] = now
                    remaining -= 1
            else:
                for _ in range(m.parallel):
                    insert_packet(m, now)
        if remaining:
            raise AssertionError(f"{algorithm} {COLLECTIVE_NAMES.get(comm_type)} phase did not complete")
        return finish
