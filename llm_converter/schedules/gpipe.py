"""GPipe (Huang et al. 2019): fill then drain. Every rank runs all its forwards, then all its backwards.

Order as torch.distributed.pipelining's ScheduleGPipe (`_get_pipeline_order` / `_step_microbatches`): rank r
runs rF0 .. rF(m-1), then rB0 .. rB(m-1) (backwards in microbatch order, not reversed).
"""

from __future__ import annotations

from llm_converter.schedules.actions import B, F, PipelineSchedule, loop_stage_to_rank


def gpipe(pp: int, microbatches: int) -> PipelineSchedule:
    actions = tuple(
        tuple([F(rank, k) for k in range(microbatches)] + [B(rank, k) for k in range(microbatches)])
        for rank in range(pp)
    )
    return PipelineSchedule("gpipe", pp, pp, microbatches, loop_stage_to_rank(pp, 1), actions)
