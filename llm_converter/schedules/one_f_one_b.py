"""1F1B (PipeDream-Flush, Narayanan et al. 2021; Megatron-LM's non-interleaved schedule).

Order as torch.distributed.pipelining's Schedule1F1B (`_get_pipeline_order`): rank r runs p-1-r warm-up
forwards, then alternates one forward and one backward until the forwards are done, then drains the remaining
backwards. Megatron's forward_backward_pipelining_without_interleaving gives the same per-rank order
(num_warmup_microbatches = p - r - 1). torch requires m >= p.
"""

from __future__ import annotations

from llm_converter.schedules.actions import Action, B, F, PipelineSchedule, loop_stage_to_rank


def one_f_one_b(pp: int, microbatches: int) -> PipelineSchedule:
    ranks: list[tuple[Action, ...]] = []
    for rank in range(pp):
        warmup = min(pp - 1 - rank, microbatches)
        order = [F(rank, k) for k in range(warmup)]
        for k in range(microbatches - warmup):  # steady state: 1F then 1B
            order += [F(rank, warmup + k), B(rank, k)]
        order += [B(rank, k) for k in range(microbatches - warmup, microbatches)]  # cool-down
        ranks.append(tuple(order))
    return PipelineSchedule("1f1b", pp, pp, microbatches, loop_stage_to_rank(pp, 1), tuple(ranks))
