"""Pipeline schedules as data, in torch.distributed.pipelining's notation.

An action is (stage, computation, microbatch), written `0F1` (stage 0, forward, microbatch 1), `2I0` (input
gradient), `2W0` (weight gradient) or `1B3` (full backward = I then W in one kernel sequence). A schedule is, per
pipeline rank, the ordered list of the actions that rank runs; `stage_to_rank` says which rank holds each stage.
This mirrors torch's `_Action` / `pipeline_order` (torch/distributed/pipelining/schedules.py) restricted to its
compute actions: pipesim derives the sends, receives and gradient reductions itself.

The CSV format is torch's `_dump_csv` / `_load_csv` "compute_only" format: one row per rank, one
comma-separated action string per step, an empty cell for an idle step.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic


class Computation(StrEnum):
    F = "F"  # forward
    I = "I"  # noqa: E741  (torch's letter) backward for the input gradient only
    W = "W"  # backward for the weight gradient only
    B = "B"  # full backward: input and weight gradient together

    @property
    def is_backward(self) -> bool:
        return self is not Computation.F


_ACTION_RE = re.compile(r"(\d+)([FIWB])(\d+)")


@dataclass(frozen=True, slots=True, order=True)
class Action:
    stage: int
    computation: Computation
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.computation.value}{self.microbatch}"

    @staticmethod
    def parse(text: str) -> Action:
        """`"2I0"` -> Action(2, I, 0). PipesimError for anything else (the caller adds where it came from)."""
        match = _ACTION_RE.fullmatch(text.strip())
        if match is None:
            raise PipesimError(
                f"'{text}' is not an action; write <stage><F|I|W|B><microbatch>, e.g. 0F1, 2I0, 2W0, 1B3"
            )
        stage, letter, microbatch = match.groups()
        return Action(int(stage), Computation(letter), int(microbatch))


def F(stage: int, microbatch: int) -> Action:
    return Action(stage, Computation.F, microbatch)


def B(stage: int, microbatch: int) -> Action:
    return Action(stage, Computation.B, microbatch)


def I(stage: int, microbatch: int) -> Action:  # noqa: E743  (torch's letter)
    return Action(stage, Computation.I, microbatch)


def W(stage: int, microbatch: int) -> Action:
    return Action(stage, Computation.W, microbatch)


@dataclass(frozen=True)
class PipelineSchedule:
    """Per rank, the actions it runs in order. Stage s of `num_stages` lives on rank `stage_to_rank[s]`."""

    name: str
    pp: int
    num_stages: int
    microbatches: int
    stage_to_rank: tuple[int, ...]
    actions: tuple[tuple[Action, ...], ...]

    @property
    def chunks(self) -> int:
        """Model chunks (stages) per rank."""
        return self.num_stages // self.pp

    def stages_of(self, rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == rank)

    @property
    def splits_backward(self) -> bool:
        """True when backward runs as separate I and W actions (zero-bubble family)."""
        return any(a.computation in (Computation.I, Computation.W) for rank in self.actions for a in rank)

    def format_rows(self) -> list[str]:
        """One line per rank: `rank 0: 0F0 0F1 ...` (compact, no idle steps)."""
        return [f"rank {r}: " + " ".join(str(a) for a in acts) for r, acts in enumerate(self.actions)]


def loop_stage_to_rank(pp: int, chunks: int) -> tuple[int, ...]:
    """Stage s on rank s mod pp (torch's default for multi-stage schedules, Megatron's virtual pipeline)."""
    return tuple(s % pp for s in range(pp * chunks))


def v_stage_to_rank(pp: int) -> tuple[int, ...]:
    """V shape: stages 0..pp-1 down the ranks, pp..2pp-1 back up (rank r holds r and 2pp-1-r)."""
    return tuple(s if s < pp else 2 * pp - 1 - s for s in range(2 * pp))


# ---------------------------------------------------------------------------------------------------- CSV


def schedule_to_csv(rows: list[list[Action | None]]) -> str:
    """torch's compute_only CSV: one row per rank, '' for an idle step."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        writer.writerow(["" if a is None else str(a) for a in row])
    return buffer.getvalue()


def write_actions_csv(path: Path, schedule: PipelineSchedule) -> None:
    """Write the schedule as torch's per-rank action CSV, idle steps (unit-time dry run) as empty cells."""
    from llm_converter.schedules.dry_run import dry_run  # dry_run builds on this module

    write_atomic(Path(path), schedule_to_csv(dry_run(schedule).step_rows()).encode())


# torch's other action kinds (communication, FSDP, gradient reduction): pipesim derives them, so a CSV holding
# them (torch's _dump_csv of a lowered schedule) loads with them skipped.
_TORCH_NON_COMPUTE = re.compile(r"\d+(UNSHARD|RESHARD|REDUCE_GRAD|SEND_F|RECV_F|SEND_B|RECV_B)\d*")
_OVERLAP_RE = re.compile(r"\((.*)\)OVERLAP_F_B")


def _parse_cell(cell: str) -> list[Action]:
    text = cell.strip()
    if not text or _TORCH_NON_COMPUTE.fullmatch(text):
        return []
    overlap = _OVERLAP_RE.fullmatch(text)
    if overlap:  # torch's DualPipeV overlapped F+B: its sub-actions, in order
        return [Action.parse(part) for part in overlap.group(1).split(";") if part.strip()]
    return [Action.parse(text)]


def parse_actions_csv(text: str, where: str, name: str = "custom") -> PipelineSchedule:
    """Parse torch's per-rank action CSV; stage_to_rank, stage and microbatch counts come from the actions."""
    rows: list[list[Action]] = []
    for row_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        actions: list[Action] = []
        for column, cell in enumerate(row, start=1):
            try:
                actions.extend(_parse_cell(cell))
            except PipesimError as exc:
                place = f"{where}: row {row_number} (rank {row_number - 1}), column {column}"
                raise PipesimError(f"{place}: {exc}") from None
        rows.append(actions)
    while rows and not rows[-1]:
        rows.pop()  # trailing blank lines
    if not rows or not any(rows):
        raise PipesimError(f"{where}: no actions; write one row per rank of actions like 0F0,0F1,0B0")
    stage_to_rank: dict[int, int] = {}
    for rank, actions in enumerate(rows):
        for action in actions:
            holder = stage_to_rank.setdefault(action.stage, rank)
            if holder != rank:
                raise PipesimError(
                    f"{where}: stage {action.stage} has actions on rank {holder} (row {holder + 1}) and rank {rank} "
                    f"(row {rank + 1}, {action}); a stage lives on one rank"
                )
    num_stages = max(stage_to_rank) + 1
    missing = [s for s in range(num_stages) if s not in stage_to_rank]
    if missing:
        raise PipesimError(f"{where}: stage {missing[0]} has no actions (stages run 0..{num_stages - 1}); add them")
    microbatches = max(a.microbatch for actions in rows for a in actions) + 1
    return PipelineSchedule(
        name=name,
        pp=len(rows),
        num_stages=num_stages,
        microbatches=microbatches,
        stage_to_rank=tuple(stage_to_rank[s] for s in range(num_stages)),
        actions=tuple(tuple(actions) for actions in rows),
    )


def read_actions_csv(path: Path, name: str | None = None, validate: bool = True) -> PipelineSchedule:
    """Load a custom schedule from torch's per-rank action CSV (one row per rank). With `validate`, the dry run
    checks it (completeness, dependencies, no deadlock) and a failure names the file and the stuck actions."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file; give a per-rank action CSV (torch's _dump_csv format)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{path}: cannot read ({exc}); give a UTF-8 per-rank action CSV") from None
    schedule = parse_actions_csv(text, str(path), name or path.stem)
    if validate:
        from llm_converter.schedules.dry_run import validate_schedule

        validate_schedule(schedule, where=str(path))
    return schedule
