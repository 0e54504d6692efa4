"""Collectives on the running engine: matching members by per-group issue order, chunks through per-dimension
queues, phases timed by astra_driver.engine.collectives. Engine inherits these methods (core.py holds the
per-rank state, loading, the event loop and point-to-point).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from astra_driver.engine.collectives import (
    AG,
    COLLECTIVE_NAMES,
    DOUBLE_BINARY_TREE,
    PhaseAlgorithm,
    PhasePlan,
    binary_tree_parents,
    plan_phases,
    tree_phase_finishes,
)
from llm_converter.comm_groups import group_key
from llm_converter.errors import PipesimError

if TYPE_CHECKING:
    from astra_driver.engine.core import _Rank

E_DONE = 0  # core.E_DONE
E_PHASE = 2  # core.E_PHASE
# Memoised collective phases: dropped when this many (relative start patterns can vary without bound).
PHASE_CACHE_LIMIT = 1 << 16


@dataclass(slots=True, eq=False)
class _Instance:
    """One collective as issued by its group's members (matched by per-group issue order)."""

    key: tuple[str, int]
    comm_type: int
    size: int
    members: tuple[int, ...]
    phases: list[PhasePlan]
    chunks: int
    issued: dict[int, tuple[int, int]] = field(default_factory=dict)  # rank -> (node index, issue tick)
    # (chunk, phase, line) -> {rank: start tick}
    starts: dict[tuple[int, int, tuple[int, ...]], dict[int, int]] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Stream:
    """One chunk of one collective on one rank (ASTRA-Sim's StreamBaseline)."""

    instance: _Instance
    rank: int
    node: int
    chunk: int
    priority: int
    phase: int = -1
    initialized: bool = False


class CollectiveRuntime:
    """The collective half of Engine (uses its ranks, network, groups, caches and event queue)."""

    # ------------------------------------------------------------------------------------------------------
    # Collectives
    # ------------------------------------------------------------------------------------------------------
    def _collective(self, state: _Rank, index: int, tick: int) -> None:
        handle = state.graph_of[index]
        node = handle.nodes[index - handle.first]
        rank = state.rank
        resolved = self._group_cache.get(node.pg_name)
        if resolved is None:
            group = group_key(node.pg_name)  # "01" and "1" name one group, as ASTRA-Sim's stoi reads them
            if group in ("", "0"):
                members: tuple[int, ...] = tuple(range(self.npus))
                group = ""
            else:
                members = self.groups.get(group)  # type: ignore[assignment]
                if members is None:
                    raise PipesimError(
                        f"rank {rank} node {node.id} {node.name}: pg_name {group!r} names no communicator group "
                        f"(known: {', '.join(sorted(self.groups)) or 'none'}; pass --comm-group-configuration)"
                    )
            resolved = (group, members, frozenset(members))
            self._group_cache[node.pg_name] = resolved
        group, members, member_set = resolved
        if rank not in member_set:
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: rank {rank} is not in communicator group {group} "
                f"{list(members)}"
            )
        seq = state.coll_seq.get(group, 0)
        state.coll_seq[group] = seq + 1
        key = (group, seq)
        comm_type = int(node.comm_type)
        size = int(node.comm_size)
        instance = self._instances.get(key)
        if instance is None:
            instance = self._new_instance(key, comm_type, size, members, node, rank)
            self._instances[key] = instance
        elif instance.comm_type != comm_type or instance.size != size:
            first = next(iter(instance.issued))
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: collective #{seq} of group {group or 'all'} is "
                f"{COLLECTIVE_NAMES[comm_type]} of {size} bytes here but "
                f"{COLLECTIVE_NAMES[instance.comm_type]} of {instance.size} bytes on rank {first}; every member "
                "must issue the same collectives in the same order"
            )
        issued = instance.issued
        issued[rank] = (index, tick)
        everyone = len(issued) == len(instance.members)
        if everyone:
            del self._instances[key]  # all members are in: nothing else will look it up
        phases = instance.phases
        if not phases:
            self._push(tick, E_DONE, rank, index)
            return
        state.colls_left[index] = instance.chunks
        policy = self._policy
        if policy == "LIFO":
            priority = state.priority
            state.priority += 1
        elif policy == "FIFO":
            priority = state.priority
            state.priority -= 1
        else:
            priority = node.comm_priority or 0
        if len(phases) == 1:
            # One phase (a group ring, or one involved dimension): no member of a line can finish before the
            # line's last member issues, and the comm slot keeps other collectives out of this rank's queue
            # meanwhile, so a line's whole collective is timed in one go when its last member arrives.
            plan = phases[0]
            if plan.local:
                if everyone:  # the line is the whole group
                    self._single_phase(instance, plan, instance.members)
                return
            line = self._line(rank, plan.dim)
            for member in line:
                if member not in issued:
                    return
            self._single_phase(instance, plan, line)
            return
        for chunk in range(instance.chunks):
            self._enter_phase(_Stream(instance, rank, index, chunk, priority), tick)

    def _single_phase(self, instance: _Instance, plan: PhasePlan, line: tuple[int, ...]) -> None:
        """Chunks of a one-phase collective run through the dimension's queue, `active-chunks` at a time.

        ASTRA-Sim queues a collective's chunks in order on each NPU (equal priority: first in, first out) and
        inits the next waiting one whenever a running one leaves the queue (SchedulerUnit::notify_stream_removed).
        So on each member chunk j starts at its issue tick for j < T, else when the earliest-finishing of its
        T running chunks finishes: a min-heap of running finish ticks per member. With T = 1 that is chunk j - 1's
        finish. The collective is done on a member when its last chunk finishes.
        """
        issue_ticks = [instance.issued[member][1] for member in line]
        done = self._single_phase_finishes(plan, line, issue_ticks, instance.chunks)
        for position, member in enumerate(line):
            index = instance.issued[member][0]
            del self.ranks[member].colls_left[index]
            self._push(done[position], E_DONE, member, index)

    def _single_phase_finishes(
        self, plan: PhasePlan, line: tuple[int, ...], issue_ticks: list[int], chunks: int
    ) -> list[int]:
        """Per member of `line`, the tick a one-phase collective issued at `issue_ticks` finishes (no side effect
        on the simulation: the fast path of astra_driver.engine.fast_path calls it too)."""
        threshold = self._threshold
        # The result only depends on the issue ticks relative to the earliest: memoised (serving iterations
        # repeat the same TP all-reduces thousands of times).
        base = min(issue_ticks)
        relative = tuple(t - base for t in issue_ticks)
        memo_key = (plan, line, relative, chunks)
        memo = self._single_cache.get(memo_key)
        if memo is not None:
            return [base + finish for finish in memo]
        running: list[list[int]] = [[] for _ in line]
        done = list(issue_ticks)
        for chunk in range(chunks):
            if chunk < threshold:
                starts = issue_ticks
            elif threshold == 1:
                starts = done  # the common case, without heaps: the previous chunk's finish
            else:
                starts = [heapq.heappop(heap) for heap in running]
            finishes = self._phase_finishes(plan, line, starts, chunk)
            if threshold == 1:
                done = finishes
                continue
            for position, finish in enumerate(finishes):
                heapq.heappush(running[position], finish)
                if finish > done[position]:
                    done[position] = finish
        if len(self._single_cache) >= PHASE_CACHE_LIMIT:
            self._single_cache.clear()
        self._single_cache[memo_key] = [finish - base for finish in done]
        return done

    def _line(self, rank: int, dim: int) -> tuple[int, ...]:
        line = self._lines.get((rank, dim))
        if line is None:
            stride = self._strides[dim]
            count = self.network.counts[dim]
            base = rank - ((rank // stride) % count) * stride
            line = tuple(base + i * stride for i in range(count))
            self._lines[(rank, dim)] = line
        return line

    def _new_instance(self, key, comm_type: int, size: int, members: tuple[int, ...], node, rank: int) -> _Instance:
        involved = tuple(node.involved_dim) if node.involved_dim is not None and not key[0] else None
        plan_key = (key[0], comm_type, size, involved)
        cached = self._plan_cache.get(plan_key)
        if cached is not None:
            return _Instance(key, comm_type, size, members, cached[0], cached[1])
        instance = self._plan_instance(key, comm_type, size, members, node, rank)
        # doubleBinaryTree phases depend on a counter that moves with every collective: never reused.
        if not any(plan.algorithm == DOUBLE_BINARY_TREE for plan in instance.phases):
            self._plan_cache[plan_key] = (instance.phases, instance.chunks)
        return instance

    def _plan_instance(self, key, comm_type: int, size: int, members: tuple[int, ...], node, rank: int) -> _Instance:
        # Sys::determine_chunk_size: comm_size // splits, but at least one byte per NPU of the whole network
        # (groups included) for everything but all-gather: then the collective becomes `splits` chunks of that
        # many bytes. Sys::generate_collective then subtracts whole chunks until nothing is left, every chunk
        # with the full chunk size: 10,000,000 bytes in 3 splits are 4 chunks of 3,333,333 bytes.
        chunk = size // self._splits
        chunks = 0
        if comm_type != AG and chunk < self.network.npus:
            chunk = self.network.npus
            chunks = self._splits
        elif chunk == 0:
            raise PipesimError(
                f"rank {rank} node {node.id} {node.name}: ALL_GATHER comm_size {size} is smaller than "
                f"preferred-dataset-splits {self._splits}; ASTRA-Sim divides by a zero chunk size (use a larger "
                "comm_size)"
            )
        else:
            chunks = -(-size // chunk)
        impls = self._impls[comm_type]
        if len(members) == 1 and self.npus > 1:
            # Sys::generate_collective skips every dimension of one NPU, and a one-member group's ring is one:
            # no phase runs, so the collective completes at its issue tick, like one with no involved dimension.
            phases = []
        elif len(members) != self.npus:
            dims = [(0, len(members), "ring")]
            phases = plan_phases(comm_type, chunk, dims, self._local_bw_aware, local=True)
        else:
            # CommunicatorGroup::get_collective_plan: a group holding every NPU runs on the whole topology with
            # every dimension involved; the node's involved_dim only applies to the default group ("" / "0").
            involved = node.involved_dim if not key[0] else None
            dims = []
            for dim, count in enumerate(self.network.counts):
                flag = True if involved is None or dim >= len(involved) else bool(involved[dim])
                if flag and count > 1:
                    dims.append((dim, count, impls[dim]))
            phases = plan_phases(comm_type, chunk, dims, self._local_bw_aware, local=False) if dims else []
            if any(plan.algorithm == DOUBLE_BINARY_TREE for plan in phases):
                phases = self._assign_trees(comm_type, phases, chunks)
        return _Instance(key, comm_type, size, members, phases, chunks)

    def _assign_trees(self, comm_type: int, phases: list[PhasePlan], chunks: int) -> list[PhasePlan]:
        """Which tree each chunk's doubleBinaryTree phases run on.

        Sys::generate_collective asks the collective type's logical topology for every chunk, phase by phase,
        and a DoubleBinaryTreeTopology answers RootMax, RootMin, RootMax, ... from a counter of its own (one
        per collective type and dimension, kept across collectives). A dimension visited k times per chunk
        (localBWAware: reduce-scatter and all-gather on a lower dimension) advances it k times per chunk.
        """
        per_chunk: dict[int, int] = {}
        for plan in phases:
            if plan.algorithm == DOUBLE_BINARY_TREE:
                per_chunk[plan.dim] = per_chunk.get(plan.dim, 0) + 1
        seen: dict[int, int] = {}
        planned: list[PhasePlan] = []
        for plan in phases:
            if plan.algorithm != DOUBLE_BINARY_TREE:
                planned.append(plan)
                continue
            dim = plan.dim
            first = self._tree_calls.get((comm_type, dim), 0) + seen.get(dim, 0)
            seen[dim] = seen.get(dim, 0) + 1
            planned.append(replace(plan, tree=first & 1, tree_step=per_chunk[dim] & 1))
        for dim, calls in per_chunk.items():
            self._tree_calls[(comm_type, dim)] = self._tree_calls.get((comm_type, dim), 0) + calls * chunks
        return planned

    @property
    def _local_bw_aware(self) -> bool:
        return self.config.system.collective_optimization == "localBWAware"

    def _enter_phase(self, stream: _Stream, tick: int) -> None:
        """Move a stream into its next phase's queue (or finish its chunk), then start what the queues allow."""
        state = self.ranks[stream.rank]
        previous = stream.phase
        if previous >= 0:
            dim = stream.instance.phases[previous].dim
            state.queues[dim].remove(stream)
            state.running[dim] -= 1
        stream.phase += 1
        stream.initialized = False
        phases = stream.instance.phases
        if stream.phase < len(phases):
            queue = state.queues[phases[stream.phase].dim]
            position = 0
            for position, other in enumerate(queue):  # noqa: B007
                if not other.initialized and other.priority < stream.priority:
                    break
            else:
                position = len(queue)
            queue.insert(position, stream)
        else:
            left = state.colls_left[stream.node] - 1
            if left:
                state.colls_left[stream.node] = left
            else:
                del state.colls_left[stream.node]
                self._push(tick, E_DONE, stream.rank, stream.node)
        if previous >= 0:
            self._start_streams(state, stream.instance.phases[previous].dim, tick)
        if stream.phase < len(phases):
            self._start_streams(state, phases[stream.phase].dim, tick)

    def _start_streams(self, state: _Rank, dim: int, tick: int) -> None:
        queue = state.queues[dim]
        running = state.running
        while running[dim] < self._threshold and running[dim] < len(queue):
            stream = queue[running[dim]]
            running[dim] += 1
            stream.initialized = True
            self._phase_started(stream, tick)

    def _phase_line(self, stream: _Stream) -> tuple[int, ...]:
        instance = stream.instance
        plan = instance.phases[stream.phase]
        if plan.local:
            return instance.members
        return self._line(stream.rank, plan.dim)

    def _phase_started(self, stream: _Stream, tick: int) -> None:
        line = self._phase_line(stream)
        key = (stream.chunk, stream.phase, line)
        starts = stream.instance.starts.setdefault(key, {})
        starts[stream.rank] = (tick, stream)
        if len(starts) < len(line):
            return
        del stream.instance.starts[key]
        plan = stream.instance.phases[stream.phase]
        ticks = [starts[member][0] for member in line]
        for member, finish in zip(line, self._phase_finishes(plan, line, ticks, stream.chunk), strict=True):
            self._push(finish, E_PHASE, member, starts[member][1])

    def _phase_finishes(self, plan: PhasePlan, line: tuple[int, ...], ticks: list[int], chunk: int) -> list[int]:
        base = min(ticks)
        relative = tuple(t - base for t in ticks)
        where = line if plan.local else plan.dim
        tree = plan.tree_of(chunk)
        key = (plan.algorithm, plan.comm_type, plan.data_size, plan.local, where, tree, relative)
        finishes = self._phase_cache.get(key)
        if finishes is None:
            delay = self.network.delay
            size = plan.data_size
            bundle = 10 if plan.local else self._endpoint_delay
            if plan.algorithm == DOUBLE_BINARY_TREE:
                # Every message of the tree carries the whole chunk; every reducing bundle reads it twice and
                # writes it once.
                reduction = 3 * int(size / self._local_mem)
                finishes = tree_phase_finishes(
                    binary_tree_parents(len(line), tree),
                    list(relative),
                    lambda i, j: delay(line[i], line[j], size),
                    bundle,
                    reduction,
                )
            else:

                def member_delay(i: int, j: int, size: int) -> int:
                    return delay(line[i], line[j], size)

                algorithm = PhaseAlgorithm(
                    plan.algorithm, plan.comm_type, len(line), size, member_delay, bundle, self._local_mem
                )
                finishes = algorithm.run(list(relative))
            if len(self._phase_cache) >= PHASE_CACHE_LIMIT:
                self._phase_cache.clear()
            self._phase_cache[key] = finishes
        return [base + f for f in finishes]

    def _phase_done(self, stream: _Stream, tick: int) -> None:
        state = self.ranks[stream.rank]
        self._enter_phase(stream, tick)
        self._issue(state)
