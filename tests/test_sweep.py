"""pipesim sweep: grid expansion, rows against direct library calls, resume, error rows, executors, bad specs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from astra_driver.cli import Interrupted, main
from astra_driver.serving.run_job import RunRequest, serve
from astra_driver.serving.workload import WorkloadSpec, generate_workload, write_workload_jsonl
from astra_driver.sweep.grid import format_value, load_spec, spec_from_dict
from astra_driver.sweep.runner import flatten, run_point
from astra_driver.sweep.sweep import run_sweep
from astra_driver.training import TrainingConfig, run_training
from llm_converter.errors import PipesimError

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "configs" / "cluster" / "single_node_single_instance.json"
INSTANCE = "nodes.0.instances.0"
# 8 short requests: a point runs in ~20 ms
WORKLOAD = {"num_requests": 8, "rate": 8, "input_len": 64, "output_len": 8, "seed": 3}


def serving_spec(tmp_path: Path, grid: dict, zip_groups: list | None = None, **extra) -> Path:
    data = {"base": {"cluster_config": str(CLUSTER), "workload": dict(WORKLOAD), "run": {"dtype": "float16"}}}
    data["grid"] = grid
    if zip_groups:
        data["zip"] = zip_groups
    data.update(extra)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- expansion -----------------------------------------------------------------------------------------------------


def test_grid_is_the_product_in_written_order_with_zip_groups_as_one_axis(tmp_path):
    spec = load_spec(
        serving_spec(
            tmp_path,
            {"workload.rate": [2, 4, 8], "run.max_num_seqs": [4, 16]},
            [{f"{INSTANCE}.tp_size": [1, 2], f"cluster.{INSTANCE}.num_npus": [1, 2]}],
        )
    )
    assert spec.parameter_names == [
        "workload.rate",
        "run.max_num_seqs",
        f"{INSTANCE}.tp_size",
        f"cluster.{INSTANCE}.num_npus",
    ]
    points = spec.points()
    assert len(points) == 3 * 2 * 2  # the zip group is one axis of 2, not 2 x 2
    expected = [(r, s, tp, tp) for r in (2, 4, 8) for s in (4, 16) for tp in (1, 2)]  # the last axis fastest
    assert [tuple(v for _, v in p.params) for p in points] == expected
    assert [p.index for p in points] == list(range(12))
    last = points[-1].job
    instance = last["cluster"]["nodes"][0]["instances"][0]
    assert (instance["tp_size"], instance["num_npus"], instance["pp_size"]) == (2, 2, 1)  # dotted paths edited
    assert last["workload"]["rate"] == 8 and last["run"] == {"dtype": "float16", "max_num_seqs": 16}
    assert json.loads(CLUSTER.read_text())["nodes"][0]["instances"][0]["tp_size"] == 1  # the base is untouched
    assert points[0].job["cluster"]["nodes"][0]["instances"][0]["tp_size"] == 1


def test_no_grid_is_one_point_and_values_format_stably():
    spec = spec_from_dict({"base": {"train": {"model": "gpt2", "hardware": "A100-80G"}}}, Path("s.yaml"))
    assert spec.kind == "training" and len(spec.points()) == 1
    assert [format_value(v) for v in (1, 2.5, True, None, "1f1b", [100, 200.0])] == [
        "1",
        "2.5",
        "true",
        "",
        "1f1b",
        "[100,200.0]",
    ]


# -- rows ----------------------------------------------------------------------------------------------------------


def test_serving_row_is_the_summary_of_pipesim_run_on_the_same_files(tmp_path):
    spec = load_spec(
        serving_spec(tmp_path, {"run.max_num_seqs": [2]}, [{f"{INSTANCE}.tp_size": [2], f"{INSTANCE}.num_npus": [2]}])
    )
    (point,) = spec.points()
    row = run_point(point.job)
    # The same point the way a user runs it: an edited cluster file and a generated JSONL through `pipesim run`.
    cluster = json.loads(CLUSTER.read_text())
    cluster["nodes"][0]["instances"][0].update(tp_size=2, num_npus=2)
    cluster_path = tmp_path / "tp2.json"
    cluster_path.write_text(json.dumps(cluster))
    dataset = tmp_path / "w.jsonl"
    write_workload_jsonl(dataset, generate_workload(WorkloadSpec(**WORKLOAD)))
    direct = serve(RunRequest(cluster_config=cluster_path, dataset=dataset, dtype="float16", max_num_seqs=2)).summary
    expected = {"num_npus": 2, **flatten(direct.to_json())}
    assert row == expected
    assert row["completed"] == 8 and row["instances.0.num_npus"] == 2 and "error" not in row


def test_training_row_is_run_training_and_the_gpipe_bubble_formula(tmp_path):
    base = {
        "model": "gpt2",
        "hardware": "A100-80G",
        "pp": 4,
        "schedule": "gpipe",
        "stage_time_us": [100, 200],
        "p2p_time_us": 0,
    }
    spec = spec_from_dict({"base": {"train": base}, "grid": {"microbatches": [4, 8]}}, tmp_path / "t.yaml")
    rows = [run_point(p.job) for p in spec.points()]
    for m, row in zip((4, 8), rows, strict=True):
        p = 4
        assert row["bubble_fraction"] == pytest.approx((p - 1) / (m + p - 1))
        assert row["step_time_ns"] == (m + p - 1) * 300_000  # (m + p - 1) x (F + B) with free transfers
        assert row["num_npus"] == 4 and row["microbatches"] == m
    direct = run_training(
        TrainingConfig(
            model="gpt2",
            hardware="A100-80G",
            pp=4,
            schedule="gpipe",
            microbatches=8,
            stage_time_us=(100.0, 200.0),
            p2p_time_us=0.0,
        )
    ).to_json()
    direct.pop("files")
    assert rows[1] == {"num_npus": 4, **flatten(direct)}


def test_sweep_csv_has_params_error_and_metrics_in_grid_order(tmp_path):
    out = tmp_path / "r.csv"
    outcome = run_sweep(serving_spec(tmp_path, {"workload.rate": [4, 2], "run.max_num_seqs": [1, 8]}), out, jobs=1)
    assert (outcome.points, outcome.ran, outcome.skipped, outcome.failed) == (4, 4, 0, 0)
    rows = read_rows(out)
    header = list(rows[0])
    assert header[:3] == ["workload.rate", "run.max_num_seqs", "error"] and header[3] == "num_npus"
    assert [(r["workload.rate"], r["run.max_num_seqs"]) for r in rows] == [
        ("4", "1"),
        ("4", "8"),
        ("2", "1"),
        ("2", "8"),
    ]
    assert all(r["completed"] == "8" and r["error"] == "" for r in rows)
    assert float(rows[0]["p90_ttft_ms"]) > float(rows[1]["p90_ttft_ms"])  # one seat queues requests
    assert not list(tmp_path.glob(".r.csv*"))  # no temporary file left


# -- resume, errors, interruption ------------------------------------------------------------------------------------


def test_resume_runs_only_points_missing_from_the_output(tmp_path):
    spec = serving_spec(tmp_path, {"run.max_num_seqs": [1, 2, 8]})
    out = tmp_path / "r.csv"
    run_sweep(spec, out, jobs=1)
    complete = out.read_text()
    lines = complete.splitlines(keepends=True)
    out.write_text("".join(lines[:2] + lines[3:]))  # drop the row of max_num_seqs 2
    ran: list[int] = []
    outcome = run_sweep(spec, out, jobs=1, on_row=lambda index, _: ran.append(index))
    assert ran == [1] and (outcome.ran, outcome.skipped) == (1, 2)
    assert out.read_text() == complete  # back in grid order, identical cells
    outcome = run_sweep(spec, out, jobs=1, on_row=lambda index, _: ran.append(index))
    assert ran == [1] and outcome.ran == 0  # nothing left to do


def test_a_failing_point_records_one_line_and_the_sweep_goes_on(tmp_path):
    spec = serving_spec(tmp_path, {f"{INSTANCE}.tp_size": [1, 3, 1.5]})
    out = tmp_path / "r.csv"
    outcome = run_sweep(spec, out, jobs=1)
    rows = read_rows(out)
    assert outcome.failed == 2 and [r["error"] == "" for r in rows] == [True, False, False]
    assert f"first failure ({INSTANCE}.tp_size=3): {rows[1]['error']}" in outcome.describe()
    assert "tp_size" in rows[1]["error"] and "\n" not in rows[1]["error"]
    assert rows[1]["completed"] == "" and rows[0]["completed"] == "8"
    ran: list[int] = []
    run_sweep(spec, out, jobs=1, on_row=lambda index, _: ran.append(index))
    assert ran == []  # an error row is a finished point (the simulation is deterministic) ...
    run_sweep(spec, out, jobs=1, retry_errors=True, on_row=lambda index, _: ran.append(index))
    assert ran == [1, 2]  # ... unless asked to retry


def test_ctrl_c_leaves_a_valid_csv_of_finished_points(tmp_path):
    spec = serving_spec(tmp_path, {"run.max_num_seqs": [1, 2, 4, 8]})
    out = tmp_path / "r.csv"

    def stop_after_two(index: int, _: object) -> None:
        if index == 1:
            raise Interrupted(2)

    with pytest.raises(Interrupted):
        run_sweep(spec, out, jobs=1, on_row=stop_after_two)
    assert [r["run.max_num_seqs"] for r in read_rows(out)] == ["1", "2"]
    outcome = run_sweep(spec, out, jobs=1)
    assert (outcome.ran, outcome.skipped) == (2, 2)


def test_resume_refuses_a_file_of_another_sweep(tmp_path):
    out = tmp_path / "r.csv"
    run_sweep(serving_spec(tmp_path, {"run.max_num_seqs": [8]}), out, jobs=1)
    with pytest.raises(
        PipesimError, match=r"r\.csv: its points vary run\.max_num_seqs, this spec varies workload\.rate"
    ):
        run_sweep(serving_spec(tmp_path, {"workload.rate": [8]}), out, jobs=1)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(PipesimError, match="not a pipesim sweep result"):
        run_sweep(serving_spec(tmp_path, {"workload.rate": [8]}), tmp_path / "x.csv", jobs=1)


# -- executors -------------------------------------------------------------------------------------------------------


def test_jobs_1_and_jobs_2_write_identical_files(tmp_path):
    spec = serving_spec(tmp_path, {"workload.rate": [4, 16], "run.max_num_seqs": [1, 8]})
    run_sweep(spec, tmp_path / "serial.csv", jobs=1)
    outcome = run_sweep(spec, tmp_path / "pool.csv", jobs=2)
    assert outcome.executor == "local"
    assert (tmp_path / "pool.csv").read_bytes() == (tmp_path / "serial.csv").read_bytes()


def test_local_and_ray_write_identical_files(tmp_path):
    pytest.importorskip("ray")
    # One tiny sweep: starting a local Ray instance costs ~15 s on two cores.
    spec = serving_spec(tmp_path, {"run.max_num_seqs": [1, 8]})
    run_sweep(spec, tmp_path / "local.csv", jobs=1)
    outcome = run_sweep(spec, tmp_path / "ray.csv", jobs=2, ray="local")
    assert outcome.executor == "ray" and outcome.ran == 2
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()


def test_ray_missing_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(PipesimError, match=r"--ray: Ray is not installed; pip install 'pipesim\[ray\]'"):
        run_sweep(serving_spec(tmp_path, {"run.max_num_seqs": [8]}), tmp_path / "r.csv", ray="local")
    assert not (tmp_path / "r.csv").exists()


# -- the CLI and bad specs -------------------------------------------------------------------------------------------


def test_cli_sweep_prints_what_it_wrote(tmp_path, capsys):
    spec = serving_spec(tmp_path, {"run.max_num_seqs": [2, 8]})
    out = tmp_path / "r.csv"
    assert main(["sweep", str(spec), "-o", str(out), "--jobs", "1"]) == 0
    assert f"wrote {out} (2 points: 2 run on serial, 0 already there, 0 failed)" in capsys.readouterr().out
    assert len(read_rows(out)) == 2


BASE = {"cluster_config": str(CLUSTER), "workload": WORKLOAD}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "a sweep spec is a mapping"),
        ({"base": BASE, "grids": {}}, "grids: not a sweep spec key"),
        ({"grid": {"rate": [1]}}, "base: missing"),
        ({"base": {"cluster_config": str(CLUSTER)}}, "base: give exactly one of dataset"),
        ({"base": {**BASE, "run": {"max_num_seq": 4}}}, "base.run.max_num_seq: not a run field"),
        ({"base": BASE, "grid": {"run.max_num_seq": [4]}}, "grid: run.max_num_seq: not a run field"),
        ({"base": {**BASE, "run": {"timeline": "t.json"}}}, "base.run.timeline: not a run field"),  # an output
        ({"base": BASE, "grid": {f"{INSTANCE}.tp_sise": [1]}}, r"nodes\.0\.instances\.0\.tp_sise: not a cluster"),
        ({"base": BASE, "grid": {"nodes.0.instances.3.tp_size": [1]}}, r"instances\.3: the cluster config has 1 ent"),
        ({"base": BASE, "grid": {"replicas": [1]}}, "grid: replicas: not a sweep field"),
        (
            {"base": BASE, "grid": {"run.max_num_seqs": [4, "8"]}},
            "grid: run.max_num_seqs: '8' is not an integer or null",
        ),
        ({"base": {**BASE, "run": {"enable_prefix_caching": 1}}}, "base.run.enable_prefix_caching: 1 is not true or"),
        ({"base": BASE, "grid": {"workload.rate": []}}, "grid: workload.rate: give a non-empty list"),
        ({"base": BASE, "zip": [{"workload.rate": [1, 2], "run.max_num_seqs": [1]}]}, "zip.0: the lists of a zip"),
        ({"base": BASE, "grid": {"rate": [1]}, "zip": [{"rate": [2]}]}, "zip.0: rate: this field is already swept"),
        ({"base": BASE, "capacity": {"slo_ttft_p90_ms": -1}}, r"capacity\.slo_ttft_p90_ms: -1; give a number > 0"),
        ({"base": BASE, "capacity": {"rate": 4}}, "capacity: give slo_ttft_p90_ms, slo_tpot_p90_ms or both"),
        ({"base": BASE, "grid": {"rate": [1]}, "capacity": {"slo_ttft_p90_ms": 9, "rate": 4}}, "capacity.rate fixes"),
        ({"base": {"train": {"model": "gpt2"}}}, "base.train.hardware: missing"),
        ({"base": {"train": {"model": "gpt2", "hardware": "H100-SXM"}}, "grid": {"pp_size": [2]}}, "not a training"),
        ({"base": {"train": {"model": "g", "hardware": "h"}}, "capacity": {"slo_tpot_p90_ms": 1}}, "only a serving"),
    ],
)
def test_bad_specs_are_one_line_naming_the_file_and_field(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipesimError, match=message) as info:
        load_spec(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_bad_spec_on_the_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {cluster_config: x.json\n")
    out = tmp_path / "r.csv"
    assert main(["sweep", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pipesim: error: {path}: line ") and "YAML" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["sweep", str(tmp_path / "none.yaml"), "-o", str(out)]) == 2
    assert "none.yaml: no such sweep spec" in capsys.readouterr().err


def test_example_specs_in_configs_expand():
    counts = {path.name: len(load_spec(path).points()) for path in (REPO / "configs" / "sweeps").glob("*.yaml")}
    assert counts == {"serving_tp_rate.yaml": 12, "training_schedules.yaml": 9, "serving_cheapest.yaml": 2}


def test_a_dataset_swept_over_rate_rescales_its_arrivals(tmp_path):
    dataset = tmp_path / "w.jsonl"
    write_workload_jsonl(dataset, generate_workload(WorkloadSpec(**WORKLOAD)))  # generated at 8 req/s
    data = {"base": {"cluster_config": str(CLUSTER), "dataset": "w.jsonl"}, "grid": {"rate": [8, 16]}}
    spec = spec_from_dict(data, tmp_path / "spec.yaml")  # the dataset path is relative to the spec
    rows = [run_point(p.job) for p in spec.points()]
    # At the dataset's own rate the arrivals are unchanged: the row is `pipesim run` on the file.
    direct = serve(RunRequest(cluster_config=CLUSTER, dataset=dataset)).summary
    assert rows[0] == {"num_npus": 1, **flatten(direct.to_json())}
    # At twice the rate the same requests arrive in half the time.
    doubled = WorkloadSpec(**{**WORKLOAD, "rate": 16})
    faster = serve(RunRequest(cluster_config=CLUSTER, dataset=dataset), requests=generate_workload(doubled)).summary
    assert rows[1]["mean_ttft_ms"] == pytest.approx(faster.to_json()["mean_ttft_ms"], rel=1e-3)
    assert rows[1]["duration"] < rows[0]["duration"]


def test_sweep_and_capacity_route_like_pipesim_run_by_default():
    import inspect

    from astra_driver.cli import sweep_cmd

    defaults = [
        parameter.default
        for command in (sweep_cmd.capacity,)
        for name, parameter in inspect.signature(command).parameters.items()
        if name == "routing"
    ]
    assert defaults == [RunRequest.routing] == ["least_loaded"]


def test_capacity_takes_every_scheduler_flag_of_pipesim_run_with_its_default():
    import inspect

    from astra_driver.cli import serving_cmd, sweep_cmd

    shared = (
        "dtype", "block_size", "max_num_batched_tokens", "max_num_seqs", "num_gpu_blocks", "enable_prefix_caching",
        "enable_chunked_prefill", "long_prefill_token_threshold", "routing", "seed", "profile_dir",
    )  # fmt: skip
    run = inspect.signature(serving_cmd.run).parameters
    capacity = inspect.signature(sweep_cmd.capacity).parameters
    for name in shared:
        assert capacity[name].annotation == run[name].annotation, name
        assert capacity[name].default == run[name].default == getattr(RunRequest, name, None), name
