"""`pipesim run` and `pipesim simulate`: a serving run on the cluster, and the replay of its kept traces.

pipesim run --cluster-config configs/cluster/single_node_pp_instance.json --dtype float16 --block-size 16 \
    --dataset configs/workloads/example_trace.jsonl --output outputs/pp2_run.csv --log-interval 1.0
pipesim run ... --keep-traces traces/pp2_run      # every iteration's .et and a manifest
pipesim simulate traces/pp2_run [--backend builtin|astra-sim|docker]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.cli import serving_flags as sf
from astra_driver.report.gantt import DEFAULT_MAX_ROWS
from astra_driver.report.outputs import (
    TimelineFlag,
    TimelineMaxEventsFlag,
    TimelineNpusFlag,
    TimelinePngFlag,
    TimelineRequest,
    TimelineRowsFlag,
    TimelineWindowFlag,
)
from astra_driver.report.timeline import DEFAULT_MAX_EVENTS
from astra_driver.serving.metrics import interval_log_path
from astra_driver.serving.run_job import RunRequest, serve
from astra_driver.serving.run_job import simulate as simulate_job


@app.command()
def run(
    cluster_config: Annotated[Path, typer.Option("--cluster-config", help="Cluster config JSON (seed format).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Requests, LLMServingSim JSONL.")],
    output: Annotated[Path | None, typer.Option("--output", help="Per-request CSV (LLMServingSim's columns).")] = None,
    dtype: sf.DtypeFlag = sf.DTYPE,
    block_size: sf.BlockSizeFlag = sf.BLOCK_SIZE,
    max_num_batched_tokens: sf.MaxNumBatchedTokensFlag = None,
    max_num_seqs: sf.MaxNumSeqsFlag = None,
    num_gpu_blocks: sf.NumGpuBlocksFlag = None,
    enable_prefix_caching: sf.EnablePrefixCachingFlag = sf.ENABLE_PREFIX_CACHING,
    enable_chunked_prefill: sf.EnableChunkedPrefillFlag = sf.ENABLE_CHUNKED_PREFILL,
    long_prefill_token_threshold: sf.LongPrefillTokenThresholdFlag = sf.LONG_PREFILL_TOKEN_THRESHOLD,
    routing: sf.RoutingFlag = sf.ROUTING,
    seed: sf.SeedFlag = sf.SEED,
    profile_dir: sf.ProfileDirFlag = None,
    log_interval: Annotated[
        float | None, typer.Option("--log-interval", help="Print a throughput line every this many simulated s.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    keep_traces: Annotated[
        Path | None, typer.Option("--keep-traces", help="Folder for every iteration's .et and a manifest.")
    ] = None,
    timeline: TimelineFlag = None,
    timeline_png: TimelinePngFlag = None,
    timeline_window: TimelineWindowFlag = None,
    timeline_npus: TimelineNpusFlag = None,
    timeline_max_events: TimelineMaxEventsFlag = DEFAULT_MAX_EVENTS,
    timeline_rows: TimelineRowsFlag = DEFAULT_MAX_ROWS,
) -> None:
    """Simulate serving a dataset on a cluster: vLLM v1 scheduling, graphs on the builtin engine."""
    timelines = TimelineRequest.from_flags(
        timeline, timeline_png, timeline_window, timeline_npus, timeline_max_events, timeline_rows
    )
    request = RunRequest(
        cluster_config=cluster_config,
        dataset=dataset,
        output=output,
        dtype=dtype,
        block_size=block_size,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        num_gpu_blocks=num_gpu_blocks,
        enable_prefix_caching=enable_prefix_caching,
        enable_chunked_prefill=enable_chunked_prefill,
        long_prefill_token_threshold=long_prefill_token_threshold,
        routing=routing,
        seed=seed,
        profile_dir=profile_dir,
        log_interval_s=log_interval,
        keep_traces=keep_traces,
        timeline=timelines,
    )

    def emit(line: str) -> None:  # with --json, stdout holds the JSON alone
        print(line, file=sys.stderr if json_output else sys.stdout, flush=True)

    outcome = serve(request, emit=emit)
    if json_output:
        typer.echo(outcome.summary.to_json_text(), nl=False)
    else:
        typer.echo(outcome.summary.format())
        if output is not None:
            typer.echo(f"wrote {output} ({outcome.summary.completed} requests)")
            if outcome.result.interval_log is not None:
                typer.echo(f"wrote {interval_log_path(output)} ({len(outcome.result.interval_log.rows)} intervals)")
        if keep_traces is not None:
            typer.echo(f"wrote {keep_traces}/ ({len(outcome.result.iterations)} iterations)")
        _echo_timelines(timelines)


@app.command()
def simulate(
    directory: Annotated[Path, typer.Argument(help="Folder written by `pipesim run --keep-traces`.")],
    backend: Annotated[str, typer.Option("--backend", help="builtin, astra-sim or docker.")] = "builtin",
    astra_sim_bin: Annotated[
        str | None, typer.Option("--astra-sim-bin", help="ASTRA-Sim binary (default $ASTRA_SIM_BIN).")
    ] = None,
    docker_image: Annotated[
        str | None, typer.Option("--docker-image", help="Image with ASTRA-Sim (default $PIPESIM_DOCKER_IMAGE).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", help="Per-request CSV of the replay.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    timeline: TimelineFlag = None,
    timeline_png: TimelinePngFlag = None,
    timeline_window: TimelineWindowFlag = None,
    timeline_npus: TimelineNpusFlag = None,
    timeline_max_events: TimelineMaxEventsFlag = DEFAULT_MAX_EVENTS,
    timeline_rows: TimelineRowsFlag = DEFAULT_MAX_ROWS,
) -> None:
    """Replay a run's kept traces on a backend and recompute its serving metrics."""
    from astra_driver.backends import BackendOptions

    timelines = TimelineRequest.from_flags(
        timeline, timeline_png, timeline_window, timeline_npus, timeline_max_events, timeline_rows
    )
    options = BackendOptions(astra_sim_bin=astra_sim_bin, docker_image=docker_image)
    result, summary, manifest = simulate_job(directory, backend, output, options, timelines)
    if json_output:
        typer.echo(summary.to_json_text(), nl=False)
        return
    typer.echo(
        f"{directory}: {len(result.iterations)} iterations replayed on {backend}; largest difference from the run's "
        f"iteration ends {result.max_abs_diff_ns} ns"
    )
    typer.echo(summary.format())
    if output is not None:
        typer.echo(f"wrote {output} ({summary.completed} requests)")
    _echo_timelines(timelines)


def _echo_timelines(timelines: TimelineRequest) -> None:
    for path in (timelines.json_path, timelines.png_path):
        if path is not None:
            typer.echo(f"wrote {path}")
