"""`pipesim sweep` and `pipesim capacity` (docs/sweep.md).

pipesim sweep configs/sweeps/example.yaml -o results.csv [--jobs N] [--ray ADDRESS|local] [--retry-errors]
pipesim capacity --cluster-config configs/cluster/single_node_single_instance.json \
    --dataset configs/workloads/example_trace.jsonl --slo-ttft-p90-ms 200 --slo-tpot-p90-ms 30 [--json]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.cli import serving_flags as sf
from astra_driver.serving.run_job import RunRequest
from astra_driver.sweep.capacity import Slo, find_capacity
from astra_driver.sweep.grid import DEFAULT_MAX_STEPS, DEFAULT_RTOL
from astra_driver.sweep.sweep import run_sweep


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec YAML (docs/sweep.md).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Results CSV: one row per point (resumed).")],
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", help="Points at once (default: every CPU; 1: in this process).")
    ] = None,
    ray: Annotated[
        str | None, typer.Option("--ray", help="Run points as Ray tasks: `local`, or a cluster address (auto).")
    ] = None,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Rerun points whose row holds an error (default: skip them).")
    ] = False,
) -> None:
    """Run every point of a grid over cluster, workload, scheduler or training fields; one CSV row per point."""
    outcome = run_sweep(spec, output, jobs=jobs, ray=ray, retry_errors=retry_errors)
    typer.echo(outcome.describe())


@app.command()
def capacity(
    cluster_config: Annotated[Path, typer.Option("--cluster-config", help="Cluster config JSON (seed format).")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Requests, LLMServingSim JSONL (its arrivals rescaled).")],
    slo_ttft_p90_ms: Annotated[
        float | None, typer.Option("--slo-ttft-p90-ms", help="SLO: P90 time to first token, ms.")
    ] = None,
    slo_tpot_p90_ms: Annotated[
        float | None, typer.Option("--slo-tpot-p90-ms", help="SLO: P90 time per output token, ms.")
    ] = None,
    rtol: Annotated[
        float, typer.Option("--rtol", help="Stop when the failing rate is within this fraction of the passing one.")
    ] = DEFAULT_RTOL,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Most runs of the search, bracket included.")] = (
        DEFAULT_MAX_STEPS
    ),
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
    json_output: Annotated[bool, typer.Option("--json", help="Print the search and the run as JSON.")] = False,
) -> None:
    """The highest request rate (the dataset's arrivals rescaled) whose run meets a P90 TTFT/TPOT SLO."""
    request = RunRequest(
        cluster_config=cluster_config,
        dataset=dataset,
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
    )
    result = find_capacity(request, Slo(slo_ttft_p90_ms, slo_tpot_p90_ms), rtol=rtol, max_steps=max_steps)
    typer.echo(json.dumps(result.to_json(), indent=2) if json_output else result.format())
