"""`pipesim run --keep-traces` and `pipesim simulate`: the kept .et files replay to the run's exact metrics on the
builtin engine; a stand-in ASTRA-Sim binary (pipesim's own engine behind ASTRA-Sim's command line) checks the
per-iteration composition used for external backends."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from astra_driver.backends import BackendOptions
from astra_driver.cli import main
from astra_driver.serving.metrics import summarize
from astra_driver.serving.run_job import RunRequest, serve, simulate
from astra_driver.serving.traces import MANIFEST, read_manifest
from llm_converter.chakra.reader import read_workload
from llm_converter.errors import PipesimError

REPO = Path(__file__).resolve().parents[1]
PP2 = REPO / "configs/cluster/single_node_pp_instance.json"
TP2_PP2 = REPO / "configs/cluster/tp2_pp2.json"


def _dataset(tmp_path: Path, count: int = 6) -> Path:
    path = tmp_path / "requests.jsonl"
    lines = [
        json.dumps({"input_toks": 40 + 30 * i, "output_toks": 3 + i % 3, "arrival_time_ns": i * 4_000_000})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("cluster", [PP2, TP2_PP2], ids=["pp2", "tp2_pp2"])
def test_simulate_on_builtin_reproduces_the_run_exactly(tmp_path: Path, cluster: Path) -> None:
    traces = tmp_path / "traces"
    run = serve(RunRequest(cluster_config=cluster, dataset=_dataset(tmp_path), keep_traces=traces))
    replayed, summary, manifest = simulate(traces, "builtin")
    assert replayed.max_abs_diff_ns == 0
    assert summary.to_json() == run.summary.to_json()
    ends = sorted((r.instance_id, r.batch_id, r.start_ns, r.end_ns) for r in replayed.iterations)
    assert ends == sorted((r.instance_id, r.batch_id, r.start_ns, r.end_ns) for r in run.result.iterations)
    # One folder per iteration, one .et per NPU, a manifest naming the batches and their requests.
    assert len(manifest["iterations"]) == len(run.result.iterations)
    first = manifest["iterations"][0]
    assert len(read_workload(traces / first["prefix"]).graphs) == manifest["instances"][0]["num_npus"]
    assert first["entries"][0][:2] == [0, 40] and first["tokens"] == [0]
    assert (traces / "instance0" / "network.yml").is_file()


def test_simulate_cli_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces = tmp_path / "traces"
    assert main(["run", "--cluster-config", str(PP2), "--dataset", str(_dataset(tmp_path)), "--json",
                 "--keep-traces", str(traces)]) == 0  # fmt: skip
    run_json = json.loads(capsys.readouterr().out)
    assert main(["simulate", str(traces), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == run_json
    assert main(["simulate", str(traces)]) == 0
    out = capsys.readouterr().out
    assert "replayed on builtin; largest difference from the run's iteration ends 0 ns" in out
    assert "Serving Benchmark Result" in out


def _stand_in_astra_sim(path: Path) -> Path:
    """ASTRA-Sim's command line, pipesim's engine inside: prints ASTRA-Sim's finish lines."""
    script = f"""#!{sys.executable}
import sys
from astra_driver.astra_config import load_astra_config
from astra_driver.astra_output import format_finish_line
from astra_driver.engine import simulate
from llm_converter.chakra.reader import read_workload
flags = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
config = load_astra_config(flags["system-configuration"], flags["network-configuration"],
                           flags["remote-memory-configuration"], flags.get("comm-group-configuration"))
result = simulate(read_workload(flags["workload-configuration"]), config)
for rank, (finish, exposed) in enumerate(zip(result.finish_ns, result.exposed_comm_ns)):
    print("[2026-03-01 12:00:00.000] [workload] [info] " + format_finish_line(rank, finish, exposed))
"""
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_astra_sim_backend_composes_iterations_within_a_tenth_of_a_percent(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    run = serve(RunRequest(cluster_config=PP2, dataset=_dataset(tmp_path, 2), keep_traces=traces))
    binary = _stand_in_astra_sim(tmp_path / "astra-sim")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    replayed, summary, _ = simulate(traces, "astra-sim", options=BackendOptions(astra_sim_bin=str(binary), env=env))
    ours = run.summary.to_json()
    theirs = summary.to_json()
    for key in ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms", "duration"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-3), key
    assert summary.completed == run.summary.completed


def test_failed_run_leaves_no_trace_folder(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    with pytest.raises(PipesimError, match="KV blocks"):
        serve(RunRequest(cluster_config=PP2, dataset=_dataset(tmp_path), keep_traces=traces, num_gpu_blocks=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl"]


def test_keep_traces_replaces_a_previous_run_but_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    request = RunRequest(cluster_config=PP2, dataset=_dataset(tmp_path, 3), keep_traces=traces)
    serve(request)
    first = read_manifest(traces)
    serve(request)  # a previous run's folder is replaced whole
    assert read_manifest(traces) == first
    (traces / "notes.txt").write_text("mine")
    with pytest.raises(PipesimError, match=r"holds files this command did not write \(notes\.txt\)"):
        serve(request)
    assert (traces / "notes.txt").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_simulate_refuses_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match=MANIFEST):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{}")
    with pytest.raises(PipesimError, match="not a pipesim serving-traces manifest"):
        simulate(tmp_path)


def test_summary_of_replay_matches_summarize_of_run_for_pd(tmp_path: Path) -> None:
    document = json.loads((REPO / "configs/cluster/single_node_single_instance.json").read_text())
    node = document["nodes"][0]
    prefill = dict(node["instances"][0], pd_type="prefill")
    node["instances"] = [prefill, dict(prefill, pd_type="decode")]
    node["num_instances"] = 2
    config = tmp_path / "pd.json"
    config.write_text(json.dumps(document))
    traces = tmp_path / "traces"
    run = serve(RunRequest(cluster_config=config, dataset=_dataset(tmp_path), keep_traces=traces))
    assert len(run.result.transfers) == 6
    replayed, summary, manifest = simulate(traces)
    assert summary.to_json() == summarize(run.result).to_json()
    assert [t["end_ns"] for t in manifest["transfers"]] == [t.end_ns for t in run.result.transfers]


def test_simulate_names_a_missing_per_npu_file(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    serve(RunRequest(cluster_config=PP2, dataset=_dataset(tmp_path, 1), keep_traces=traces))
    (traces / "instance0" / "iter0.1.et").unlink()
    with pytest.raises(PipesimError, match=r"iter0\.\*\.et: found 1 of the instance's 2 per-NPU files"):
        simulate(traces)
