"""Pipeline-parallel training schedules as data: per rank, the ordered actions (`0F1`, `2I0`, `2W0`, `1B3`).

    build_schedule("1f1b", pp=4, microbatches=8) -> PipelineSchedule
    load_schedule(path)                          -> PipelineSchedule from torch's per-rank action CSV
    dry_run(schedule) / validate_schedule(...)   -> timed grid, bubble; DeadlockError naming stuck actions

Each family has its own module and follows torch.distributed.pipelining's or its paper's order (see
docs/schedules.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llm_converter.errors import PipesimError
from llm_converter.schedules.actions import (
    Action,
    Computation,
    PipelineSchedule,
    parse_actions_csv,
    read_actions_csv,
    write_actions_csv,
)
from llm_converter.schedules.dry_run import ActionTimes, DryRun, dry_run, peak_inflight, validate_schedule
from llm_converter.schedules.dualpipe import dualpipev
from llm_converter.schedules.gpipe import gpipe
from llm_converter.schedules.interleaved import interleaved_1f1b, looped_bfs
from llm_converter.schedules.one_f_one_b import one_f_one_b
from llm_converter.schedules.zero_bubble import zb_h1, zb_h2, zb_v


@dataclass(frozen=True)
class ScheduleFamily:
    """How to build one named schedule and what it requires of (pp, microbatches, chunks)."""

    build: Callable[[int, int, int], PipelineSchedule]  # (pp, microbatches, chunks)
    default_chunks: int  # model chunks (stages) per rank when --chunks is not given
    takes_chunks: bool  # False: the chunks per rank are fixed at default_chunks
    min_microbatches: Callable[[int], int]  # of pp: torch's / the paper's lower bound
    multiple_of_pp_when_chunked: bool  # m divisible by p when chunks > 1 (torch / Megatron interleaved)
    summary: str


def _at_least(n: int) -> Callable[[int], int]:
    return lambda pp: n


SCHEDULES: dict[str, ScheduleFamily] = {
    "gpipe": ScheduleFamily(
        lambda p, m, v: gpipe(p, m), 1, False, _at_least(1), False, "all forwards, then all backwards"
    ),
    "1f1b": ScheduleFamily(
        lambda p, m, v: one_f_one_b(p, m), 1, False, lambda p: p, False, "warm-up, then one forward one backward"
    ),
    "interleaved-1f1b": ScheduleFamily(
        interleaved_1f1b, 2, True, _at_least(1), True, "1F1B over v model chunks per rank (Megatron's order)"
    ),
    "looped-bfs": ScheduleFamily(
        looped_bfs, 2, True, _at_least(1), False, "v chunks per rank, each chunk's microbatches breadth first"
    ),
    "zb-h1": ScheduleFamily(
        zb_h1, 1, True, lambda p: p, True, "1F1B with split backward, W fills the drain (zero bubble H1)"
    ),
    "zb-h2": ScheduleFamily(
        lambda p, m, v: zb_h2(p, m), 1, False, lambda p: p, False, "more warm-up forwards, W at the tail (H2)"
    ),
    "zb-v": ScheduleFamily(
        lambda p, m, v: zb_v(p, m), 2, False, _at_least(1), False, "zero bubble on a V of 2 chunks per rank"
    ),
    "dualpipev": ScheduleFamily(
        lambda p, m, v: dualpipev(p, m), 2, False, lambda p: 2 * p, False, "DeepSeek's DualPipe folded in a V"
    ),
}


def schedule_names() -> str:
    return ", ".join(SCHEDULES)


def build_schedule(name: str, pp: int, microbatches: int, chunks: int | None = None) -> PipelineSchedule:
    """The named schedule for `pp` ranks and `microbatches` microbatches. `chunks` (model chunks per rank) is
    for interleaved-1f1b, looped-bfs (default 2) and zb-h1 (default 1); zb-v and dualpipev always hold 2
    stages per rank (chunks None or 2), the others 1 (None or 1). PipesimError naming the flag for bad input."""
    family = SCHEDULES.get(name)
    if family is None:
        raise PipesimError(f"--schedule: unknown schedule '{name}'; choose one of {schedule_names()}")
    if pp < 1:
        raise PipesimError(f"--pp: {pp} pipeline ranks; give at least 1")
    if microbatches < 1:
        raise PipesimError(f"--microbatches: {microbatches}; give at least 1 microbatch")
    if chunks is None:
        chunks = family.default_chunks
    if chunks < 1:
        raise PipesimError(f"--chunks: {chunks}; give at least 1 model chunk per rank")
    if not family.takes_chunks and chunks != family.default_chunks:
        fixed = "one stage" if family.default_chunks == 1 else f"{family.default_chunks} stages"
        takers = ", ".join(n for n, f in SCHEDULES.items() if f.takes_chunks)
        raise PipesimError(
            f"--chunks: schedule '{name}' holds {fixed} per rank and takes no --chunks {chunks}; "
            f"drop --chunks or use one of {takers}"
        )
    least = family.min_microbatches(pp)
    if microbatches < least:
        raise PipesimError(
            f"--microbatches: schedule '{name}' on {pp} ranks needs at least {least} microbatches, got "
            f"{microbatches}; give --microbatches >= {least}"
        )
    if family.multiple_of_pp_when_chunked and chunks > 1 and microbatches % pp:
        raise PipesimError(
            f"--microbatches: schedule '{name}' with {chunks} chunks per rank needs microbatches divisible by "
            f"--pp {pp} (as torch and Megatron-LM require), got {microbatches}; give a multiple of {pp}"
        )
    return family.build(pp, microbatches, chunks)


def load_schedule(path: Path, name: str | None = None) -> PipelineSchedule:
    """A custom schedule from torch's per-rank action CSV, checked by the dry run."""
    return read_actions_csv(Path(path), name=name, validate=True)


__all__ = [
    "Action",
    "ActionTimes",
    "DryRun",
    "dry_run",
    "peak_inflight",
    "validate_schedule",
    "Computation",
    "PipelineSchedule",
    "SCHEDULES",
    "ScheduleFamily",
    "build_schedule",
    "load_schedule",
    "parse_actions_csv",
    "read_actions_csv",
    "schedule_names",
    "write_actions_csv",
]
