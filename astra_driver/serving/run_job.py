"""What `pipesim run` and `pipesim simulate` do, as library calls the tests use directly.

run:      cluster config + dataset + scheduler flags -> the serving loop -> per-request CSV (--output), interval
          rows beside it (<output>.log.csv), the summary; --keep-traces DIR also writes the run's traces.
simulate: a --keep-traces folder -> replayed on a backend -> the same outputs, recomputed.
Nothing is written unless the run succeeds: outputs are written atomically at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astra_driver.cluster_config import ClusterConfig, load_cluster_config
from astra_driver.paths import check_output_path
from astra_driver.report.outputs import TimelineRequest, write_timelines
from astra_driver.report.serving_timeline import serving_tracks
from astra_driver.serving.loop import ServingResult, ServingRunConfig, run_serving
from astra_driver.serving.metrics import (
    NS_PER_S,
    ServingSummary,
    interval_log_path,
    summarize,
    write_interval_csv,
    write_requests_csv,
)
from astra_driver.serving.progress import ServingProgress
from astra_driver.serving.request import Request
from astra_driver.serving.workload import load_workload
from llm_converter.errors import PipesimError

DEFAULT_DTYPE = "float16"


@dataclass
class RunRequest:
    """The flags of `pipesim run`."""

    cluster_config: Path
    dataset: Path
    output: Path | None = None
    dtype: str = DEFAULT_DTYPE
    # The scheduler's defaults are the loop's (ServingRunConfig), so a flag and the library agree.
    block_size: int = ServingRunConfig.block_size
    max_num_batched_tokens: int | None = ServingRunConfig.max_num_batched_tokens
    max_num_seqs: int | None = ServingRunConfig.max_num_seqs
    num_gpu_blocks: int | None = ServingRunConfig.num_gpu_blocks
    enable_prefix_caching: bool = ServingRunConfig.enable_prefix_caching
    enable_chunked_prefill: bool = ServingRunConfig.enable_chunked_prefill
    long_prefill_token_threshold: int = ServingRunConfig.long_prefill_token_threshold
    routing: str = ServingRunConfig.routing  # LLMServingSim's default (LOAD)
    seed: int = ServingRunConfig.seed
    profile_dir: Path | None = ServingRunConfig.profile_dir
    log_interval_s: float | None = None
    keep_traces: Path | None = None
    show_progress: bool | None = None  # None: on a terminal only
    timeline: TimelineRequest | None = None  # --timeline / --timeline-png and their options


@dataclass
class RunOutcome:
    result: ServingResult
    summary: ServingSummary


def check_flags(request: RunRequest) -> None:
    for flag, value in (
        ("--block-size", request.block_size),
        ("--max-num-batched-tokens", request.max_num_batched_tokens),
        ("--max-num-seqs", request.max_num_seqs),
    ):
        if value is not None and value < 1:
            raise PipesimError(f"{flag} {value}: must be >= 1")
    if request.long_prefill_token_threshold < 0:
        raise PipesimError(
            f"--long-prefill-token-threshold {request.long_prefill_token_threshold}: must be >= 0 (0: no cap)"
        )
    if request.log_interval_s is not None and not request.log_interval_s > 0:
        raise PipesimError(f"--log-interval {request.log_interval_s:g}: must be > 0 seconds of simulated time")


def serve(
    request: RunRequest,
    emit: Callable[[str], None] | None = None,
    cluster: ClusterConfig | None = None,
    requests: list[Request] | None = None,
) -> RunOutcome:
    """Run the serving simulation and write the outputs; `emit` receives the interval log lines. `cluster` and
    `requests`, when given, replace reading request.cluster_config and request.dataset (sweeps and capacity
    searches pass an edited cluster dict, a generated workload or rescaled arrivals)."""
    check_flags(request)
    if request.output is not None:
        check_output_path(request.output, "--output")
    if request.keep_traces is not None:
        check_output_path(request.keep_traces, "--keep-traces", folder=True)
    if cluster is None:
        cluster = load_cluster_config(request.cluster_config, dtype=request.dtype)
    if requests is None:
        requests = load_workload(request.dataset)
    if request.timeline is not None:
        check_timeline_npus(request.timeline, cluster.total_npus)
    interval_ns = round(request.log_interval_s * NS_PER_S) if request.log_interval_s else None
    with ServingProgress(len(requests), enabled=request.show_progress) as progress:
        config = ServingRunConfig(
            cluster=cluster,
            requests=requests,
            max_num_batched_tokens=request.max_num_batched_tokens,
            max_num_seqs=request.max_num_seqs,
            block_size=request.block_size,
            num_gpu_blocks=request.num_gpu_blocks,
            enable_prefix_caching=request.enable_prefix_caching,
            enable_chunked_prefill=request.enable_chunked_prefill,
            long_prefill_token_threshold=request.long_prefill_token_threshold,
            routing=request.routing,
            seed=request.seed,
            profile_dir=request.profile_dir,
            log_interval_ns=interval_ns,
            emit=emit,
            keep_traces_dir=request.keep_traces,
            progress=progress.update if progress.enabled else None,
            record_timeline=request.timeline is not None and request.timeline.wanted,
            timeline_window=request.timeline.window if request.timeline is not None else None,
            timeline_max_events=request.timeline.max_events if request.timeline is not None else None,
        )
        result = run_serving(config)
    if request.output is not None:
        names = {inst.instance_id: inst.model_name for inst in result.instances}
        write_requests_csv(request.output, result.requests, names)
        if result.interval_log is not None:
            write_interval_csv(interval_log_path(request.output), result.interval_log.rows)
    if result.timeline is not None and request.timeline is not None:
        write_serving_timeline(request.timeline, result, str(cluster.source))
    return RunOutcome(result, summarize(result))


def check_timeline_npus(timeline: TimelineRequest, total_npus: int) -> None:
    """--timeline-npus names NPUs of the cluster (checked before the run, not after it)."""
    missing = sorted(rank for rank in timeline.npus or () if rank >= total_npus)
    if missing:
        raise PipesimError(f"--timeline-npus: NPU {missing[0]} is not in the cluster (its NPUs are 0-{total_npus - 1})")


def write_serving_timeline(timeline: TimelineRequest, result: Any, cluster_config: str) -> None:
    """The run's (or replay's) timeline files: every NPU's nodes, batch-prefixed, plus per instance its
    iterations and requests (report/serving_timeline.py). Records and requests go in a fixed order, so a run and
    its builtin replay write the same file."""
    iterations = sorted(result.iterations, key=lambda r: (r.instance_id, r.start_ns, r.batch_id))
    requests = sorted(result.requests, key=lambda r: r.request_id)
    tracks = serving_tracks(iterations, requests)
    nodes = result.timeline
    # The recorder replays only what the window and max-events keep; events_total still counts the whole run.
    total = nodes.total_nodes + sum(len(track.spans) + len(track.instants) for track in tracks)
    write_timelines(
        timeline,
        nodes.node_times(),
        facts=nodes.facts,
        tracks=tracks,
        metadata={
            "cluster_config": cluster_config,
            "requests": len(requests),
            "iterations": len(iterations),
            "events_total": total,
        },
    )


def simulate(
    directory: Path,
    backend: str = "builtin",
    output: Path | None = None,
    options: object = None,
    timeline: TimelineRequest | None = None,
):
    """Replay a --keep-traces folder and recompute the metrics (and the per-request CSV when `output`; the
    timeline files when `timeline` asks for them: builtin backend only)."""
    from astra_driver.serving.traces import read_manifest, simulate_traces

    if output is not None:
        check_output_path(output, "--output")
    record = timeline is not None and timeline.wanted
    if record:
        check_timeline_npus(timeline, read_manifest(directory)["total_npus"])
    window = timeline.window if timeline is not None else None
    limit = timeline.max_events if timeline is not None else None
    result = simulate_traces(directory, backend, options, record, window, limit)
    manifest = read_manifest(directory)
    if output is not None:
        names = {inst.instance_id: inst.model_name for inst in result.instances}
        write_requests_csv(output, result.requests, names)
    if record:
        write_serving_timeline(timeline, result, manifest["cluster_config"])
    return result, summarize(result), manifest
