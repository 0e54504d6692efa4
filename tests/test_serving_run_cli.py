"""`pipesim run` as a user types it: seed 000's command, its outputs, --json, flags, and bad input at run level
(one line on stderr, exit 2, no output file left)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from astra_driver.cli import main

REPO = Path(__file__).resolve().parents[1]
PP2 = REPO / "configs/cluster/single_node_pp_instance.json"
TP1 = REPO / "configs/cluster/single_node_single_instance.json"
DATASET = REPO / "configs/workloads/example_trace.jsonl"


def _requests_in(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_seed_000_command_writes_csv_log_and_summary(tmp_path: Path) -> None:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    command = [
        sys.executable,
        "-m",
        "astra_driver.cli",
        "run",
        "--cluster-config",
        "configs/cluster/single_node_pp_instance.json",
        "--dtype",
        "float16",
        "--block-size",
        "16",
        "--dataset",
        "configs/workloads/example_trace.jsonl",
        "--output",
        "outputs/pp2_run.csv",
        "--log-interval",
        "1.0",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    info = [line for line in lines if line.startswith("[INFO] step=")]
    assert info and all("prompt_t=" in line and "decode_t=" in line and "npu_mem=" in line for line in info)
    assert any("Serving Benchmark Result" in line for line in lines)
    assert any("max in-flight batches" in line and "2 (pp 2)" in line for line in lines)
    with (tmp_path / "outputs/pp2_run.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == _requests_in(DATASET)
    assert rows[0].keys() >= {"instance id", "request id", "model", "TTFT", "TPOT", "ITL", "latency"}
    assert (tmp_path / "outputs/pp2_run.log.csv").is_file()
    assert done.stderr == ""  # no progress bar when stderr is not a terminal


def test_json_summary_has_max_inflight_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--cluster-config", str(PP2), "--dataset", str(DATASET), "--json", "--max-num-seqs", "4"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert summary["completed"] == _requests_in(DATASET)
    assert summary["instances"][0]["max_inflight_batches"] == 2
    assert summary["instances"][0]["pp_size"] == 2
    assert summary["mean_ttft_ms"] > 0


def test_prefix_caching_flag_changes_the_hit_rate(capsys: pytest.CaptureFixture[str]) -> None:
    rates = []
    for flag in ("--enable-prefix-caching", "--no-enable-prefix-caching"):
        assert main(["run", "--cluster-config", str(PP2), "--dataset", str(DATASET), "--json", flag]) == 0
        rates.append(json.loads(capsys.readouterr().out)["prefix_cache_hit_rate"])
    assert rates[1] == 0.0 and rates[0] >= 0.0


def _bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    output = tmp_path / "out.csv"
    code = main(["run", "--dataset", str(DATASET), "--output", str(output), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert not output.exists()
    assert not list(tmp_path.iterdir())  # nothing left over, no half-written traces either
    return err


def test_request_that_cannot_fit_the_kv_cache_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _bad(tmp_path, capsys, "--cluster-config", str(PP2), "--num-gpu-blocks", "3")
    assert "KV blocks" in err


def test_cluster_the_scheduler_cannot_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(PP2.read_text())
    # 7.48 GiB of weights per stage fit in 8.3103 GiB x 0.9, but not one more 1 MiB KV block
    document["nodes"][0]["instances"][0]["npu_mem"]["mem_size"] = 8.3103
    config = tmp_path.parent / f"{tmp_path.name}-cluster.json"
    config.write_text(json.dumps(document))
    err = _bad(tmp_path, capsys, "--cluster-config", str(config), "--keep-traces", str(tmp_path / "traces"))
    assert "npu_mem" in err


def test_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--routing" in _bad(tmp_path, capsys, "--cluster-config", str(PP2), "--routing", "fastest")
    assert "--log-interval" in _bad(tmp_path, capsys, "--cluster-config", str(PP2), "--log-interval", "0")
    assert "--block-size" in _bad(tmp_path, capsys, "--cluster-config", str(PP2), "--block-size", "0")


def test_too_long_request_fails_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A request past the model's context on the dataset's last line: one line naming that line, before any
    simulation (Scheduler.check_request on every request), no output file."""
    lines = DATASET.read_text().splitlines()
    lines.append(json.dumps({"input_toks": 130_000, "output_toks": 2000, "arrival_time_ns": 10**13}))
    dataset = tmp_path.parent / f"{tmp_path.name}-long.jsonl"
    dataset.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.csv"
    code = main(["run", "--cluster-config", str(PP2), "--dataset", str(dataset), "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{dataset.name}:{len(lines)}" in err and "max_model_len" in err
    assert not output.exists()


PD = REPO / "configs/cluster/pd_llama8b_rtxpro6000.json"


def test_pd_cluster_config_runs_and_names_the_roles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The bundled P/D config (1 prefill + 1 decode Llama-3.1-8B on RTXPRO6000): every request's first token
    at the prefill instance, the rest at the decode one; the summary says which instance does which, and the
    run says where the interval rows went."""
    output = tmp_path / "pd.csv"
    code = main(["run", "--cluster-config", str(PD), "--dataset", str(DATASET), "--output", str(output),
                 "--log-interval", "1.0"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    lines = [line.rstrip() for line in out.splitlines()]
    assert "Instance 0 role:                         prefill" in lines
    assert "Instance 1 role:                         decode" in lines
    assert f"wrote {tmp_path / 'pd.log.csv'} (" in out
    with output.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == _requests_in(DATASET) and {row["instance id"] for row in rows} == {"1"}
    assert main(["run", "--cluster-config", str(PD), "--dataset", str(DATASET), "--json"]) == 0
    instances = json.loads(capsys.readouterr().out)["instances"]
    assert [i["pd_type"] for i in instances] == ["prefill", "decode"]
    assert instances[0]["iterations"] == _requests_in(DATASET)  # one prefill step per (short) prompt


def test_no_chunked_prefill_flag_runs_each_prompt_in_one_step(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--cluster-config", str(TP1), "--dataset", str(DATASET), "--json", "--max-num-batched-tokens", "64"]
    assert main(args) == 0
    chunked = json.loads(capsys.readouterr().out)["iterations"]
    assert main([*args, "--no-enable-chunked-prefill"]) == 2  # 64 tokens cannot hold a whole prompt: refused
    assert "chunked prefill off" in capsys.readouterr().err
    assert main([*args[:-2], "--no-enable-chunked-prefill"]) == 0  # default budget: max_model_len
    whole = json.loads(capsys.readouterr().out)["iterations"]
    assert whole < chunked
