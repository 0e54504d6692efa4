"""Zero-bubble schedules (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", sail-sg/zero-bubble-pipeline-
parallelism): the backward is split into I (input gradient, on the critical path) and W (weight gradient, free
to move), and W fills the bubbles.

zb-h1: the paper's ZB-H1, as torch's ScheduleInterleavedZeroBubble (ZB1P) builds it (one chunk per rank by
    default; --chunks v gives torch's interleaved ZB1P). Rank r runs the 1F1B warm-up (p-1-r forwards), then
    F, I pairs; from the (r+1)-th pair on each I is followed by the oldest pending W; leftover W at the end.
    Same peak activations as 1F1B; with F = I = W its bubble is a third of 1F1B's.
zb-h2: the paper's ZB-H2: more warm-up forwards (2(p-1-r)+1, capped at m) fill the bubble before the first
    backward; then I, F pairs; when forwards run out, I, W pairs; then the remaining W. This is the layout the
    zero-bubble repository's manual scheduler documents (scheduler/zb.py, `manual_order`: "fffffffbfbfb...
    wbwbwb...wwww" for stage 0 of 4), which has no memory limit by default (max_mem = 3m forwards' worth).
    The paper defines ZB-H2 under a 2p M_B activation budget (Table 1), so once a rank holds 2p microbatches
    (forward run, W not yet) the steady state becomes I, W, F: with m <= 2p nothing changes; with more
    microbatches memory stays at 2p instead of growing to m, and the bubble keeps the paper's (p-1)(F+B-2W).
zb-v: the paper's ZB-V (Section 6) as torch's ScheduleZBVZeroBubble builds it: two chunks per rank in a V
    (rank r holds stages r and 2p-1-r).
"""

from __future__ import annotations

from llm_converter.schedules.actions import Action, F, I, PipelineSchedule, W, loop_stage_to_rank, v_stage_to_rank
from llm_converter.schedules.interleaved import interleaved_rank_order

# ZB-H2's activation budget: 2p microbatches per rank (the paper's 2p M_B).
ZB_H2_INFLIGHT_PER_RANK = 2


def zb_h1(pp: int, microbatches: int, chunks: int = 1) -> PipelineSchedule:
    actions = tuple(tuple(interleaved_rank_order(pp, microbatches, chunks, r, 1, True)) for r in range(pp))
    return PipelineSchedule("zb-h1", pp, pp * chunks, microbatches, loop_stage_to_rank(pp, chunks), actions)


def zb_h2(pp: int, microbatches: int) -> PipelineSchedule:
    ranks = []
    m = microbatches
    for rank in range(pp):
        warmup = min(2 * (pp - 1 - rank) + 1, m)
        order = [F(rank, k) for k in range(warmup)]
        weights = 0  # W run so far
        for k in range(m - warmup):  # steady: I of the oldest, (W of the oldest at the budget), F of the next
            order.append(I(rank, k))
            if warmup + k - weights >= ZB_H2_INFLIGHT_PER_RANK * pp:
                order.append(W(rank, weights))
                weights += 1
            order.append(F(rank, warmup + k))
        for k in range(m - warmup, m):  # forwards done: each I followed by a W
            order += [I(rank, k), W(rank, weights)]
            weights += 1
        order += [W(rank, k) for k in range(weights, m)]
        ranks.append(tuple(order))
    return PipelineSchedule("zb-h2", pp, pp, microbatches, loop_stage_to_rank(pp, 1), tuple(ranks))


def zb_v(pp: int, microbatches: int) -> PipelineSchedule:
    return PipelineSchedule(
        "zb-v",
        pp,
        2 * pp,
        microbatches,
        v_stage_to_rank(pp),
        tuple(tuple(_zbv_rank(pp, microbatches, r)) for r in range(pp)),
    )


def _zbv_rank(pp: int, microbatches: int, rank: int) -> list[Action]:
    # torch plans with at least 2p-1 microbatches (enough to fill the V), then drops the ones beyond m.
    n_micro = max(2 * pp - 1, microbatches)
    chunk0, chunk1 = rank, 2 * pp - 1 - rank
    f0 = f1 = b0 = b1 = 0
    order: list[Action] = []
    for _ in range(2 * (pp - rank) - 1):  # warm-up 1: chunk 0 forwards
        order.append(F(chunk0, f0))
        f0 += 1
    for _ in range(rank):  # warm-up 2: alternate chunk 1 and chunk 0 forwards
        order += [F(chunk1, f1), F(chunk0, f0)]
        f1 += 1
        f0 += 1
    for _ in range(pp - rank):  # warm-up 3: chunk 1 forward, its I and W
        order += [F(chunk1, f1), I(chunk1, b1), W(chunk1, b1)]
        f1 += 1
        b1 += 1
    while f1 < f0 or f0 < n_micro:  # steady state
        if f0 < n_micro:
            order.append(F(chunk0, f0))
            f0 += 1
        order += [I(chunk0, b0), W(chunk0, b0), F(chunk1, f1), I(chunk1, b1), W(chunk1, b1)]
        b0 += 1
        f1 += 1
        b1 += 1
    w0, w1 = b0, b1
    for _ in range(rank):  # cool-down: input gradients first, weights later
        order += [I(chunk0, b0), I(chunk1, b1)]
        b0 += 1
        b1 += 1
    for _ in range(pp - rank):
        order += [I(chunk0, b0), W(chunk0, w0)]
        b0 += 1
        w0 += 1
    order += [W(chunk1, k) for k in range(w1, b1)]
    order += [W(chunk0, k) for k in range(w0, b0)]
    return [a for a in order if a.microbatch < microbatches]
