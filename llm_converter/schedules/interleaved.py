"""Schedules with several model chunks (stages) per rank, stage s on rank s mod p.

interleaved-1f1b (Narayanan et al. 2021, Megatron-LM's forward_backward_pipelining_with_interleaving; torch's
ScheduleInterleaved1F1B). The m*v "virtual microbatches" of a rank are taken in groups of p: virtual index k
runs model chunk (k mod p*v) // p (backward: v-1 minus that) on microbatch (k // p*v)*p + k mod p. Rank r runs
min(2(p-1-r) + (v-1)p, m*v) warm-up forwards, then one forward and one backward per step, then the remaining
backwards. This is Megatron-core's current rule (microbatch_group_size_per_vp_stage = p) and torch's (its
microbatches_per_round = p when p divides m); both require m divisible by p here.

looped-bfs (Lamy-Poirier 2023, "Breadth-First Pipeline Parallelism"; torch's ScheduleLoopedBFS): each rank runs
all microbatches' forwards through its first chunk, then its next chunk, ...; then the backwards chunk by chunk
from the last, microbatches in reverse order.

The shared step rule (`one_f_one_b_rank_order`) is torch's `_get_1f1b_rank_ops`; with `zero_bubble` it splits
backwards into I and W the way torch's ScheduleInterleavedZeroBubble (ZB1P) does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from llm_converter.schedules.actions import Action, B, F, I, PipelineSchedule, W, loop_stage_to_rank


def one_f_one_b_rank_order(
    warmup: int,
    total_virtual: int,
    forward_stage: Callable[[int], int],
    backward_stage: Callable[[int], int],
    zero_bubble_delay: int | None = None,
) -> list[Action]:
    """One rank's actions: `warmup` forwards, then (forward, backward) pairs, then the remaining backwards, each
    stage's microbatches numbered in the order they come. `forward_stage(op)` / `backward_stage(op)` give the
    stage of virtual forward op / backward op (backward ops counted from 0). With `zero_bubble_delay = d`,
    backwards are I and each I from the (d+1)-th pair on is followed by the oldest pending W; the rest of the
    W run at the end (torch's ZB1P, d = rank)."""
    next_f: dict[int, int] = defaultdict(int)
    next_b: dict[int, int] = defaultdict(int)
    next_w: dict[int, int] = defaultdict(int)
    pending_w: list[int] = []  # stages of backwards whose W has not run, oldest first
    order: list[Action] = []

    def forward(op: int) -> None:
        stage = forward_stage(op)
        order.append(F(stage, next_f[stage]))
        next_f[stage] += 1

    def backward(op: int) -> None:
        stage = backward_stage(op)
        order.append((I if zero_bubble_delay is not None else B)(stage, next_b[stage]))
        next_b[stage] += 1
        if zero_bubble_delay is not None:
            pending_w.append(stage)
            if op >= zero_bubble_delay:
                weight()

    def weight() -> None:
        stage = pending_w.pop(0)
        order.append(W(stage, next_w[stage]))
        next_w[stage] += 1

    for op in range(warmup):
        forward(op)
    for k in range(total_virtual - warmup):
        forward(warmup + k)
        backward(k)
    for k in range(total_virtual - warmup, total_virtual):
        backward(k)
    while pending_w:
        weight()
    return order


def interleaved_rank_order(
    pp: int, microbatches: int, chunks: int, rank: int, warmup_per_hop: int, zero_bubble: bool
) -> list[Action]:
    group = pp  # microbatches per round: p when p divides m (Megatron's microbatch_group_size_per_vp_stage)
    total = microbatches * chunks
    warmup = min((chunks - 1) * group + warmup_per_hop * (pp - 1 - rank), total)

    def forward_stage(op: int) -> int:
        return ((op // group) % chunks) * pp + rank

    def backward_stage(op: int) -> int:
        return (chunks - 1 - (op // group) % chunks) * pp + rank

    return one_f_one_b_rank_order(warmup, total, forward_stage, backward_stage, rank if zero_bubble else None)


def interleaved_1f1b(pp: int, microbatches: int, chunks: int) -> PipelineSchedule:
    actions = tuple(tuple(interleaved_rank_order(pp, microbatches, chunks, r, 2, False)) for r in range(pp))
    return PipelineSchedule("interleaved-1f1b", pp, pp * chunks, microbatches, loop_stage_to_rank(pp, chunks), actions)


def looped_bfs(pp: int, microbatches: int, chunks: int) -> PipelineSchedule:
    ranks = []
    for rank in range(pp):
        stages = range(rank, pp * chunks, pp)
        order = [F(s, k) for s in stages for k in range(microbatches)]
        order += [B(s, k) for s in reversed(stages) for k in reversed(range(microbatches))]
        ranks.append(tuple(order))
    return PipelineSchedule("looped-bfs", pp, pp * chunks, microbatches, loop_stage_to_rank(pp, chunks), tuple(ranks))
