"""Serving metrics on small hand-computed runs: the per-request CSV (LLMServingSim's columns and definitions),
the interval log (the seed's line), and the summary (vllm bench serve's definitions)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from astra_driver.serving.metrics import (
    CSV_COLUMNS,
    IntervalLog,
    IterationRecord,
    format_rate,
    interval_log_path,
    itl_ns,
    queuing_delay_ns,
    summarize,
    summarize_requests,
    tpot_ns,
    tpot_ns_floor,
    ttft_ns,
    write_interval_csv,
    write_requests_csv,
)
from astra_driver.serving.request import Request, RequestStatus
from astra_driver.serving.scheduler import BatchEntry, ScheduledBatch, SchedulerStats
from llm_converter.memory import MEM_GB

MS = 1_000_000
S = 1_000_000_000


def finished(rid, instance, arrival, scheduled, tokens, inp, preemptions=0) -> Request:
    r = Request(request_id=rid, arrival_ns=arrival, input_tokens=inp, output_tokens=len(tokens), instance_id=instance)
    r.status = RequestStatus.FINISHED
    r.first_scheduled_ns = scheduled
    r.token_times_ns = list(tokens)
    r.num_generated = len(tokens)
    r.finish_ns = tokens[-1]
    r.num_preemptions = preemptions
    return r


@pytest.fixture
def run() -> list[Request]:
    # A: arrives at 1 ms, first scheduled at 2 ms, tokens at 5, 7, 10, 11 ms.
    a = finished(0, 0, 1 * MS, 2 * MS, [5 * MS, 7 * MS, 10 * MS, 11 * MS], inp=10)
    # B: one output token only (no TPOT), arrives at 0.
    b = finished(1, 1, 0, 0, [3 * MS], inp=20)
    # C: preempted once; gaps of 2.000001 and 1.499999 ms.
    c = finished(2, 0, 2 * MS, 3 * MS, [6 * MS, 8 * MS + 1, 9_500_000], inp=5, preemptions=1)
    return [a, b, c]


def test_per_request_definitions(run: list[Request]) -> None:
    a, b, c = run
    assert ttft_ns(a) == 4 * MS and ttft_ns(b) == 3 * MS and ttft_ns(c) == 4 * MS
    assert queuing_delay_ns(a) == 1 * MS and queuing_delay_ns(c) == 1 * MS
    assert itl_ns(a) == [2 * MS, 3 * MS, 1 * MS] and itl_ns(b) == [] and itl_ns(c) == [2_000_001, 1_499_999]
    # vLLM bench: (E2EL - TTFT) / (output - 1), first token excluded; none for one output token.
    assert tpot_ns(a) == 2 * MS and tpot_ns(b) is None and tpot_ns(c) == 1_750_000
    # LLMServingSim's column: integer floor division, 0 for one output token.
    assert tpot_ns_floor(a) == 2 * MS and tpot_ns_floor(b) == 0
    odd = finished(3, 0, 0, 0, [1, 3, 4, 10], inp=1)  # (10 - 1) // 3 = 3, the float is 3.0
    assert tpot_ns_floor(odd) == 3 and tpot_ns(odd) == 3.0
    odd2 = finished(4, 0, 0, 0, [1, 2, 9], inp=1)  # (9 - 1) // 2 = 4 exactly; (9-1)/2 = 4.0
    assert tpot_ns_floor(odd2) == 4
    odd3 = finished(5, 0, 0, 0, [2, 3, 7], inp=1)  # (7 - 2) // 2 = 2, float 2.5
    assert tpot_ns_floor(odd3) == 2 and tpot_ns(odd3) == 2.5


def test_unfinished_request_is_refused() -> None:
    r = Request(request_id=7, arrival_ns=0, input_tokens=3, output_tokens=2)
    with pytest.raises(ValueError, match="request 7 has not finished"):
        ttft_ns(r)


def test_requests_csv(run: list[Request], tmp_path: Path) -> None:
    unfinished = Request(request_id=9, arrival_ns=0, input_tokens=3, output_tokens=2, instance_id=0)
    path = tmp_path / "out" / "run.csv"
    write_requests_csv(path, [*run, unfinished], {0: "meta-llama/Llama-3.1-8B", 1: "Qwen/Qwen3-32B"})
    with path.open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0] == [
        "instance id", "request id", "model", "input", "output", "arrival", "end_time", "latency",
        "queuing_delay", "TTFT", "TPOT", "ITL",
    ]  # fmt: skip
    # Instance 0 first, in finish order (C at 9.5 ms before A at 11 ms), then instance 1; no unfinished row.
    assert rows[1:] == [
        ["0", "2", "meta-llama/Llama-3.1-8B", "5", "3", "2000000", "9500000", "7500000", "1000000", "4000000",
         "1750000", "[2000001, 1499999]"],
        ["0", "0", "meta-llama/Llama-3.1-8B", "10", "4", "1000000", "11000000", "10000000", "1000000", "4000000",
         "2000000", "[2000000, 3000000, 1000000]"],
        ["1", "1", "Qwen/Qwen3-32B", "20", "1", "0", "3000000", "3000000", "0", "3000000", "0", "[]"],
    ]  # fmt: skip
    assert [p.name for p in path.parent.iterdir()] == ["run.csv"]  # written atomically, no temporary left


def test_requests_csv_written_in_chunks_has_every_row_once(tmp_path: Path) -> None:
    """More rows than one encoded chunk (512): every request once, in order, each ITL list exact."""
    many = [finished(i, 0, i, i, [10 * i + 5, 10 * i + 7, 10 * i + 12], 4) for i in range(1300)]
    path = tmp_path / "many.csv"
    write_requests_csv(path, many, {0: "m"})
    with path.open() as f:
        rows = list(csv.reader(f))
    assert len(rows) == 1301 and tuple(rows[0]) == CSV_COLUMNS
    assert [row[1] for row in rows[1:]] == [str(i) for i in range(1300)]
    assert {row[11] for row in rows[1:]} == {"[2, 5]"}
    assert summarize_requests(many).itl.mean == pytest.approx(3.5 / 1e6)  # pooled gaps 2 and 5 ns, in ms


def test_summary_numbers(run: list[Request]) -> None:
    s = summarize_requests(run)
    assert s.completed == 3
    assert s.duration_s == pytest.approx(0.011)
    assert (s.total_input_tokens, s.total_output_tokens) == (35, 8)
    assert s.request_throughput == pytest.approx(3 / 0.011)
    assert s.output_throughput == pytest.approx(8 / 0.011)
    assert s.total_token_throughput == pytest.approx(43 / 0.011)
    # TTFT 4, 3, 4 ms.
    assert s.ttft.mean == pytest.approx(11 / 3) and s.ttft.median == 4.0
    assert s.ttft.std == pytest.approx((2 / 9) ** 0.5)
    assert dict(s.ttft.percentiles) == pytest.approx({90: 4.0, 99: 4.0})
    # TPOT over A and C only (B has one output token): 2 and 1.75 ms; linear percentiles.
    assert s.tpot.mean == pytest.approx(1.875) and s.tpot.median == pytest.approx(1.875)
    assert dict(s.tpot.percentiles) == pytest.approx({90: 1.975, 99: 1.9975})
    # ITL pools every gap: 2, 3, 1, 2.000001, 1.499999 ms.
    assert s.itl.mean == pytest.approx(1.9) and s.itl.median == pytest.approx(2.0)
    assert dict(s.itl.percentiles) == pytest.approx({90: 2.6000004, 99: 2.96000004})
    # E2EL 10, 3, 7.5 ms.
    assert s.e2el.mean == pytest.approx(20.5 / 3) and s.e2el.median == 7.5
    assert dict(s.e2el.percentiles) == pytest.approx({90: 9.5, 99: 9.95})
    assert s.max_concurrent_requests == 3  # at 2 ms A, B and C are all in flight
    assert s.max_output_tokens_per_s == 8.0  # every token within the first second
    assert s.preemptions == 1


def test_peak_concurrency_departure_before_arrival() -> None:
    # B leaves exactly when C arrives: half-open intervals, so never 2 at once.
    b = finished(0, 0, 0, 0, [5], inp=1)
    c = finished(1, 0, 5, 5, [9], inp=1)
    assert summarize_requests([b, c]).max_concurrent_requests == 1


def test_peak_output_tokens_buckets() -> None:
    # Tokens at 0.5 s, 1.2 s, 1.3 s, 1.9 s, 2.0 s from the first arrival: 1-s buckets hold 1, 3, 1.
    r = finished(0, 0, 0, 0, [S // 2, 12 * S // 10, 13 * S // 10, 19 * S // 10, 2 * S], inp=1)
    assert summarize_requests([r]).max_output_tokens_per_s == 3.0


def test_summary_of_result_json_and_format(run: list[Request]) -> None:
    stats0 = SchedulerStats(preemptions=1, prefix_query_tokens=15, prefix_hit_tokens=5, kv_blocks_in_use=0,
                            peak_kv_blocks=40, num_gpu_blocks=100)  # fmt: skip
    stats1 = SchedulerStats(preemptions=0, prefix_query_tokens=20, prefix_hit_tokens=2, kv_blocks_in_use=0,
                            peak_kv_blocks=10, num_gpu_blocks=50)  # fmt: skip
    records = [IterationRecord(0, i, 0, 1, 0, 1, 1, 0, 0) for i in range(3)] + [
        IterationRecord(1, 0, 0, 1, 0, 1, 1, 0, 0)
    ]
    result = SimpleNamespace(
        requests=run,
        iterations=records,
        instances=[
            SimpleNamespace(instance_id=0, num_npus=2, pp_size=2, max_inflight_batches=2, stats=stats0),
            SimpleNamespace(instance_id=1, num_npus=1, pp_size=1, max_inflight_batches=1, stats=stats1),
        ],
        sim_end_ns=11 * MS,
    )
    s = summarize(result)
    assert s.prefix_cache_hit_rate == pytest.approx(7 / 35)
    assert s.peak_kv_usage == pytest.approx(0.4)
    assert s.iterations == 4
    data = json.loads(s.to_json_text())
    assert data["completed"] == 3 and data["failed"] == 0
    assert data["total_input_tokens"] == 35 and data["total_output_tokens"] == 8
    assert data["mean_ttft_ms"] == pytest.approx(11 / 3) and data["p99_itl_ms"] == pytest.approx(2.96000004)
    assert data["median_e2el_ms"] == 7.5 and data["p90_tpot_ms"] == pytest.approx(1.975)
    assert data["preemptions"] == 1 and data["prefix_cache_hit_rate"] == pytest.approx(0.2)
    assert [i["max_inflight_batches"] for i in data["instances"]] == [2, 1]
    assert [i["iterations"] for i in data["instances"]] == [3, 1]
    assert [i["peak_kv_usage"] for i in data["instances"]] == [0.4, 0.2]

    lines = s.format().splitlines()
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[1] == "Successful requests:                     3         "
    assert "Benchmark duration (s):                  0.01      " in lines
    assert "Total generated tokens:                  8         " in lines
    assert "---------------Time to First Token----------------" in lines
    assert "Mean TTFT (ms):                          3.67      " in lines
    assert "-----Time per Output Token (excl. 1st token)------" in lines
    assert "P90 TPOT (ms):                           1.98      " in lines
    assert "P99 ITL (ms):                            2.96      " in lines
    assert "Median E2EL (ms):                        7.50      " in lines
    assert "Prefix cache hit rate (%):               20.00     " in lines
    assert "Instance 0 max in-flight batches:        2 (pp 2)  " in lines
    assert lines[-1] == "=" * 50


def test_record_for_batch_counts_prompt_and_output_tokens() -> None:
    requests = {
        0: Request(request_id=0, arrival_ns=0, input_tokens=300, output_tokens=5),
        1: Request(request_id=1, arrival_ns=0, input_tokens=50, output_tokens=5, num_cached_prompt_tokens=32),
        2: Request(request_id=2, arrival_ns=0, input_tokens=60, output_tokens=20),
    }
    batch = ScheduledBatch(
        batch_id=7,
        scheduled_ns=100,
        entries=(
            BatchEntry(0, num_new_tokens=100, num_context_tokens=0, is_prefill=True, samples_token=False),
            BatchEntry(1, num_new_tokens=18, num_context_tokens=32, is_prefill=True, samples_token=True),
            BatchEntry(2, num_new_tokens=1, num_context_tokens=70, is_prefill=False, samples_token=True),
        ),
    )
    rec = IterationRecord.for_batch(0, batch, 100, 900, kv_blocks_in_use=12, npu_mem_bytes=5, requests=requests)
    # Chunk 100 + the completing chunk's 18 plus its 32 cached prompt tokens; two sampled tokens.
    assert (rec.prefill_tokens, rec.decode_tokens, rec.num_seqs) == (150, 2, 3)
    assert (rec.batch_id, rec.start_ns, rec.end_ns, rec.kv_blocks_in_use) == (7, 100, 900, 12)


def test_format_rate() -> None:
    assert [format_rate(x) for x in (0, 540, 999.4, 999.6, 1449, 1450.1, 56_700, 2_340_000)] == [
        "0", "540", "999", "1.0k", "1.4k", "1.5k", "56.7k", "2.3M",
    ]  # fmt: skip


def rec(end_ns, prefill, decode, seqs, mem, instance=0) -> IterationRecord:
    return IterationRecord(instance, 0, 0, end_ns, prefill, decode, seqs, 0, mem)


def test_interval_log_lines_and_rows(tmp_path: Path) -> None:
    lines: list[str] = []
    log = IntervalLog(1 * S, lines.append, idle_npu_mem_bytes=[8 * MEM_GB])
    log.observe(rec(S // 2, 1000, 1, 1, 10 * MEM_GB))
    log.observe(rec(1 * S, 400, 2, 2, 11 * MEM_GB))  # on the boundary: belongs to (0, 1]
    log.observe(rec(5 * S // 2, 0, 540, 8, 44 * MEM_GB))  # (1, 2] had nothing
    log.close(3 * S)
    assert lines == [
        "[INFO] step=2 batch=2 prompt_t=1.4k tok/s decode_t=3 tok/s npu_mem=11.0 GB",
        "[INFO] step=2 batch=0 prompt_t=0 tok/s decode_t=0 tok/s npu_mem=11.0 GB",
        "[INFO] step=3 batch=8 prompt_t=0 tok/s decode_t=540 tok/s npu_mem=44.0 GB",
    ]
    assert [(r.start_ns, r.end_ns, r.partial) for r in log.rows] == [
        (0, S, False),
        (S, 2 * S, False),
        (2 * S, 3 * S, False),
    ]
    path = interval_log_path(tmp_path / "pp2_run.csv")
    assert path.name == "pp2_run.log.csv"
    write_interval_csv(path, log.rows)
    with path.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["time_s", "step", "prompt_tokens", "decode_tokens", "prompt_tok_s", "decode_tok_s", "partial",
                       "inst0_batch", "inst0_npu_mem_bytes", "inst0_kv_blocks"]  # fmt: skip
    assert rows[1] == ["1", "2", "1400", "3", "1400", "3", "0", "2", str(11 * MEM_GB), "0"]
    assert rows[3] == ["3", "3", "0", "540", "0", "540", "0", "8", str(44 * MEM_GB), "0"]


def test_interval_log_partial_tail_and_idle_memory() -> None:
    lines: list[str] = []
    log = IntervalLog(1 * S, lines.append, idle_npu_mem_bytes=[8 * MEM_GB])
    log.close(S // 4)  # nothing ran: weights only, rates over the 0.25 s the run lasted
    assert lines == ["[INFO] step=0 batch=0 prompt_t=0 tok/s decode_t=0 tok/s npu_mem=8.0 GB"]
    log = IntervalLog(1 * S, lines.append)
    log.observe(rec(S + S // 2, 0, 540, 8, 44 * MEM_GB))
    log.close(S + 6 * S // 10)
    assert log.rows[-1].partial and log.rows[-1].decode_tok_s == pytest.approx(900.0)
    assert lines[-1] == "[INFO] step=1 batch=8 prompt_t=0 tok/s decode_t=900 tok/s npu_mem=44.0 GB"


def test_interval_log_npu_mem_is_gib() -> None:
    """npu_mem prints GB of 2^30 bytes, the unit of mem_size and of every memory GB pipesim prints: 44e9 bytes
    are 44e9 / 2^30 = 40.98 GB, and an RTXPRO6000's mem_size 96 is 96.0 GB."""
    lines: list[str] = []
    log = IntervalLog(S, lines.append)
    log.observe(rec(S // 2, 0, 1, 1, 44 * 10**9))
    log.close(S)
    assert lines[-1].endswith("npu_mem=41.0 GB")
    lines.clear()
    log = IntervalLog(S, lines.append)
    log.observe(rec(S // 2, 0, 1, 1, 96 * 2**30))
    log.close(S)
    assert lines[-1].endswith("npu_mem=96.0 GB")


def test_interval_log_several_instances() -> None:
    lines: list[str] = []
    log = IntervalLog(S, lines.append, num_instances=2)
    log.observe(rec(S // 10, 2000, 300, 6, round(63.2 * MEM_GB), instance=0))
    log.observe(rec(S // 5, 500, 560, 4, round(63.1 * MEM_GB), instance=1))
    log.close(S)
    assert lines == [
        "[INFO] step=2 inst0_batch=6 inst1_batch=4 prompt_t=2.5k tok/s decode_t=860 tok/s npu_mem=[63.2 GB, 63.1 GB]"
    ]


def test_progress_bar_only_on_a_terminal() -> None:
    import io

    from astra_driver.serving.progress import ServingProgress

    quiet = io.StringIO()  # not a terminal: no bar, nothing written
    with ServingProgress(total_requests=10, stream=quiet) as progress:
        assert not progress.enabled
        progress.update(5, 2 * S)
    assert quiet.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    with ServingProgress(total_requests=10, stream=term) as progress:
        assert progress.enabled
        for done in range(11):
            progress.update(done, done * S)
    assert term.getvalue() != ""  # rich drew (and, transient, cleared) the bar
