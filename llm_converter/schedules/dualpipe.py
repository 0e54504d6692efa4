"""DualPipeV (DeepSeek-V3 technical report's DualPipe, folded into a V by Sea AI Lab; deepseek-ai/DualPipe's
dualpipev.py), as torch.distributed.pipelining's ScheduleDualPipeV builds it.

Two chunks per rank in a V (rank r holds stages r and 2p-1-r). Eight phases per rank: chunk-0 forwards; chunk 0
and 1 forwards; I, W, F on chunk 1 (zero-bubble style); the main phase of overlapped F+B pairs (F of one chunk
with B of the other); B1 with F1+B0; B1, B0 switching to I (weight gradient deferred) half way; W0 and B0;
the remaining W. torch marks each overlapped pair OVERLAP_F_B((F;B)); this dry run has no overlap model and runs
the pair's F then its B. torch requires m >= 2p (as many microbatches as stages).
"""

from __future__ import annotations

from llm_converter.schedules.actions import Action, Computation, PipelineSchedule, v_stage_to_rank


def dualpipev(pp: int, microbatches: int) -> PipelineSchedule:
    return PipelineSchedule(
        "dualpipev",
        pp,
        2 * pp,
        microbatches,
        v_stage_to_rank(pp),
        tuple(tuple(_dualpipev_rank(pp, microbatches, r)) for r in range(pp)),
    )


def _dualpipev_rank(pp: int, microbatches: int, rank: int) -> list[Action]:
    stage0, stage1 = rank, 2 * pp - 1 - rank
    order: list[Action] = []
    next_f = {stage0: 0, stage1: 0}
    next_b = {stage0: 0, stage1: 0}  # shared by B and I: a microbatch's backward starts once
    next_w = {stage0: 0, stage1: 0}
    pending_w: list[tuple[int, int]] = []  # (stage, microbatch) whose I ran and W did not

    def forward(stage: int) -> None:
        order.append(Action(stage, Computation.F, next_f[stage]))
        next_f[stage] += 1

    def backward(stage: int, split: bool) -> None:
        k = next_b[stage]
        if split:
            order.append(Action(stage, Computation.I, k))
            pending_w.append((stage, k))
        else:
            order.append(Action(stage, Computation.B, k))
            next_w[stage] += 1
        next_b[stage] = k + 1

    def weight_if_pending() -> None:
        if pending_w:
            stage, k = pending_w.pop(0)
            order.append(Action(stage, Computation.W, k))
            next_w[stage] += 1

    def overlapped(forward_stage: int, backward_stage: int) -> None:  # torch's OVERLAP_F_B: F then full B
        forward(forward_stage)
        backward(backward_stage, split=False)

    for _ in range((pp - rank - 1) * 2):  # 1: F0
        forward(stage0)
    for _ in range(rank + 1):  # 2: F0 F1
        forward(stage0)
        forward(stage1)
    for _ in range(pp - rank - 1):  # 3: I1 W1 F1
        backward(stage1, split=True)
        weight_if_pending()
        forward(stage1)
    for i in range(microbatches - 2 * pp + rank + 1):  # 4: F0B1 F1B0 overlapped
        if i == 0 and rank == pp - 1:
            forward(stage0)  # torch: not overlapped, to shorten the bubble
            backward(stage1, split=False)
        else:
            overlapped(stage0, stage1)
        overlapped(stage1, stage0)
    for _ in range(pp - rank - 1):  # 5: B1, F1B0
        backward(stage1, split=False)
        overlapped(stage1, stage0)
    split = False
    steps = rank + 1
    for i in range(steps):  # 6: B1 B0, switching to I half way
        if i == steps // 2 and rank % 2 == 1:
            split = True
        backward(stage1, split)
        if i == steps // 2 and rank % 2 == 0:
            split = True
        backward(stage0, split)
    for _ in range(pp - rank - 1):  # 7: W, B0
        weight_if_pending()
        backward(stage0, split)
    for _ in range(rank + 1):  # 8: W
        weight_if_pending()
    return order
