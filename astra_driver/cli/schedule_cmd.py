"""`pipesim schedule`: a pipeline schedule's step x rank grid and its dry-run bubble."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.paths import check_output_path
from llm_converter.errors import PipesimError
from llm_converter.schedules import (
    SCHEDULES,
    ActionTimes,
    Computation,
    PipelineSchedule,
    build_schedule,
    load_schedule,
    schedule_names,
    validate_schedule,
    write_actions_csv,
)
from llm_converter.schedules.grid import format_report, summarize


def parse_times(text: str) -> ActionTimes:
    """`F,B` (full backward) or `F,I,W` (split backward; B = I + W): positive whole steps, so the grid can show
    them."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (2, 3) or any(v < 1 for v in values):
        raise PipesimError(f"--times: '{text}'; give F,B or F,I,W as positive whole steps, e.g. 1,2 or 1,1,1")
    if len(values) == 2:
        return ActionTimes(forward=values[0], full_backward=values[1])
    return ActionTimes.split(*values)


def make_schedule(
    name: str | None, pp: int | None, microbatches: int | None, chunks: int | None, from_csv: Path | None
) -> PipelineSchedule:
    """A named schedule, or a custom one from torch's per-rank action CSV (checked by the dry run)."""
    if from_csv is not None:
        if name is not None or pp is not None or microbatches is not None or chunks is not None:
            raise PipesimError(
                "--from-csv: the CSV gives the ranks, stages and microbatches; drop --schedule, --pp, "
                "--microbatches and --chunks"
            )
        return load_schedule(from_csv)
    if name is None:
        raise PipesimError(f"--schedule: missing; choose one of {schedule_names()} (or give --from-csv FILE)")
    if pp is None or microbatches is None:
        raise PipesimError("--pp and --microbatches: both needed with --schedule, e.g. --pp 4 --microbatches 8")
    return build_schedule(name, pp, microbatches, chunks)


@app.command()
def schedule(
    name: Annotated[
        str | None, typer.Option("--schedule", help=f"One of: {', '.join(SCHEDULES)}.", show_default=False)
    ] = None,
    pp: Annotated[int | None, typer.Option("--pp", help="Pipeline ranks.", show_default=False)] = None,
    microbatches: Annotated[
        int | None, typer.Option("--microbatches", help="Microbatches per step.", show_default=False)
    ] = None,
    chunks: Annotated[
        int | None,
        typer.Option(
            "--chunks", help="Model chunks per rank (interleaved-1f1b, looped-bfs, zb-h1).", show_default=False
        ),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Also write torch's per-rank action CSV here.", show_default=False)
    ] = None,
    from_csv: Annotated[
        Path | None,
        typer.Option("--from-csv", help="Load a custom schedule from torch's per-rank action CSV.", show_default=False),
    ] = None,
    times: Annotated[
        str | None,
        typer.Option("--times", help="Action times in steps: F,B or F,I,W (default: 1 each).", show_default=False),
    ] = None,
    p2p: Annotated[
        int, typer.Option("--p2p", help="Steps an activation or gradient takes between two ranks.", min=0)
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the schedule and its dry run as JSON.")] = False,
) -> None:
    """Print a pipeline schedule's step x rank grid, its dry-run bubble and peak in-flight microbatches."""
    if csv_out is not None:
        check_output_path(csv_out, "--csv")
    action_times = parse_times(times) if times is not None else None
    plan = make_schedule(name, pp, microbatches, chunks, from_csv)
    if action_times is not None and len(times.split(",")) == 2 and _splits_backward(plan):
        raise PipesimError(
            f"--times: '{times}' gives F,B but schedule '{plan.name}' splits the backward into I and W; give F,I,W "
            "(B = I + W), e.g. 1,1,1"
        )
    run = validate_schedule(plan, action_times, p2p=p2p)
    if csv_out is not None:
        write_actions_csv(csv_out, plan)
    if as_json:
        typer.echo(json.dumps(summarize(run, action_times), indent=2))
    else:
        typer.echo(format_report(run, action_times), nl=False)


def _splits_backward(plan: PipelineSchedule) -> bool:
    return any(a.computation is Computation.I for rank in plan.actions for a in rank)
