"""`pipesim run/simulate --timeline`: per-NPU node events of every iteration, the iterations and request tracks,
the same file from a run and from its builtin replay, and nothing recorded when no timeline is asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.cli import main
from astra_driver.cluster_config import cluster_config_from_dict
from astra_driver.report.outputs import TimelineRequest
from astra_driver.report.timeline import TimeWindow
from astra_driver.serving.loop import ServingRunConfig, run_serving
from astra_driver.serving.request import Request
from astra_driver.serving.run_job import write_serving_timeline
from tests.test_serving_loop import PP2, TP1, PerTokenLatency, _document, _pd_document

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO / "configs/workloads/example_trace.jsonl"
PD = REPO / "configs/cluster/pd_llama8b_rtxpro6000.json"  # 1 prefill + 1 decode instance
INSTANCE_PID = 1 << 20  # first non-NPU process (report/timeline.py)


def _run(document: dict, requests: list[Request], record: bool = True):
    cluster = cluster_config_from_dict(document, source="test.json", dtype="float16")
    latency = {inst.index: PerTokenLatency() for inst in cluster.instances()}
    config = ServingRunConfig(
        cluster=cluster, requests=requests, latency_models=latency, num_gpu_blocks=1000, record_timeline=record
    )
    return run_serving(config)


def _timeline(result, tmp_path: Path, **flags) -> dict:
    path = tmp_path / "t.json"
    write_serving_timeline(TimelineRequest.from_flags(path, **flags), result, "test.json")
    return json.loads(path.read_text())


def _npu_events(document: dict, npu: int) -> list[dict]:
    return [e for e in document["traceEvents"] if e["ph"] == "X" and e["pid"] == npu + 1]


def _requests() -> list[Request]:
    return [Request(i, i * 40_000, 10 + 5 * i, 3) for i in range(4)]


def test_pp2_node_events_lie_in_their_batch_and_span_it(tmp_path: Path) -> None:
    """Per batch: stage 0 (NPU 0) issues its first node at the batch's launch, stage 1 (NPU 1) ends its last
    node when the batch's tokens exist; every event named "batch b: ..." lies in [start, end] of batch b."""
    result = _run(_document(PP2), _requests())
    document = _timeline(result, tmp_path)
    records = {r.batch_id: r for r in result.iterations}
    for npu in (0, 1):
        by_batch: dict[int, list[dict]] = {}
        for event in _npu_events(document, npu):
            batch = int(event["name"].split(":")[0].removeprefix("batch "))
            by_batch.setdefault(batch, []).append(event["args"])
        assert set(by_batch) == set(records)
        for batch, events in by_batch.items():
            record = records[batch]
            assert all(record.start_ns <= e["issue_ns"] <= e["end_ns"] <= record.end_ns for e in events)
            if npu == 0:
                assert min(e["issue_ns"] for e in events) == record.start_ns
            else:
                assert max(e["end_ns"] for e in events) == record.end_ns
    # Per NPU one compute node and one activation send/recv per batch (fused tp1 stages).
    assert len(_npu_events(document, 0)) == len(_npu_events(document, 1)) == 2 * len(records)
    sends = [e for e in _npu_events(document, 0) if e["cat"] == "COMM_SEND_NODE"]
    assert {e["args"]["peer"] for e in sends} == {1}
    # The iterations track: one span per batch, scheduled to tokens ready.
    spans = [e for e in document["traceEvents"] if e["pid"] == INSTANCE_PID and e.get("cat") == "iteration"]
    assert sorted((e["args"]["start_ns"], e["args"]["end_ns"]) for e in spans) == sorted(
        (r.start_ns, r.end_ns) for r in result.iterations
    )


def test_request_spans_run_from_arrival_to_finish_with_first_token(tmp_path: Path) -> None:
    requests = _requests()
    result = _run(_document(TP1), requests)
    document = _timeline(result, tmp_path)
    spans = {e["name"]: e["args"] for e in document["traceEvents"] if e.get("cat") == "request"}
    instants = {e["name"]: e["args"]["at_ns"] for e in document["traceEvents"] if e["ph"] == "i"}
    for r in requests:
        args = spans[f"request {r.request_id}"]
        assert (args["start_ns"], args["end_ns"]) == (r.arrival_ns, r.finish_ns)
        assert instants[f"request {r.request_id} first token"] == r.token_times_ns[0]
        # tp1, 32 layers of 1 us per token: the first token after the whole prompt's pass.
        assert r.token_times_ns[0] >= r.arrival_ns + 32 * r.input_tokens * 1000


def test_recording_changes_no_time_and_is_off_without_a_timeline() -> None:
    on = _run(_document(PP2), _requests(), record=True)
    off = _run(_document(PP2), _requests(), record=False)
    assert off.timeline is None and on.timeline is not None
    assert [(r.batch_id, r.start_ns, r.end_ns) for r in on.iterations] == [
        (r.batch_id, r.start_ns, r.end_ns) for r in off.iterations
    ]


def test_pd_kv_transfer_shows_on_the_cluster_npus(tmp_path: Path) -> None:
    """P/D: the KV send sits on NPU 0 (prefill instance), its recv on NPU 1 (decode), peers as cluster NPU ids."""
    request = Request(0, 0, 10, 3)
    result = _run(_pd_document(), [request])
    document = _timeline(result, tmp_path)
    (transfer,) = result.transfers
    (send,) = [e for e in _npu_events(document, 0) if e["name"].startswith("kv 0:")]
    (recv,) = [e for e in _npu_events(document, 1) if e["name"].startswith("kv 0:")]
    assert send["args"]["peer"] == 1 and recv["args"]["peer"] == 0
    assert send["args"]["issue_ns"] == transfer.start_ns and recv["args"]["end_ns"] == transfer.end_ns
    # Both instances' iterations have their own process.
    names = {e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"}
    assert {"NPU 0", "NPU 1", "instance 0", "instance 1"} <= names


def test_window_keeps_only_the_overlapping_nodes(tmp_path: Path) -> None:
    result = _run(_document(PP2), _requests())
    last = max(r.end_ns for r in result.iterations)
    cut = last // 2
    document = _timeline(result, tmp_path, window=f":{cut / 1000}")
    events = _npu_events(document, 0) + _npu_events(document, 1)
    assert events and all(e["args"]["issue_ns"] <= cut for e in events)
    full = _timeline(result, tmp_path)
    assert len(events) < len(_npu_events(full, 0) + _npu_events(full, 1))
    # The file says it was cut: events_total counts the whole run, events_kept what the window kept.
    other = document["otherData"]
    assert other["events_total"] == full["otherData"]["events_total"] > other["events_kept"]


@pytest.mark.parametrize("config", [PP2, PD], ids=["pp2", "pd"])
def test_run_and_builtin_simulate_write_the_same_timeline(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces, run_json, sim_json, png = (tmp_path / n for n in ("traces", "run.json", "sim.json", "run.png"))
    args = ["--cluster-config", str(config), "--dataset", str(DATASET), "--keep-traces", str(traces)]
    assert main(["run", *args, "--timeline", str(run_json), "--timeline-png", str(png)]) == 0
    assert main(["simulate", str(traces), "--timeline", str(sim_json), "--output", str(tmp_path / "sim.csv")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run_json}" in out and f"wrote {sim_json}" in out
    assert f"wrote {tmp_path / 'sim.csv'} (12 requests)" in out
    assert run_json.read_bytes() == sim_json.read_bytes()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads(run_json.read_text())
    assert document["otherData"]["events_kept"] == document["otherData"]["events_total"] > 0


def test_simulate_timeline_on_another_backend_is_refused_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = tmp_path / "traces"
    assert main(["run", "--cluster-config", str(TP1), "--dataset", str(DATASET), "--keep-traces", str(traces)]) == 0
    capsys.readouterr()
    code = main(["simulate", str(traces), "--backend", "astra-sim", "--timeline", str(tmp_path / "t.json")])
    err = capsys.readouterr().err
    assert code == 2 and "--timeline" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.json").exists()


def test_bad_timeline_flags_fail_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out.csv"
    args = ["run", "--cluster-config", str(PP2), "--dataset", str(DATASET), "--output", str(output)]
    assert main([*args, "--timeline", str(tmp_path / "t.json"), "--timeline-npus", "5"]) == 2
    assert "--timeline-npus" in capsys.readouterr().err
    assert main([*args, "--timeline", str(tmp_path / "t.json"), "--timeline-max-events", "0"]) == 2
    assert "--timeline-max-events" in capsys.readouterr().err
    assert not output.exists()


def _npu_view(document: dict) -> list[tuple]:
    return sorted(
        (e["pid"], e["name"], e["args"]["issue_ns"], e["args"]["end_ns"], e["args"].get("bytes"))
        for e in document["traceEvents"]
        if e["ph"] == "X" and e["pid"] < INSTANCE_PID
    )


def test_window_and_max_events_bound_what_is_replayed_yet_give_the_same_events(tmp_path: Path) -> None:
    """The recorder keeps only the launches the window and max-events need (an idle launch before the window
    drops the earlier ones) and replays them: the events equal those of a run recorded in full, cut after."""
    requests = [Request(i, i * 1_000_000, 10, 3) for i in range(8)]  # each done before the next arrives
    window = TimeWindow(2_500_000, 4_500_000)
    cluster = cluster_config_from_dict(_document(PP2), source="test.json", dtype="float16")

    def run(**timeline):
        latency = {inst.index: PerTokenLatency() for inst in cluster.instances()}
        fresh = [Request(r.request_id, r.arrival_ns, r.input_tokens, r.output_tokens) for r in requests]
        config = ServingRunConfig(
            cluster=cluster, requests=fresh, latency_models=latency, num_gpu_blocks=1000, record_timeline=True,
            **timeline,
        )  # fmt: skip
        return run_serving(config)

    full, bounded = run(), run(timeline_window=window)
    kept = sum(len(source.launches) for source in bounded.timeline._sources.values())
    assert kept < len(bounded.iterations) / 2  # only the launches around 2.5-4.5 ms
    flags = {"window": "2500:4500"}
    cut_full, cut_bounded = _timeline(full, tmp_path, **flags), _timeline(bounded, tmp_path, **flags)
    assert _npu_view(cut_bounded) == _npu_view(cut_full) != []
    assert cut_bounded["otherData"]["events_total"] == cut_full["otherData"]["events_total"]
    assert cut_bounded["otherData"]["events_kept"] == cut_full["otherData"]["events_kept"]
    # max_events: the replay stops adding launches once that many nodes finished; the N earliest are the same.
    limited = run(timeline_max_events=5)
    first_full, first_limited = _timeline(full, tmp_path, max_events=5), _timeline(limited, tmp_path, max_events=5)
    assert _npu_view(first_limited) == _npu_view(first_full)
    # The run itself stops keeping launches once max_events of its nodes finished: memory stays bounded.
    assert sum(len(s.launches) for s in limited.timeline._sources.values()) < len(limited.iterations) / 2
    assert sum(len(times) for times in limited.timeline.node_times()) < sum(len(t) for t in full.timeline.node_times())


def test_tp2_pp2_every_npu_has_each_batch_with_its_collectives(tmp_path: Path) -> None:
    """TP x PP: NPUs 0-1 (stage 0) start each batch at its launch, NPUs 2-3 (stage 1) end it when its tokens exist;
    the TP collectives appear with their kind, group and bytes."""
    result = _run(_document(REPO / "configs/cluster/tp2_pp2.json"), _requests()[:2])
    document = _timeline(result, tmp_path)
    records = {r.batch_id: r for r in result.iterations}
    for npu in range(4):
        events = _npu_events(document, npu)
        by_batch: dict[int, list[dict]] = {}
        for event in events:
            by_batch.setdefault(int(event["name"].split(":")[0].removeprefix("batch ")), []).append(event["args"])
        assert set(by_batch) == set(records)
        for batch, args in by_batch.items():
            if npu < 2:
                assert min(a["issue_ns"] for a in args) == records[batch].start_ns
            else:
                assert max(a["end_ns"] for a in args) == records[batch].end_ns
        collectives = [e["args"] for e in events if e["cat"] == "COMM_COLL_NODE"]
        assert all(a["bytes"] > 0 and a["group"] for a in collectives)
        kinds = {a["collective"] for a in collectives}
        # Stage 0: the embedding's and every block's all-reduces; stage 1 also gathers lm_head's logits.
        assert kinds == ({"ALL_REDUCE"} if npu < 2 else {"ALL_REDUCE", "ALL_GATHER"})
