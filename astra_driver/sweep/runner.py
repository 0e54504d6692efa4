"""One sweep point -> one row of metrics. Runs in a worker process or a Ray task, so it takes and returns plain data.

A serving point is `pipesim run` on the point's cluster JSON and workload (astra_driver.serving.run_job.serve, the
library call of the verb), a training point `pipesim train` (astra_driver.training.run_training). The row is the
summary JSON flattened (ServingSummary.to_json(): `p90_ttft_ms`, `instances.0.num_gpu_blocks`, ...;
TrainingResult.to_json(): `step_time_ns`, `per_stage.1.bubble_fraction`, ...) after `num_npus`. A point that fails
returns {"error": "<one line>"}: the sweep records it and goes on. Everything is seeded by the point's own fields
(the workload's seed, the router's seed), so a point gives the same row in any process, locally or on Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astra_driver.cluster_config import ClusterConfig, cluster_config_from_dict
from astra_driver.serving.request import Request
from astra_driver.serving.run_job import RunRequest, serve
from astra_driver.serving.workload import WorkloadSpec, generate_workload, load_workload
from astra_driver.sweep.capacity import Slo, base_rate, find_capacity, rescaled
from llm_converter.errors import PipesimError

GENERATED = "<generated workload>"


def run_point(job: dict[str, Any]) -> dict[str, Any]:
    """The point's metrics (a flat mapping), or {"error": line} when it cannot run."""
    try:
        if job["kind"] == "training":
            return training_row(job)
        return serving_row(job)
    except PipesimError as exc:
        return {"error": _one_line(str(exc))}
    except Exception as exc:  # a bug or a bad value type in the spec: still one point's failure, not the sweep's
        return {"error": _one_line(f"{type(exc).__name__}: {exc}")}


def serving_inputs(job: dict[str, Any]) -> tuple[RunRequest, ClusterConfig, list[Request]]:
    """The RunRequest, validated cluster and requests (rescaled to the point's `rate`, if any) of a serving point."""
    run = dict(job["run"])
    if run.get("profile_dir") is not None:
        run["profile_dir"] = Path(run["profile_dir"])
    dataset = job["dataset"]
    request = RunRequest(
        cluster_config=Path(job["cluster_source"]),
        dataset=Path(dataset) if dataset else Path(GENERATED),
        show_progress=False,
        **run,
    )
    cluster = cluster_config_from_dict(job["cluster"], source=job["cluster_source"], dtype=request.dtype)
    if dataset:
        requests = load_workload(Path(dataset))
    else:
        fields = dict(job["workload"])
        if fields.get("lengths_from") is not None:
            fields["lengths_from"] = Path(fields["lengths_from"])
        requests = generate_workload(WorkloadSpec(**fields))
    rate = job.get("rate")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise PipesimError(f"rate: {rate!r}; give requests per second > 0")
        requests = rescaled(requests, base_rate(requests, str(request.dataset)), float(rate))
    return request, cluster, requests


def serving_row(job: dict[str, Any]) -> dict[str, Any]:
    request, cluster, requests = serving_inputs(job)
    row: dict[str, Any] = {"num_npus": cluster.total_npus}
    capacity = job.get("capacity")
    if capacity is None:
        row.update(flatten(serve(request, cluster=cluster, requests=requests).summary.to_json()))
        return row
    slo = Slo(capacity["slo_ttft_p90_ms"], capacity["slo_tpot_p90_ms"])
    if capacity["rate"] is not None:  # the cheapest-configuration search: every point at the same rate
        summary = serve(request, cluster=cluster, requests=requests).summary
        row["meets_slo"] = slo.met_by(summary)
        row.update(flatten(summary.to_json()))
        return row
    result = find_capacity(request, slo, capacity["rtol"], capacity["max_steps"], cluster=cluster, requests=requests)
    row["max_rate"] = result.rate
    row["max_rate_per_npu"] = result.rate / cluster.total_npus
    row["lowest_failing_rate"] = result.lowest_failing_rate
    row["search_runs"] = len(result.probes)
    row.update(flatten(result.summary.to_json()))
    return row


def training_row(job: dict[str, Any]) -> dict[str, Any]:
    from astra_driver.training import TrainingConfig, run_training

    fields = dict(job["train"])
    for name in ("schedule_csv", "network_file"):
        if fields.get(name) is not None:
            fields[name] = Path(fields[name])
    if isinstance(fields.get("stage_time_us"), list):
        fields["stage_time_us"] = tuple(float(t) for t in fields["stage_time_us"])
    result = run_training(TrainingConfig(**fields))
    metrics = result.to_json()
    metrics.pop("files", None)  # a sweep writes no traces
    return {"num_npus": result.plan.tp * result.plan.pp * result.plan.dp, **flatten(metrics)}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON -> one level: {"a": {"b": [1, 2]}} -> {"a.b.0": 1, "a.b.1": 2}."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{index}."))
    else:
        out[prefix[:-1]] = value
    return out


def _one_line(text: str) -> str:
    return " ".join(text.split())
