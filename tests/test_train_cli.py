"""`pipesim train` end to end: JSON keys and values, the seed's GPT-2 stage params, traces on disk, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from astra_driver.astra_config import load_comm_groups
from astra_driver.cli import main
from llm_converter.chakra.reader import read_workload
from llm_converter.chakra.validator import validate_workload
from llm_converter.schedules import build_schedule, write_actions_csv
from tests.fixtures.fake_astra import SMALL_EXPOSED_NS, SMALL_FINISH_NS, good_binary

GPT2 = ["--model", "gpt2", "--hardware", "A100-80G"]


def test_json_reports_the_step_and_the_seed_stage_params(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *GPT2, "--pp", "4", "--schedule", "1f1b", "--microbatches", "8", "--microbatch-size", "2"]
    assert main([*args, "--seq-len", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("step_time_ns", "bubble_fraction", "tokens_per_s", "tflops_per_gpu", "mfu", "per_stage"):
        assert key in out
    # Seed 002: "Pipeline stage 0 60M params", stages 1-3 21M (GPT-2 124M, 3 blocks each, embeddings on stage 0).
    params = [stage["params"] for stage in out["per_stage"]]
    assert params == [60_647_424, 21_263_616, 21_263_616, 21_265_152]
    assert [stage["peak_inflight_microbatches"] for stage in out["per_stage"]] == [4, 3, 2, 1]
    assert out["tokens_per_s"] == pytest.approx(8 * 2 * 256 / (out["step_time_ns"] / 1e9))
    memory = out["per_stage"][1]["memory"]
    assert (
        memory["weight_bytes"] == 2 * memory["params_per_npu"]
        and memory["optimizer_bytes"] == 12 * memory["params_per_npu"]
    )
    assert 0 < out["mfu"] < 1 and out["mfu"] == pytest.approx(out["tflops_per_gpu"] / 312)
    for stage in out["per_stage"]:
        (times,) = stage["microbatch_compute_ns"]
        assert times["B"] == times["I"] + times["W"] and times["B"] > times["F"]


def test_fixed_times_print_the_closed_form_bubble(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *GPT2, "--pp", "4", "--schedule", "gpipe", "--microbatches", "4", "--stage-time-us", "100,200"]
    assert main([*args, "--p2p-time-us", "0"]) == 0
    out = capsys.readouterr().out
    assert "step time      2.100 ms" in out and "bubble         42.86%" in out


def test_out_dir_writes_valid_traces_and_astra_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "run"
    args = ["train", *GPT2, "--tp", "2", "--pp", "2", "--schedule", "zb-h1", "--microbatches", "4", "--seq-len", "128"]
    assert main([*args, "--out-dir", str(out_dir)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out_dir.glob("train.*.et")) == [f"train.{r}.et" for r in range(4)]
    assert {"network.yml", "system.json", "memory.json", "comm_groups.json"} <= {p.name for p in out_dir.iterdir()}
    workload = read_workload(out_dir / "train", npus=4)
    workload.comm_groups = load_comm_groups(out_dir / "comm_groups.json", npus=4)
    assert validate_workload(workload, progress=False).ok


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pp", "13", "--microbatches", "16"], "--pp 13: 13 pipeline stages but the model has 12 decoder layers"),
        (["--pp", "4", "--schedule", "interleaved-1f1b", "--chunks", "2", "--microbatches", "8"], "--chunks 2"),
        (["--pp", "2", "--microbatches", "0"], "--microbatches: 0"),
        (["--pp", "2", "--microbatches", "4", "--schedule", "nope"], "unknown schedule"),
        (["--pp", "4", "--microbatches", "2"], "--microbatches"),
        (["--pp", "2", "--microbatches", "2", "--stage-time-us", "1,x"], "--stage-time-us"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    assert main(["train", *GPT2, *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pp", "2", "--microbatches", "4", "--schedule", "nope"], "unknown schedule 'nope'"),
        (["--pp", "2", "--microbatches", "0"], "--microbatches: 0"),
        (["--pp", "13", "--microbatches", "16"], "13 pipeline stages but the model has 12 decoder layers"),
        (["--pp", "2", "--schedule", "interleaved-1f1b", "--chunks", "4", "--microbatches", "4"], "--chunks 4"),
        (["--pp", "4", "--schedule", "zb-h1", "--microbatches", "2"], "needs at least 4 microbatches"),
        (["--pp", "2", "--schedule", "dualpipev", "--microbatches", "2"], "needs at least 4 microbatches"),
        (["--pp", "2", "--schedule-csv", "{dead}"], "rank 1 stuck at 1B0"),
        # A custom CSV fixes microbatches, chunks and the schedule: flags that disagree are refused, not ignored.
        (["--pp", "2", "--schedule-csv", "{ok}", "--microbatches", "8"], "1 microbatches but --microbatches 8"),
        (["--pp", "2", "--schedule-csv", "{ok}", "--chunks", "2"], "1 stages per rank but --chunks 2"),
        (["--pp", "2", "--schedule-csv", "{ok}", "--schedule", "zb-h1"], "--schedule zb-h1 and --schedule-csv"),
        (["--pp", "2", "--schedule-csv", "{five}"], "five.csv: its 10 stages (5 per rank) do not fit the model"),
    ],
)
def test_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # Issue 8 item 7: exit 2, one line, no traceback, and none of the asked-for outputs half-written.
    dead = tmp_path / "in" / "dead.csv"
    dead.parent.mkdir()
    dead.write_text("0F0,0B0\n1B0,1F0\n")
    (tmp_path / "in" / "ok.csv").write_text("0F0,0B0\n1F0,1B0\n")
    write_actions_csv(tmp_path / "in" / "five.csv", build_schedule("looped-bfs", 2, 1, chunks=5))
    out = tmp_path / "out"
    outputs = [
        "--out-dir",
        str(out / "traces"),
        "--timeline",
        str(out / "t.json"),
        "--timeline-png",
        str(out / "t.png"),
    ]
    flags = [f.replace("{dead}", str(dead)).replace("{ok}", str(dead.parent / "ok.csv")) for f in flags]
    argv = ["train", *GPT2, *[f.replace("{five}", str(dead.parent / "five.csv")) for f in flags], *outputs, "--json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert "Traceback" not in captured.err
    assert not out.exists() or not any(out.rglob("*"))


def test_fixed_stage_times_report_no_flops_rate_or_mfu(capsys: pytest.CaptureFixture[str]) -> None:
    # Fixed F/B times have no FLOPs behind them: GPT-2 at 100/200 us per stage would read as 130% MFU.
    args = ["train", *GPT2, "--pp", "4", "--schedule", "gpipe", "--microbatches", "4", "--stage-time-us", "100,200"]
    assert main([*args, "--p2p-time-us", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tflops_per_gpu"] is None and out["hardware_tflops_per_gpu"] is None and out["mfu"] is None
    assert out["step_time_ns"] == 2_100_000 and out["model_flops"] > 0
    assert main([*args, "--p2p-time-us", "0"]) == 0
    assert "TFLOPs/GPU     n/a: --stage-time-us fixes the compute times" in capsys.readouterr().out


def test_astra_sim_backend_replays_the_written_traces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A stand-in binary that reports both ranks' finish lines (it checks the driver, not the simulation).
    monkeypatch.setenv("ASTRA_SIM_BIN", str(good_binary(tmp_path / "bin" / "astra")))
    args = ["train", *GPT2, "--pp", "2", "--microbatches", "2", "--seq-len", "128", "--backend", "astra-sim"]
    assert main([*args, "--out-dir", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["step_time_ns"] == max(SMALL_FINISH_NS)
    busy = [finish - exposed for finish, exposed in zip(SMALL_FINISH_NS, SMALL_EXPOSED_NS, strict=True)]
    assert out["bubble_fraction"] == pytest.approx(1 - sum(busy) / (2 * max(SMALL_FINISH_NS)))
    assert (tmp_path / "run" / "train.1.et").is_file() and (tmp_path / "run" / "network.yml").is_file()


def test_astra_sim_backend_timeline_turns_on_astra_sims_node_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # pipesim writes system.json itself, so it must set trace-enabled when a timeline is asked for (it was a
    # one-line error telling the user to edit the file pipesim had just written).
    monkeypatch.setenv("ASTRA_SIM_BIN", str(good_binary(tmp_path / "bin" / "astra")))
    args = ["train", *GPT2, "--pp", "2", "--microbatches", "2", "--seq-len", "128", "--backend", "astra-sim"]
    timeline = tmp_path / "step.json"
    assert main([*args, "--out-dir", str(tmp_path / "run"), "--timeline", str(timeline)]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "system.json").read_text())["trace-enabled"] == 1
    events = [e for e in json.loads(timeline.read_text())["traceEvents"] if e.get("ph") == "X"]
    assert {e["pid"] for e in events} >= {1, 2} and events
    assert main([*args, "--out-dir", str(tmp_path / "plain")]) == 0  # no timeline: ASTRA-Sim's log stays small
    capsys.readouterr()
    assert json.loads((tmp_path / "plain" / "system.json").read_text())["trace-enabled"] == 0


def test_timeline_has_every_simulated_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "step.json"
    args = ["train", *GPT2, "--pp", "2", "--schedule", "zb-h1", "--microbatches", "2", "--seq-len", "128"]
    png = tmp_path / "step.png"
    assert main([*args, "--timeline", str(path), "--timeline-png", str(png)]) == 0
    capsys.readouterr()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    events = json.loads(path.read_text())["traceEvents"]
    names = {event.get("name", "") for event in events}
    assert {"0F0.embedding..b5.down_proj", "1I1.cross_entropy.I..b6.input_layernorm.I"} <= names


def test_a_deadlocking_custom_schedule_names_its_actions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "stuck.csv"
    csv.write_text("0F0,0B0\n1B0,1F0\n")  # rank 1 waits for its own forward's gradient before running it
    assert main(["train", *GPT2, "--pp", "2", "--schedule-csv", str(csv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(csv) in err and "1B0" in err


@pytest.mark.skipif(not os.environ.get("ASTRA_SIM_BIN"), reason="set ASTRA_SIM_BIN to run the real ASTRA-Sim binary")
def test_real_astra_sim_finishes_the_step_like_the_builtin_engine(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", *GPT2, "--tp", "2", "--pp", "2", "--schedule", "1f1b", "--microbatches", "4", "--seq-len", "128"]
    assert main([*args, "--json"]) == 0
    builtin = json.loads(capsys.readouterr().out)
    assert main([*args, "--json", "--backend", "astra-sim"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert real["step_time_ns"] == pytest.approx(builtin["step_time_ns"], rel=1e-3)


def test_network_file_replaces_the_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def step_ns(bandwidth: float) -> int:
        network = tmp_path / f"net{bandwidth:g}.yml"
        network.write_text(
            f"topology: [ FullyConnected ]\nnpus_count: [ 2 ]\nbandwidth: [ {bandwidth} ]\nlatency: [ 1000.0 ]\n"
        )
        args = ["train", *GPT2, "--pp", "2", "--microbatches", "4", "--seq-len", "128", "--network", str(network)]
        assert main([*args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["step_time_ns"]

    assert step_ns(0.1) > step_ns(100.0)
    network = tmp_path / "net100.yml"
    assert main(["train", *GPT2, "--pp", "4", "--microbatches", "4", "--network", str(network)]) == 2
    assert "describes 2 NPUs but tp x pp x dp = 4" in capsys.readouterr().err


def test_representative_mode_still_writes_every_npus_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "rep"
    args = ["train", *GPT2, "--tp", "2", "--pp", "2", "--dp", "2", "--microbatches", "2", "--seq-len", "64"]
    assert main([*args, "--representative", "--out-dir", str(out_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["simulated_npus"] == 2
    assert len(list(out_dir.glob("train.*.et"))) == 8


def test_out_dir_is_written_whole_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "step"
    args = ["train", "--model", "gpt2", "--hardware", "A100-80G", "--pp", "2", "--schedule", "1f1b"]
    args += ["--microbatches", "2", "--microbatch-size", "1", "--seq-len", "128", "--out-dir", str(out)]
    assert main(args) == 0
    first = sorted(path.name for path in out.iterdir())
    assert "train.0.et" in first and "train.1.et" in first and "network.yml" in first
    assert main(args) == 0  # a previous step's folder is replaced
    assert sorted(path.name for path in out.iterdir()) == first
    (out / "notes.txt").write_text("mine")
    assert main(args) == 2
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
