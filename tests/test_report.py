"""`pipesim report`: every PNG written and sane, CDF points equal to the CSV's sorted values, the compare table's
relative errors exact for a hand-made pair (a pipesim CSV against a vllm bench result JSON), bad inputs refused
with one line naming the file and the column or key."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from astra_driver.cli import main
from astra_driver.report.plots import (
    cdf_points,
    cdf_series,
    compare_rows,
    distinct_label,
    load_compare,
    load_interval_log,
    load_run_csv,
    tokens_per_interval,
    write_run_report,
)
from astra_driver.serving.metrics import IntervalLog, IterationRecord, write_interval_csv

REPO = Path(__file__).resolve().parents[1]
HEADER = "instance id,request id,model,input,output,arrival,end_time,latency,queuing_delay,TTFT,TPOT,ITL\n"
MS = 1_000_000
S = 1_000_000_000

# Three requests, by hand: (input, output, arrival, TTFT, ITL gaps); latency = TTFT + sum(gaps).
REQUESTS = [
    (100, 3, 0, 10 * MS, [4 * MS, 6 * MS]),
    (50, 1, 1 * S, 30 * MS, []),
    (80, 2, 2 * S, 20 * MS, [8 * MS]),
]


def _write_run(path: Path, requests=REQUESTS) -> Path:
    lines = [HEADER]
    for i, (inp, out, arrival, ttft, gaps) in enumerate(requests):
        latency = ttft + sum(gaps)
        tpot = (latency - ttft) // (out - 1) if out > 1 else 0
        itl = '"[' + ", ".join(str(g) for g in gaps) + ']"'
        lines.append(f"0,{i},m,{inp},{out},{arrival},{arrival + latency},{latency},0,{ttft},{tpot},{itl}\n")
    path.write_text("".join(lines))
    return path


def _write_log(run_csv: Path, kv: bool = True) -> Path:
    """Two 1 s intervals and a partial one, written by the serving run's own writer."""
    log = IntervalLog(S, num_instances=1, idle_npu_mem_bytes=[8 * 2**30])
    log.observe(IterationRecord(0, 0, 0, S // 2, 100, 1, 1, 7, 8 * 2**30 + 7 * 2**20))
    log.observe(IterationRecord(0, 1, S // 2, 3 * S // 2, 80, 2, 2, 12, 8 * 2**30 + 12 * 2**20))
    log.close(2 * S + S // 10)
    path = run_csv.with_name(run_csv.stem + ".log.csv")
    write_interval_csv(path, log.rows)
    if not kv:
        rows = list(csv.reader(path.open()))
        path.write_text("".join(",".join(r[:-1]) + "\n" for r in rows))
    return path


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_cdf_points_are_the_csv_sorted_values(tmp_path: Path) -> None:
    run = load_run_csv(_write_run(tmp_path / "run.csv"))
    with (tmp_path / "run.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    series = cdf_series(run)
    assert series["ttft"][0] == sorted(int(r["TTFT"]) / MS for r in rows) == [10.0, 20.0, 30.0]
    assert series["ttft"][1] == [1 / 3, 2 / 3, 1.0]
    assert series["e2el"][0] == sorted(int(r["latency"]) / MS for r in rows) == [20.0, 28.0, 30.0]
    # vllm bench's TPOT (E2EL - TTFT) / (output - 1), requests with one output token left out.
    assert series["tpot"][0] == [5.0, 8.0]
    assert series["itl"][0] == [4.0, 6.0, 8.0]  # every gap of every request, pooled
    assert cdf_points([3, 1, 2]) == ([1, 2, 3], [1 / 3, 2 / 3, 1.0])


def test_interval_log_saves_kv_blocks_and_the_report_reads_them(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run.csv")
    series = load_interval_log(_write_log(run))
    assert series.edges_s == (0.0, 1.0, 2.0, 2.1)
    assert series.kv_blocks == ((7, 12, 12),)  # state after the last iteration, kept through idle intervals
    assert series.batch == ((1, 2, 0),)
    assert series.prompt_tok_s == (100.0, 80.0, 0.0)
    # A log written before KV blocks were saved still draws (memory only).
    series = load_interval_log(_write_log(run, kv=False))
    assert series.kv_blocks is None and series.npu_mem_bytes[0][0] == 8 * 2**30 + 7 * 2**20


def _vllm_result(path: Path, **scalars: float) -> Path:
    """A vllm bench serve --save-result JSON (vllm/benchmarks/serve.py keys): 3 requests, one failed."""
    data = {
        "duration": 2.5,
        "completed": 2,
        "failed": 1,
        "request_throughput": 0.8,
        "output_throughput": 2.0,
        "total_token_throughput": 60.0,
        "input_lens": [100, 50, 80],
        "output_lens": [3, 0, 2],
        "ttfts": [0.016, 0.0, 0.024],
        "itls": [[0.004, 0.004], [], [0.010]],
        "latencies": [0.024, 0.0, 0.034],
        "errors": ["", "timeout", ""],
        "mean_ttft_ms": 16.0,
        "median_ttft_ms": 20.0,
        "p99_ttft_ms": 23.92,
        "mean_e2el_ms": 29.0,
        **scalars,
    }
    path.write_text(json.dumps(data))
    return path


def test_compare_relative_errors_exact_for_a_hand_made_pair(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run.csv")
    _write_log(run)
    vllm = _vllm_result(tmp_path / "vllm.json", start_times=[10.0, 11.0, 12.0])  # its tokens join throughput.png
    lines: list[str] = []
    out = tmp_path / "out"
    written = write_run_report(run, out, compare=vllm, labels=["pipesim", "vLLM"], emit=lines.append)
    names = [p.name for p in written]
    assert names == [
        "ttft_cdf.png",
        "tpot_cdf.png",
        "itl_cdf.png",
        "e2el_cdf.png",
        "throughput.png",
        "batch_size.png",
        "kv_usage.png",
        "compare.csv",
        "compare_table.png",
        "summary.json",
    ]
    for path in written:
        if path.suffix == ".png":
            width, height = _png_size(path)
            assert 800 <= width <= 1300 and 400 <= height <= 1100, (path.name, width, height)
            assert path.stat().st_size > 10_000  # drawn, not blank
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    with (tmp_path / "out/compare.csv").open() as handle:
        table = {r["metric"]: r for r in csv.DictReader(handle)}
    # Run side by hand: TTFTs 10, 30, 20 ms; E2ELs 20, 30, 28 ms; duration 2.028 s; 3 requests, 6 output tokens.
    duration = 2.028
    expected_run = {
        "completed": 3,
        "duration": duration,
        "request_throughput": 3 / duration,
        "output_throughput": 6 / duration,
        "total_token_throughput": (230 + 6) / duration,
        "mean_ttft_ms": 20.0,
        "median_ttft_ms": 20.0,
        "mean_e2el_ms": 26.0,
    }
    # Reference side: vLLM's own scalars where saved; P90 TTFT (not saved) from its successful requests' TTFTs.
    expected_ref = {
        "completed": 2,
        "duration": 2.5,
        "request_throughput": 0.8,
        "output_throughput": 2.0,
        "total_token_throughput": 60.0,
        "mean_ttft_ms": 16.0,
        "median_ttft_ms": 20.0,
        "mean_e2el_ms": 29.0,
    }
    for key, ref in expected_ref.items():
        row = table[key]
        assert float(row["run"]) == pytest.approx(expected_run[key], rel=1e-12)
        assert float(row["compare"]) == ref
        assert float(row["relative_error"]) == (float(row["run"]) - ref) / ref
    assert float(table["mean_ttft_ms"]["relative_error"]) == 0.25
    assert float(table["median_ttft_ms"]["relative_error"]) == 0.0
    assert float(table["completed"]["relative_error"]) == 0.5
    assert float(table["p90_ttft_ms"]["compare"]) == pytest.approx(np.percentile([16.0, 24.0], 90))
    # vLLM TPOT from its lists: (latency - ttft) / (output - 1) = (0.024 - 0.016) / 2 s and (0.034 - 0.024) / 1 s.
    assert float(table["mean_tpot_ms"]["compare"]) == pytest.approx((4.0 + 10.0) / 2)
    assert float(table["mean_itl_ms"]["compare"]) == pytest.approx((4 + 4 + 10) / 3)
    printed = "\n".join(lines)
    assert "pipesim" in printed and "vLLM" in printed and "+25.00%" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == names
    assert summary["compare"]["kind"] == "vllm" and summary["relative_errors"]["mean_ttft_ms"] == 0.25
    assert summary["run"]["metrics"]["total_output_tokens"] == 6
    # The failed request (errors[1]) is left out of the compare side's CDFs, as vllm's calculate_metrics does.
    assert cdf_series(load_compare(vllm))["ttft"][0] == [16.0, 24.0]


def test_compare_two_runs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run = load_run_csv(_write_run(tmp_path / "a/run.csv"))
    other = load_compare(_write_run(tmp_path / "b/run.csv", REQUESTS[:2]))
    assert other.kind == "pipesim" and other.intervals is None
    assert any("b/run.log.csv: not found" in note for note in other.notes)
    rows = {r.metric: r for r in compare_rows(run, other)}
    assert rows["completed"].relative_error == 0.5
    assert rows["mean_ttft_ms"].relative_error == (20.0 - 20.0) / 20.0
    assert rows["mean_e2el_ms"].relative_error == (26.0 - 25.0) / 25.0
    assert distinct_label(run, other).label == "run (compare)"  # same file stems, told apart in legends


def test_pipesim_run_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv_path = tmp_path / "pp2.csv"
    code = main(
        [
            "run",
            "--cluster-config",
            str(REPO / "configs/cluster/single_node_pp_instance.json"),
            "--dataset",
            str(REPO / "configs/workloads/example_trace.jsonl"),
            "--output",
            str(csv_path),
            "--log-interval",
            "0.5",
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["report", str(csv_path), "-o", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "wrote 8 files" in out
    series = load_interval_log(tmp_path / "pp2.log.csv")
    assert series.kv_blocks is not None and max(series.kv_blocks[0]) > 0
    for name in ("ttft_cdf", "tpot_cdf", "itl_cdf", "e2el_cdf", "throughput", "batch_size", "kv_usage"):
        _png_size(tmp_path / f"rep/{name}.png")


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("pipesim: error: ")
    return err


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    missing = tmp_path / "missing.csv"
    missing.write_text("instance id,request id,input,output,arrival,end_time,latency\n0,0,1,1,0,1,1\n")
    err = _error(capsys, ["report", str(missing), "-o", out])
    assert "missing.csv" in err and "TTFT" in err and "ITL" in err
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty.csv: empty" in _error(capsys, ["report", str(empty), "-o", out])
    header_only = tmp_path / "header.csv"
    header_only.write_text(HEADER)
    assert "header.csv: no requests" in _error(capsys, ["report", str(header_only), "-o", out])
    bad_value = _write_run(tmp_path / "bad.csv")
    bad_value.write_text(bad_value.read_text().replace(",10000000,", ",ten,", 1))
    assert "bad.csv:2: column TTFT: 'ten'" in _error(capsys, ["report", str(bad_value), "-o", out])

    run = _write_run(tmp_path / "run.csv")
    neither = tmp_path / "notes.txt"
    neither.write_text("just some text\n")
    err = _error(capsys, ["report", str(run), "-o", out, "--compare", str(neither)])
    assert "notes.txt: neither a pipesim run CSV" in err and "vllm bench serve" in err
    other_json = tmp_path / "other.json"
    other_json.write_text('{"duration": 1.0}')
    err = _error(capsys, ["report", str(run), "-o", out, "--compare", str(other_json)])
    assert "other.json" in err and "ttfts" in err
    short_list = _vllm_result(tmp_path / "short.json", itls=[[0.1]])
    err = _error(capsys, ["report", str(run), "-o", out, "--compare", str(short_list)])
    assert "short.json: key itls" in err

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = _error(capsys, ["report", str(run), "-o", str(a_file)])
    assert "a_file: exists and is not a folder" in err

    bad_log = _write_log(run)
    bad_log.write_text("time_s,step\n1,2\n")
    err = _error(capsys, ["report", str(run), "-o", out])
    assert "run.log.csv: missing column(s) prompt_tok_s" in err
    assert not (tmp_path / "out").exists()  # nothing written on any failure

    bad_log.unlink()
    err = _error(capsys, ["report", str(run), "-o", out, "--label", "a", "--label", "b"])
    assert "--label given twice without --compare" in err


def test_vllm_output_tokens_over_time_as_the_interval_log_counts_them(tmp_path: Path) -> None:
    # (start, end] intervals: a token exactly at 1.0 s belongs to the first.
    assert tokens_per_interval([0.5, 1.0, 1.2, 2.5], 1.0) == ([0.0, 1.0, 2.0, 3.0], [2.0, 1.0, 1.0])
    assert tokens_per_interval([0.1, 0.2, 0.3], 0.25) == ([0.0, 0.25, 0.5], [8.0, 4.0])
    vllm = load_compare(_vllm_result(tmp_path / "v.json", start_times=[100.0, 101.0, 102.0]))
    # start + TTFT, then each gap (vllm's own token clock), from the first successful request's start.
    assert vllm.output_token_times_s == pytest.approx((0.016, 0.020, 0.024, 2.024, 2.034))
    assert load_compare(_vllm_result(tmp_path / "w.json")).output_token_times_s is None  # no start_times
