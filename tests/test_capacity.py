"""pipesim capacity and a sweep's capacity section: the found rate meets the SLO, 20% more does not."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from astra_driver.cli import main
from astra_driver.serving.request import Request
from astra_driver.serving.run_job import RunRequest, serve
from astra_driver.serving.workload import WorkloadSpec, generate_workload, write_workload_jsonl
from astra_driver.sweep.capacity import Slo, base_rate, find_capacity, rescaled, search_capacity
from astra_driver.sweep.sweep import run_sweep
from llm_converter.errors import PipesimError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster" / "single_node_single_instance.json"
# 20 requests on Llama-3.1-8B with two seats: a queue whose P90 TTFT climbs steeply past ~9 req/s
WORKLOAD = WorkloadSpec(num_requests=20, rate=4, input_len=128, output_len=16, seed=1)
SLO = Slo(ttft_p90_ms=150.0, tpot_p90_ms=20.0)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "w.jsonl"
    write_workload_jsonl(path, generate_workload(WORKLOAD))
    return path


def run_at_rate(dataset_rate: float) -> dict:
    """`pipesim run` on the workload generated at that rate (vLLM bench's arrivals scale exactly as 1 / rate)."""
    spec = WorkloadSpec(**{**WORKLOAD.__dict__, "rate": dataset_rate})
    request = RunRequest(cluster_config=CLUSTER, dataset=Path("generated"), max_num_seqs=2)
    return serve(request, requests=generate_workload(spec)).summary.to_json()


def meets(metrics: dict) -> bool:
    return metrics["p90_ttft_ms"] <= SLO.ttft_p90_ms and metrics["p90_tpot_ms"] <= SLO.tpot_p90_ms


def test_rescaling_recovers_and_moves_the_rate():
    requests = generate_workload(WORKLOAD)
    assert base_rate(requests, "w") == pytest.approx(4.0)  # the last arrival is at n / rate
    doubled = rescaled(requests, 4.0, 8.0)
    assert [r.arrival_ns for r in doubled] == [round(r.arrival_ns / 2) for r in requests]
    assert [(r.input_tokens, r.output_tokens, r.input_token_ids) for r in doubled] == [
        (r.input_tokens, r.output_tokens, r.input_token_ids) for r in requests
    ]
    assert all(a is not b for a, b in zip(doubled, requests, strict=True))  # fresh requests: a run mutates them
    with pytest.raises(PipesimError, match="every request arrives at time 0"):
        base_rate([Request(0, 0, 4, 4)], "w.jsonl")


def test_found_rate_meets_the_slo_and_twenty_percent_more_does_not(dataset):
    request = RunRequest(cluster_config=CLUSTER, dataset=dataset, max_num_seqs=2, show_progress=False)
    result = find_capacity(request, SLO, rtol=0.05)
    assert result.converged and result.rate < result.lowest_failing_rate <= result.rate * 1.05
    assert [p.meets_slo for p in result.probes if p.rate == result.rate] == [True]
    assert len(result.probes) <= 20
    # Independently of the search: regenerate the workload at the found rate and at 20% more, and run both.
    at_rate = run_at_rate(result.rate)
    assert meets(at_rate)
    assert at_rate["p90_ttft_ms"] == pytest.approx(result.summary.to_json()["p90_ttft_ms"], rel=1e-6)
    assert not meets(run_at_rate(1.2 * result.rate))


def test_search_brackets_down_when_the_start_misses_and_bisects():
    # A made-up system: P90 TTFT is 10 ms per req/s; SLO 95 ms -> capacity 9.5 req/s, approached from 64 down.
    class Fake:
        def __init__(self, rate: float) -> None:
            self.rate = rate

        def to_json(self) -> dict:
            return {"p90_ttft_ms": 10.0 * self.rate, "p90_tpot_ms": 1.0}

    result = search_capacity(Fake, 64.0, Slo(ttft_p90_ms=95.0), rtol=0.01)  # type: ignore[arg-type]
    rates = [p.rate for p in result.probes]
    assert rates[:4] == [64.0, 32.0, 16.0, 8.0] and rates[4] == 12.0  # halve until met, then midpoints
    assert 9.5 / 1.01 <= result.rate <= 9.5 < result.lowest_failing_rate <= result.rate * 1.01
    assert result.converged
    capped = search_capacity(Fake, 64.0, Slo(ttft_p90_ms=95.0), rtol=0.01, max_steps=6)  # type: ignore[arg-type]
    assert len(capped.probes) == 6 and not capped.converged and capped.rate == 8.0


def test_cli_json_and_text(dataset, capsys):
    args = ["capacity", "--cluster-config", str(CLUSTER), "--dataset", str(dataset), "--max-num-seqs", "2",
            "--slo-ttft-p90-ms", "150", "--slo-tpot-p90-ms", "20", "--rtol", "0.1"]  # fmt: skip
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rate"] <= out["lowest_failing_rate"] <= out["rate"] * 1.1 and out["base_rate"] == pytest.approx(4)
    assert out["summary"]["completed"] == 20 and out["summary"]["p90_ttft_ms"] <= 150
    assert out["slo"] == {"p90_ttft_ms": 150.0, "p90_tpot_ms": 20.0}
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"capacity: {out['rate']:.4g} req/s meets P90 TTFT <= 150 ms and P90 TPOT <= 20 ms" in text
    assert "Serving Benchmark Result" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slo-ttft-p90-ms", "0.001", "--max-steps", "3"], "no rate meets the SLO, down to 1 req/s"),
        ([], "give a TTFT bound, a TPOT bound or both"),
        (["--slo-tpot-p90-ms", "-3"], "the P90 TPOT bound -3.0 ms must be > 0"),
        (["--slo-tpot-p90-ms", "5", "--rtol", "0"], "rtol 0.0: give a relative tolerance > 0"),
    ],
)
def test_cli_errors_are_one_line(dataset, capsys, extra, message):
    args = ["capacity", "--cluster-config", str(CLUSTER), "--dataset", str(dataset), "--max-num-seqs", "2", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# -- in a sweep ------------------------------------------------------------------------------------------------------


def two_instances() -> list[dict]:
    instance = json.loads(CLUSTER.read_text())["nodes"][0]["instances"][0]
    return [instance, dict(instance)]


def capacity_sweep(tmp_path: Path, capacity: dict) -> Path:
    one = json.loads(CLUSTER.read_text())["nodes"][0]["instances"]
    data = {
        "base": {
            "cluster_config": str(CLUSTER),
            "workload": {**WORKLOAD.__dict__, "rate": 4},
            "run": {"max_num_seqs": 2},
        },
        # one instance (1 NPU) or two round-robin replicas (2 NPUs)
        "zip": [{"nodes.0.num_instances": [1, 2], "nodes.0.instances": [one, two_instances()]}],
        "capacity": capacity,
    }
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_sweep_marks_the_cheapest_configuration_meeting_the_slo_at_a_rate(tmp_path):
    out = tmp_path / "r.csv"
    # At 16 req/s one instance queues (P90 TTFT ~580 ms, test above); two replicas share the load.
    outcome = run_sweep(capacity_sweep(tmp_path, {"slo_ttft_p90_ms": 150, "rate": 16}), out, jobs=1)
    rows = list(csv.DictReader(out.open()))
    assert [r["num_npus"] for r in rows] == ["1", "2"]
    assert [r["meets_slo"] for r in rows] == ["false", "true"] and [r["best"] for r in rows] == ["", "true"]
    assert float(rows[0]["p90_ttft_ms"]) > 150 >= float(rows[1]["p90_ttft_ms"])
    assert "cheapest configuration meeting the SLO at 16 req/s: nodes.0.num_instances=2" in outcome.describe()
    # At 4 req/s both meet it: the one on fewer NPUs is the cheapest.
    out4 = tmp_path / "r4.csv"
    run_sweep(capacity_sweep(tmp_path, {"slo_ttft_p90_ms": 150, "rate": 4}), out4, jobs=1)
    assert [r["best"] for r in csv.DictReader(out4.open())] == ["true", ""]


def test_sweep_without_a_rate_searches_each_point_and_picks_the_most_rate_per_npu(tmp_path):
    out = tmp_path / "r.csv"
    capacity = {"slo_ttft_p90_ms": 150, "slo_tpot_p90_ms": 20, "rtol": 0.1}
    outcome = run_sweep(capacity_sweep(tmp_path, capacity), out, jobs=1)
    rows = list(csv.DictReader(out.open()))
    one, two = (float(r["max_rate"]) for r in rows)
    assert two > one  # two replicas sustain more
    assert float(rows[1]["max_rate_per_npu"]) == pytest.approx(two / 2)
    best = 0 if one > two / 2 else 1
    assert [r["best"] for r in rows] == ["true" if i == best else "" for i in range(2)]
    assert all(float(r["p90_ttft_ms"]) <= 150 for r in rows)  # each row's metrics are the run at its max rate
    assert "most requests/s per NPU within the SLO" in outcome.describe()
