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
from llm_converter.schedules.gpipe import gpipe
from llm_converter.schedules.one_f_one_b import one_f_one_b


@dataclass(frozen=True)
class ScheduleFamily:
    """How to build one named schedule and what it requires of (pp, microbatches, chunks)."""

    build: Callable[[int, int, int], PipelineSchedule]  # (pp, microbatches, chunks)
    default_chunks: int
    takes_chunks: bool  # False: chunks is fixed at default_chunks
    needs_m_ge_p: bool = False  # microbatches >= pp (torch's 1F1B-style schedules)
    needs_m_multiple_of_p: bool = False  # microbatches divisible by pp (torch / Megatron interleaved)
    summary: str = ""


SCHEDULES: dict[str, ScheduleFamily] = {
    "gpipe": ScheduleFamily(lambda p, m, v: gpipe(p, m), 1, False, summary="all forwards, then all backwards"),
    "1f1b": ScheduleFamily(
        lambda p, m, v: one_f_one_b(p, m), 1, False, needs_m_ge_p=True, summary="warm-up, one forward one backward"
    ),
}


def schedule_names() -> str:
    return ", ".join(SCHEDULES)


def build_schedule(name: str, pp: int, microbatches: int, chunks: int | None = None) -> PipelineSchedule:
    """The named schedule for `pp` ranks and `microbatches` microbatches. `chunks` (model chunks per rank) is
    for the interleaved families; None takes the family's default (2 for interleaved-1f1b/looped-bfs, and
    the V schedules always hold 2 stages per rank). PipesimError naming the flag for bad input."""
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
        raise PipesimError(
            f"--chunks: schedule '{name}' holds {fixed} per rank and takes no --chunks; "
            f"drop --chunks or use interleaved-1f1b / looped-bfs"
        )
    if family.needs_m_ge_p and microbatches < pp:
        raise PipesimError(
            f"--microbatches: schedule '{name}' needs at least as many microbatches as pipeline ranks "
            f"({microbatches} < --pp {pp}); give --microbatches >= {pp}"
        )
    if family.needs_m_multiple_of_p and microbatches % pp:
        raise PipesimError(
            f"--microbatches: schedule '{name}' needs microbatches divisible by the pipeline ranks "
            f"({microbatches} % --pp {pp} = {microbatches % pp}), as torch and Megatron-LM require; "
            f"give a multiple of {pp}"
        )
    return family.build(pp, microbatches, chunks)


def load_schedule(path: Path, name: str | None = None) -> PipelineSchedule:
    """A custom schedule from torch's per-rank action CSV, checked by the dry run."""
    return read_actions_csv(Path(path), name=name, validate=True)


__all__ = [
    "Action",
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
