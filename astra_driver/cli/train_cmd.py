"""`pipesim train`: one pipeline-parallel training step simulated event by event.

pipesim train --model gpt2 --hardware A100-80G --pp 4 --schedule 1f1b --microbatches 8 --microbatch-size 4 \
    --seq-len 1024
pipesim train --model gpt2 --hardware H100-SXM --pp 4 --schedule gpipe --microbatches 8 --stage-time-us 100,200 \
    --p2p-time-us 0 --json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.report.gantt import DEFAULT_MAX_ROWS
from astra_driver.report.outputs import (
    TimelineFlag,
    TimelineMaxEventsFlag,
    TimelineNpusFlag,
    TimelinePngFlag,
    TimelineRequest,
    TimelineRowsFlag,
    TimelineWindowFlag,
    write_timelines,
)
from astra_driver.report.timeline import DEFAULT_MAX_EVENTS, node_facts
from astra_driver.training import DEFAULT_SCHEDULE, TrainingConfig, run_training
from llm_converter.errors import PipesimError


def _times(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise PipesimError(
            f"{flag}: {text!r}; give comma-separated microseconds, e.g. 100,200 or 100,100,100"
        ) from None


@app.command()
def train(
    model: Annotated[str, typer.Option("--model", help="Model name or HF config.json.")],
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware name, e.g. A100-80G, H100-SXM.")],
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel size.")] = 1,
    pp: Annotated[int, typer.Option("--pp", help="Pipeline-parallel ranks.")] = 1,
    dp: Annotated[int, typer.Option("--dp", help="Data-parallel replicas.")] = 1,
    schedule: Annotated[
        str, typer.Option("--schedule", help="gpipe, 1f1b, interleaved-1f1b, zb-h1, ...")
    ] = DEFAULT_SCHEDULE,
    schedule_csv: Annotated[
        Path | None, typer.Option("--schedule-csv", help="Custom schedule: torch's per-rank action CSV.")
    ] = None,
    microbatches: Annotated[int, typer.Option("--microbatches", help="Microbatches per step (per DP replica).")] = 1,
    microbatch_size: Annotated[int, typer.Option("--microbatch-size", help="Sequences per microbatch.")] = 1,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence.")] = 1024,
    chunks: Annotated[int | None, typer.Option("--chunks", help="Model chunks per rank (interleaved).")] = None,
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", help="NPUs per node.")] = 8,
    intra_node_bw: Annotated[
        float | None, typer.Option("--intra-node-bw", help="GB/s inside a node (default: the hardware's link).")
    ] = None,
    inter_node_bw: Annotated[
        float | None, typer.Option("--inter-node-bw", help="GB/s between nodes (default: 50, a 400 Gb/s NIC).")
    ] = None,
    network: Annotated[Path | None, typer.Option("--network", help="ASTRA-Sim network.yml instead.")] = None,
    recompute: Annotated[str, typer.Option("--recompute", help="none, selective or full.")] = "none",
    sequence_parallel: Annotated[
        bool, typer.Option("--sequence-parallel", help="Megatron sequence parallelism.")
    ] = False,
    distributed_optimizer: Annotated[
        bool, typer.Option("--distributed-optimizer", help="Shard optimizer state over DP (RS + AG).")
    ] = False,
    overlap_grad_reduce: Annotated[
        bool,
        typer.Option(
            "--overlap-grad-reduce/--no-overlap-grad-reduce", help="Reduce DP buckets during the last backward."
        ),
    ] = False,
    tp_pp_dp_mapping: Annotated[
        bool,
        typer.Option(
            "--use-tp-pp-dp-mapping",
            help="NPU order tp-pp-dp (a DP replica contiguous) instead of Megatron's default tp-dp-pp.",
        ),
    ] = False,
    stage_time_us: Annotated[
        str | None, typer.Option("--stage-time-us", help="F,B[,W] us per stage, replacing layer times.")
    ] = None,
    p2p_time_us: Annotated[
        float | None, typer.Option("--p2p-time-us", help="Every activation/gradient transfer takes this long.")
    ] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="bfloat16 or float16.")] = "bfloat16",
    backend: Annotated[str, typer.Option("--backend", help="builtin, astra-sim or docker.")] = "builtin",
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Write the .et traces and ASTRA-Sim files.")] = None,
    representative: Annotated[
        bool, typer.Option("--representative", help="Simulate one NPU per pipeline rank (identical others).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    timeline: TimelineFlag = None,
    timeline_png: TimelinePngFlag = None,
    timeline_window: TimelineWindowFlag = None,
    timeline_npus: TimelineNpusFlag = None,
    timeline_max_events: TimelineMaxEventsFlag = DEFAULT_MAX_EVENTS,
    timeline_rows: TimelineRowsFlag = DEFAULT_MAX_ROWS,
) -> None:
    """Simulate one training step: step time, bubble, tokens/s, TFLOPs/GPU, MFU, memory per stage."""
    timelines = TimelineRequest.from_flags(
        timeline, timeline_png, timeline_window, timeline_npus, timeline_max_events, timeline_rows
    )
    config = TrainingConfig(
        model=model,
        hardware=hardware,
        tp=tp,
        pp=pp,
        dp=dp,
        schedule=schedule,
        microbatches=microbatches,
        micro_batch_size=microbatch_size,
        seq_len=seq_len,
        chunks=chunks,
        schedule_csv=schedule_csv,
        gpus_per_node=gpus_per_node,
        intra_node_bw_gbps=intra_node_bw,
        inter_node_bw_gbps=inter_node_bw,
        network_file=network,
        recompute=recompute,
        sequence_parallel=sequence_parallel,
        distributed_optimizer=distributed_optimizer,
        overlap_grad_reduce=overlap_grad_reduce,
        stage_time_us=_times(stage_time_us, "--stage-time-us"),
        p2p_time_us=p2p_time_us,
        tp_pp_dp_mapping=tp_pp_dp_mapping,
        dtype=dtype,
        backend=backend,
        out_dir=out_dir,
        representative=representative,
        record_node_times=timelines.wanted,
    )
    result = run_training(config)
    if timelines.wanted and result.node_times is not None:
        facts = node_facts(result.workload) if result.workload is not None and timelines.json_path else None
        metadata = {"model": model, "schedule": result.schedule.name, "step_time_ns": result.step_time_ns}
        write_timelines(timelines, result.node_times, facts=facts, metadata=metadata)
    typer.echo(json.dumps(result.to_json(), indent=2) if as_json else result.summary())
