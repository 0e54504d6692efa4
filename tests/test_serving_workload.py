"""Workloads (astra_driver.serving.workload and `pipesim workload`): LLMServingSim JSONL read back exactly, every bad
line refused with file, line and field, and the seeded generator's arrivals, lengths and shared prefixes."""

from __future__ import annotations

import json
import math
import statistics
from array import array
from pathlib import Path

import pytest

from astra_driver.cli import main
from astra_driver.serving import workload as workload_module
from astra_driver.serving.kv_cache import KVCacheManager
from astra_driver.serving.workload import WorkloadSpec, generate_workload, load_workload, write_workload_jsonl
from llm_converter.errors import PipesimError
from tests.conftest import REPO

EXAMPLE = REPO / "configs" / "workloads" / "example_trace.jsonl"


def _write(tmp_path: Path, *lines: str | bytes) -> Path:
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


GOOD = '{"input_toks": 4, "output_toks": 2, "arrival_time_ns": 100}'


def test_loads_the_bundled_example():
    requests = load_workload(EXAMPLE)
    assert 10 <= len(requests) <= 16
    assert all(r.input_token_ids is not None and len(r.input_token_ids) == r.input_tokens for r in requests)
    assert [r.arrival_ns for r in requests] == sorted(r.arrival_ns for r in requests)
    # Its requests share prefixes, so prefix caching hits on it.
    firsts = [tuple(r.input_token_ids[:48]) for r in requests]
    assert len(set(firsts)) < len(firsts)


def test_loads_llmservingsim_trace(shared_dir):
    requests = load_workload(shared_dir / "workloads" / "example_trace.jsonl")
    assert len(requests) == 10
    first = requests[0]
    assert (first.request_id, first.input_tokens, first.output_tokens, first.arrival_ns) == (0, 10, 70, 46926808)
    assert tuple(first.input_token_ids) == tuple(range(1, 11)) and len(first.output_token_ids) == 70
    assert first.source.endswith("example_trace.jsonl:1")


def test_file_order_ids_and_stable_arrival_sort(tmp_path):
    path = _write(
        tmp_path,
        '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 300}',
        "",
        '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 100.9}',
        '{"input_toks": 3, "output_toks": 1, "arrival_time_ns": 100}',
    )
    requests = load_workload(path)
    assert [(r.request_id, r.arrival_ns, r.source.rsplit(":", 1)[1]) for r in requests] == [
        (1, 100, "3"),
        (2, 100, "4"),
        (0, 300, "1"),
    ]


def test_write_then_load_round_trips(tmp_path):
    spec = WorkloadSpec(num_requests=5, rate=3.0, input_len=20, output_len=7, length_dist="uniform", seed=3)
    requests = generate_workload(spec)
    path = tmp_path / "sub" / "out.jsonl"
    write_workload_jsonl(path, requests)
    back = load_workload(path)
    assert [(r.arrival_ns, r.input_tokens, r.output_tokens, r.input_token_ids) for r in back] == [
        (r.arrival_ns, r.input_tokens, r.output_tokens, r.input_token_ids) for r in requests
    ]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


@pytest.mark.parametrize(
    ("lines", "line_no", "names"),
    [
        ([GOOD, "{not json"], 2, ("not valid JSON",)),
        ([b"\xff\xfe{}"], 1, ("UTF-8",)),
        (["[1, 2]"], 1, ("a list where a JSON object goes",)),
        (['"text"'], 1, ("JSON object",)),
        (['{"output_toks": 2, "arrival_time_ns": 0}'], 1, ("input_toks", "missing")),
        (['{"input_toks": 2, "arrival_time_ns": 0}'], 1, ("output_toks", "missing")),
        (['{"input_toks": 2, "output_toks": 2}'], 1, ("arrival_time_ns", "missing")),
        (['{"input_toks": -3, "output_toks": 2, "arrival_time_ns": 0}'], 1, ("input_toks", "negative")),
        (['{"input_toks": 3, "output_toks": -1, "arrival_time_ns": 0}'], 1, ("output_toks", "negative")),
        (['{"input_toks": 0, "output_toks": 1, "arrival_time_ns": 0}'], 1, ("input_toks", "is 0")),
        (['{"input_toks": 2.5, "output_toks": 1, "arrival_time_ns": 0}'], 1, ("input_toks", "whole number")),
        (['{"input_toks": "12", "output_toks": 1, "arrival_time_ns": 0}'], 1, ("input_toks", "not a number")),
        (['{"input_toks": true, "output_toks": 1, "arrival_time_ns": 0}'], 1, ("input_toks",)),
        ([GOOD, '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": "soon"}'], 2, ("arrival_time_ns", "number")),
        (['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": null}'], 1, ("arrival_time_ns",)),
        (['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": -5}'], 1, ("arrival_time_ns", "before time 0")),
        (['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1]}'], 1, ("input_tok_ids",)),
        (
            ['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1, "a"]}'],
            1,
            ("input_tok_ids",),
        ),
        (['{"input_toks": 1, "output_toks": 2, "arrival_time_ns": 0, "output_tok_ids": [5]}'], 1, ("output_tok_ids",)),
        (['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1, true]}'], 1, ("tok_ids",)),
        (['{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": "ab"}'], 1, ("tok_ids",)),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, lines, line_no, names):
    path = _write(tmp_path, *lines)
    with pytest.raises(PipesimError) as info:
        load_workload(path)
    message = str(info.value)
    assert f"{path}:{line_no}: " in message
    assert "\n" not in message
    for name in names:
        assert name in message


def test_empty_and_unreadable_datasets(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(PipesimError, match="empty.jsonl: the workload holds no requests"):
        load_workload(empty)
    with pytest.raises(PipesimError, match="missing.jsonl: cannot read"):
        load_workload(tmp_path / "missing.jsonl")
    with pytest.raises(PipesimError, match="cannot read"):
        load_workload(tmp_path)  # a folder


def test_generator_is_seeded_and_deterministic():
    spec = WorkloadSpec(num_requests=50, rate=20.0, length_dist="lognormal", shared_prefix_groups=3, prefix_len=20)
    first, again = generate_workload(spec), generate_workload(spec)
    assert [(r.arrival_ns, r.input_token_ids, r.output_tokens) for r in first] == [
        (r.arrival_ns, r.input_token_ids, r.output_tokens) for r in again
    ]
    other = generate_workload(WorkloadSpec(**{**spec.__dict__, "seed": 1}))
    assert [r.arrival_ns for r in other] != [r.arrival_ns for r in first]


def _gaps_s(requests) -> list[float]:
    times = [0] + [r.arrival_ns for r in requests]
    return [(b - a) / 1e9 for a, b in zip(times, times[1:], strict=False)]


def test_poisson_and_gamma_arrivals():
    n = 4000
    poisson = generate_workload(WorkloadSpec(num_requests=n, rate=10.0, input_len=4, output_len=1, token_ids=False))
    gaps = _gaps_s(poisson)
    assert poisson[0].arrival_ns > 0  # vLLM bench: the first request waits a gap too
    assert poisson[-1].arrival_ns == 400_000_000_000  # scaled so the last arrives at n / rate exactly
    assert statistics.fmean(gaps) == pytest.approx(0.1)
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.08)  # exponential: CV 1
    bursty = generate_workload(
        WorkloadSpec(num_requests=n, rate=10.0, arrival="gamma", burstiness=0.25, input_len=4, token_ids=False)
    )
    gaps = _gaps_s(bursty)
    assert bursty[-1].arrival_ns == 400_000_000_000
    assert statistics.stdev(gaps) / statistics.fmean(gaps) == pytest.approx(2.0, rel=0.12)  # CV = 1/sqrt(0.25)
    even = generate_workload(
        WorkloadSpec(num_requests=4, rate=2.0, arrival="gamma", burstiness=math.inf, input_len=4, token_ids=False)
    )
    assert [r.arrival_ns for r in even] == [500_000_000, 1_000_000_000, 1_500_000_000, 2_000_000_000]
    at_once = generate_workload(WorkloadSpec(num_requests=3, input_len=4, token_ids=False))
    assert [r.arrival_ns for r in at_once] == [0, 0, 0]  # rate inf


def test_length_distributions():
    fixed = generate_workload(WorkloadSpec(num_requests=5, input_len=33, output_len=7, token_ids=False))
    assert {(r.input_tokens, r.output_tokens) for r in fixed} == {(33, 7)}
    uniform = generate_workload(
        WorkloadSpec(num_requests=500, input_len=100, output_len=10, length_dist="uniform", range_ratio=0.2)
    )
    assert min(r.input_tokens for r in uniform) >= 80 and max(r.input_tokens for r in uniform) <= 120
    assert all(len(r.input_token_ids) == r.input_tokens for r in uniform)
    lognormal = generate_workload(
        WorkloadSpec(num_requests=4000, input_len=500, output_len=200, length_dist="lognormal", token_ids=False)
    )
    assert statistics.fmean(r.input_tokens for r in lognormal) == pytest.approx(500, rel=0.05)
    assert statistics.fmean(r.output_tokens for r in lognormal) == pytest.approx(200, rel=0.05)
    assert min(r.output_tokens for r in lognormal) >= 1


def test_lengths_resampled_from_a_trace():
    source = {(r.input_tokens, r.output_tokens) for r in load_workload(EXAMPLE)}
    requests = generate_workload(WorkloadSpec(num_requests=40, rate=5.0, lengths_from=EXAMPLE, seed=2))
    assert {(r.input_tokens, r.output_tokens) for r in requests} <= source
    assert len({(r.input_tokens, r.output_tokens) for r in requests}) > 1


def test_shared_prefix_groups_hit_the_prefix_cache():
    spec = WorkloadSpec(num_requests=30, input_len=60, output_len=4, shared_prefix_groups=2, prefix_len=40, seed=4)
    requests = generate_workload(spec)
    prefixes = {tuple(r.input_token_ids[:40]) for r in requests}
    assert len(prefixes) == 2
    assert len({tuple(r.input_token_ids[40:]) for r in requests}) == 30  # the rest of each prompt is its own
    a = requests[0]
    b = next(r for r in requests[1:] if r.input_token_ids[:40] == a.input_token_ids[:40])
    kv = KVCacheManager(100, block_size=16)
    kv.allocate_slots(a, a.input_tokens)
    assert kv.get_computed_blocks(b)[1] == 32  # 40 shared tokens, 16-token blocks
    short = generate_workload(
        WorkloadSpec(num_requests=4, input_len=10, output_len=1, shared_prefix_groups=1, prefix_len=40)
    )
    assert {r.input_tokens for r in short} == {41}  # raised so every prompt has a token of its own


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"num_requests": 0}, "--num-requests"),
        ({"rate": 0.0}, "--rate"),
        ({"rate": math.nan}, "--rate"),
        ({"arrival": "uniform"}, "--arrival"),
        ({"arrival": "gamma", "burstiness": 0.0}, "--burstiness"),
        ({"burstiness": 0.5}, "--burstiness"),
        ({"length_dist": "normal"}, "--length-dist"),
        ({"input_len": 0}, "--input-len"),
        ({"range_ratio": 1.0}, "--range-ratio"),
        ({"shared_prefix_groups": 2}, "--prefix-len"),
        ({"shared_prefix_groups": 2, "prefix_len": 8, "token_ids": False}, "--no-token-ids"),
    ],
)
def test_bad_generator_flags(changes, flag):
    with pytest.raises(PipesimError, match=flag):
        generate_workload(WorkloadSpec(**{"num_requests": 4, **changes}))


def test_cli_writes_the_file_and_reports(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    argv = ["workload", "-o", str(out), "--num-requests", "8", "--rate", "4", "--input-len", "32", "--seed", "9"]
    assert main(argv) == 0
    assert "8 requests" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["input_tok_ids"]) == r["input_toks"] == 32 for r in rows)
    data = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == data


def test_cli_bad_source_trace_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = _write(tmp_path, GOOD, '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": "x"}')
    out = tmp_path / "gen.jsonl"
    assert main(["workload", "-o", str(out), "--lengths-from", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2: arrival_time_ns" in err[0]
    assert not out.exists()


_ID_LINES = [
    '{"input_toks": 3, "output_toks": 2, "arrival_time_ns": 5, "input_tok_ids": [7,8,9]}',
    '{"input_toks": 3, "output_toks": 2, "arrival_time_ns": 5, "input_tok_ids": [7, 8, 9], "output_tok_ids": [4, 5]}',
    '{"input_tok_ids" : [1,2],"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [0, 31999]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [10, 01]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1,,2]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1,2,]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [-1,2]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1.0,2]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [true,2]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1 2]}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1  ,2]}',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [2147483648]}',
    '{"input_toks": 3, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1,2]}',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": []}',
    '{"input_toks": 2, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [1,2], "input_tok_ids": [3,4]}',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "note": "\\"input_tok_ids\\": [5]"}',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [5], "note": "]"}',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [5]',
    '[{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, "input_tok_ids": [5]}]',
    '{"input_toks": 1, "output_toks": 1, "arrival_time_ns": "x", "input_tok_ids": [5]}',
]


def _outcome(path):
    try:
        r = load_workload(path)[0]
    except PipesimError as exc:
        return str(exc)
    ids = [None if v is None else tuple(v) for v in (r.input_token_ids, r.output_token_ids)]
    return (r.input_tokens, r.output_tokens, r.arrival_ns, *ids)


@pytest.mark.parametrize("line", _ID_LINES)
def test_fast_token_id_parse_accepts_and_refuses_as_json_loads(tmp_path, monkeypatch, line):
    # load_workload parses plain id lists with numpy; every line must come out as json.loads alone makes it.
    path = _write(tmp_path, line)
    fast = _outcome(path)
    monkeypatch.setattr(workload_module, "_fast_row", lambda raw: None)
    assert fast == _outcome(path)


def test_loaded_and_generated_ids_are_compact_int32_arrays(shared_dir):
    loaded = load_workload(shared_dir / "workloads" / "example_trace.jsonl")[0]
    generated = generate_workload(WorkloadSpec(num_requests=1, input_len=9, shared_prefix_groups=1, prefix_len=4))[0]
    for ids in (loaded.input_token_ids, loaded.output_token_ids, generated.input_token_ids):
        assert isinstance(ids, array) and ids.typecode == "i" and ids.itemsize == 4
    assert list(loaded.input_token_ids) == list(range(1, 11)) and len(generated.input_token_ids) == 9
