"""Timelines: the Chrome trace of a replay checked event by event against what real ASTRA-Sim recorded
(conformance node_ticks), the filters for large runs, extra tracks, and the Gantt PNG at 8 and 128 NPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.cli import main
from astra_driver.report.gantt import category_of, draw_gantt
from astra_driver.report.outputs import TimelineRequest, write_timelines
from astra_driver.report.timeline import (
    Instant,
    NodeFacts,
    Span,
    TimeWindow,
    Track,
    build_timeline,
    node_facts,
    npu_pid,
    parse_npus,
    parse_window,
)
from llm_converter.chakra.reader import read_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import NodeType
from tests.conftest import CONFORMANCE
from tests.fixtures.fake_astra import SMALL_NODE_TICKS, good_binary, write_small_run
from tests.test_backends import needs_engine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLOT_OF = {
    NodeType.COMP_NODE: "compute",
    NodeType.COMM_SEND_NODE: "communication",
    NodeType.COMM_COLL_NODE: "communication",
    NodeType.COMM_RECV_NODE: "recv",
}


def _replay_flags(folder: Path) -> list[str]:
    flags = [
        f"--workload-configuration={folder / 'workload'}",
        f"--system-configuration={folder / 'system.json'}",
        f"--network-configuration={folder / 'network.yml'}",
        f"--remote-memory-configuration={folder / 'memory.json'}",
    ]
    if (folder / "comm_groups.json").is_file():
        flags.append(f"--comm-group-configuration={folder / 'comm_groups.json'}")
    return flags


def _complete_events(trace: dict, pid: int) -> list[dict]:
    return [event for event in trace["traceEvents"] if event["ph"] == "X" and event["pid"] == pid]


def _thread_names(trace: dict, pid: int) -> dict[int, str]:
    return {
        event["tid"]: event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] == "thread_name" and event["pid"] == pid
    }


def _assert_tracks_nest(trace: dict) -> None:
    """Events on one track never overlap (the viewers cannot draw events that overlap without nesting)."""
    by_track: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for event in trace["traceEvents"]:
        if event["ph"] == "X":
            start = round(event["ts"] * 1000)  # ns, as a viewer reads the microseconds back
            by_track.setdefault((event["pid"], event["tid"]), []).append((start, start + round(event["dur"] * 1000)))
    for intervals in by_track.values():
        intervals.sort()
        for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert start >= end


@needs_engine
@pytest.mark.parametrize("case", ["train_1f1b_4stages", "serving_tp2_pp2", "all_reduce_comm_groups"])
def test_replay_timeline_matches_astra_sims_node_ticks(case: str, tmp_path: Path, capsys) -> None:
    folder = CONFORMANCE / case
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    expected = json.loads((folder / "expected.json").read_text())
    out = tmp_path / "trace.json"
    assert main(["replay", *_replay_flags(folder), f"--timeline={out}"]) == 0, capsys.readouterr().err
    trace = json.loads(out.read_text())
    assert trace["displayTimeUnit"] == "ns"
    workload = read_workload(folder / "workload")
    names = {
        event["pid"]: event["args"]["name"]
        for event in trace["traceEvents"]
        if event["ph"] == "M" and event["name"] == "process_name"
    }
    assert names == {npu_pid(rank): f"NPU {rank}" for rank in range(expected["npus"])}
    for rank in range(expected["npus"]):
        events = _complete_events(trace, npu_pid(rank))
        # Exactly one event per node, at the ticks ASTRA-Sim printed (ts/dur in us; args hold the exact ns).
        ticks = {
            str(event["args"]["node_id"]): [event["args"]["issue_ns"], event["args"]["end_ns"]] for event in events
        }
        assert ticks == expected["node_ticks"][str(rank)]
        assert len(events) == len(ticks)
        threads = _thread_names(trace, npu_pid(rank))
        nodes = workload.graphs[rank].by_id()
        for event in events:
            node = nodes[event["args"]["node_id"]]
            assert round(event["ts"] * 1000) == event["args"]["issue_ns"]
            assert round(event["dur"] * 1000) == event["args"]["end_ns"] - event["args"]["issue_ns"]
            assert event["name"] == node.name
            assert event["args"]["type"] == NodeType(node.type).name == event["cat"]
            assert threads[event["tid"]].split(" #")[0] == SLOT_OF[node.type]
            if node.type == NodeType.COMM_SEND_NODE:
                assert (event["args"]["bytes"], event["args"]["peer"]) == (node.comm_size, node.comm_dst)
            elif node.type == NodeType.COMM_RECV_NODE:
                assert (event["args"]["bytes"], event["args"]["peer"]) == (node.comm_size, node.comm_src)
            elif node.type == NodeType.COMM_COLL_NODE:
                assert event["args"]["bytes"] == node.comm_size and "peer" not in event["args"]
    _assert_tracks_nest(trace)
    assert trace["otherData"]["events_total"] == trace["otherData"]["events_kept"] == workload.node_count()


def test_timeline_from_a_binarys_trace_lines(tmp_path: Path, capsys) -> None:
    """With a binary backend the times come from log.log (here a fake binary's, the small 2-NPU run)."""
    run = write_small_run(tmp_path / "run")
    binary = good_binary(tmp_path / "astra")
    out = tmp_path / "out" / "t.json"
    argv = ["replay", *_replay_flags(tmp_path / "run"), "--backend=astra-sim", f"--astra-sim-bin={binary}"]
    assert main([*argv, f"--logging-folder={run.logging_folder}", f"--timeline={out}"]) == 0, capsys.readouterr()
    trace = json.loads(out.read_text())
    got = sorted(
        (event["pid"] - 1, event["args"]["node_id"], event["name"], event["args"]["issue_ns"], event["args"]["end_ns"])
        for event in trace["traceEvents"]
        if event["ph"] == "X"
    )
    assert got == sorted((rank, node, name, issue, end) for rank, node, name, _, issue, end in SMALL_NODE_TICKS)
    send = next(event for event in trace["traceEvents"] if event["name"] == "send_to_1")
    assert (send["args"]["bytes"], send["args"]["peer"], send["args"]["tag"]) == (1 << 20, 1, 7)
    assert [p.name for p in out.parent.iterdir()] == ["t.json"]  # atomic: no temporary file left


# --- the generic API -------------------------------------------------------------------------------------


def _times() -> list[list[tuple[int, str, int, int, int]]]:
    # Rank 0: compute 0-100, a send 100-150; three recvs posted at once on rank 1 (overlapping: three lanes).
    return [
        [(0, "0F0.mlp", 4, 0, 100), (1, "send", 5, 100, 150)],
        [
            (0, "r0", 6, 0, 150),
            (1, "r1", 6, 0, 300),
            (2, "r2", 6, 10, 200),
            (3, "r3", 6, 150, 160),
            (4, "c", 4, 300, 400),
        ],
    ]


def test_overlapping_recvs_get_lanes_and_tracks_nest() -> None:
    timeline = build_timeline(_times())
    trace = timeline.to_json()
    threads = _thread_names(trace, npu_pid(1))
    lanes = {event["name"]: threads[event["tid"]] for event in timeline.events_of_npu(1)}
    # r3 starts when r0 ends (ends are exclusive): it reuses r0's lane.
    assert lanes == {"r0": "recv", "r1": "recv #2", "r2": "recv #3", "r3": "recv", "c": "compute"}
    _assert_tracks_nest(trace)


def test_window_npus_and_max_events() -> None:
    times = _times()
    windowed = build_timeline(times, window=TimeWindow(120, 155))
    kept = sorted(event["name"] for event in windowed.to_json()["traceEvents"] if event["ph"] == "X")
    # Kept: everything overlapping [120, 155] ns, uncut.
    assert kept == ["r0", "r1", "r2", "r3", "send"]
    assert windowed.to_json()["otherData"]["window_ns"] == [120, 155]
    only_one = build_timeline(times, npus=[1])
    assert {event["pid"] for event in only_one.trace_events} == {npu_pid(1)}
    limited = build_timeline(times, max_events=3)
    assert sorted(event["name"] for event in limited.trace_events if event["ph"] == "X") == ["0F0.mlp", "r0", "r1"]
    assert (limited.events_total, limited.events_kept) == (7, 3)


def test_parse_window_and_npus() -> None:
    assert parse_window("1.5:2000") == TimeWindow(1500, 2_000_000)
    assert parse_window(":10") == TimeWindow(None, 10_000) and parse_window("3:") == TimeWindow(3000, None)
    for bad, fragment in (("5", "expected START_US:END_US"), ("a:3", "'a' is not a number"), ("9:3", "before")):
        with pytest.raises(PipesimError, match=fragment):
            parse_window(bad)
    assert parse_npus("0-3,8, 10") == frozenset({0, 1, 2, 3, 8, 10})
    with pytest.raises(PipesimError, match="expected ranks and ranges"):
        parse_npus("0-x")


def test_extra_tracks_for_serving_and_training() -> None:
    """What a serving run adds (iterations per instance, request spans with instants) and a training run
    (actions on an NPU's own process)."""
    tracks = [
        Track("instance 0", "iterations", [Span("batch 0", 0, 120, {"prefill_tokens": 64}), Span("batch 1", 120, 400)]),
        Track(
            "requests",
            "requests",
            [Span("request 7", 0, 390), Span("request 8", 50, 300)],
            [Instant("request 7 first token", 120)],
        ),
        Track("NPU 0", "F/B/W", [Span("0F0", 0, 100, category="F")]),
    ]
    timeline = build_timeline(_times(), facts=[{1: NodeFacts(bytes=4096, peer=1)}, {}], tracks=tracks)
    trace = timeline.to_json()
    process = {e["args"]["name"]: e["pid"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert set(process) == {"NPU 0", "NPU 1", "instance 0", "requests"}
    batches = _complete_events(trace, process["instance 0"])
    assert [(e["name"], e["ts"], e["dur"], e["args"].get("prefill_tokens")) for e in batches] == [
        ("batch 0", 0, 0.12, 64),
        ("batch 1", 0.12, 0.28, None),
    ]
    requests = _complete_events(trace, process["requests"])
    assert sorted(_thread_names(trace, process["requests"])[e["tid"]] for e in requests) == ["requests", "requests #2"]
    (instant,) = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    assert (instant["ts"], instant["args"]["at_ns"]) == (0.12, 120)
    npu0 = _complete_events(trace, npu_pid(0))
    assert {_thread_names(trace, npu_pid(0))[e["tid"]] for e in npu0} == {"compute", "communication", "F/B/W"}
    send = next(e for e in npu0 if e["name"] == "send")
    assert (send["args"]["bytes"], send["args"]["peer"]) == (4096, 1)
    _assert_tracks_nest(trace)


def test_bad_output_paths_fail_before_the_run(tmp_path: Path, capsys) -> None:
    (tmp_path / "folder.json").mkdir()
    code = main(["replay", *_replay_flags(tmp_path / "nowhere"), f"--timeline={tmp_path / 'folder.json'}"])
    assert code == 2
    assert "folder.json: is a folder (given as --timeline)" in capsys.readouterr().err
    with pytest.raises(PipesimError, match="--timeline-npus: rank 5 is not in the run"):
        write_timelines(TimelineRequest(json_path=tmp_path / "t.json", npus=frozenset({5})), _times())
    assert not (tmp_path / "t.json").exists()


# --- the Gantt chart ----------------------------------------------------------------------------------------


def test_categories_from_names_and_types() -> None:
    assert [category_of(name, 4) for name in ("2B0.mlp", "1W3.attn", "COMP_NODE_F0", "COMP_NODE_B12", "mlp0")] == [
        "B",
        "W",
        "F",
        "B",
        "compute",
    ]
    assert [category_of("layer_backward_input", 4), category_of("wgrad_3", 4), category_of("fwd", 4)] == ["I", "W", "F"]
    assert [category_of("x", t) for t in (5, 6, 7, 2)] == ["send", "recv", "collective", "memory"]


def _pipeline_times(npus: int, microbatches: int) -> list[list[tuple[int, str, int, int, int]]]:
    """GPipe-shaped node times: rank r runs F of each microbatch after rank r-1, then the B's in reverse."""
    times = []
    for rank in range(npus):
        entries: list[tuple[int, str, int, int, int]] = []
        for mb in range(microbatches):
            start = (rank + mb) * 100
            entries.append((len(entries), f"{rank}F{mb}", 4, start, start + 100))
            entries.append((len(entries), f"send_f{mb}", 5, start + 100, start + 110))
        back = (npus + microbatches) * 100
        for mb in range(microbatches):
            start = back + (npus - rank + mb) * 200
            entries.append((len(entries), f"{rank}B{mb}", 4, start, start + 200))
        entries.append((len(entries), "grad_ar", 7, entries[-1][4], entries[-1][4] + 300))
        times.append(entries)
    return times


def test_gantt_png_at_8_and_128_npus(tmp_path: Path) -> None:
    small = tmp_path / "g8.png"
    assert draw_gantt(small, _pipeline_times(8, 4)) == 8  # one row per NPU
    assert small.read_bytes().startswith(PNG_MAGIC)
    large = tmp_path / "g128.png"
    assert draw_gantt(large, _pipeline_times(128, 4)) == 32  # 4 NPUs per row
    assert large.read_bytes().startswith(PNG_MAGIC)
    assert draw_gantt(tmp_path / "some.png", _pipeline_times(128, 2), npus=[0, 1, 2, 64], max_rows=2) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g128.png", "g8.png", "some.png"]


@needs_engine
def test_replay_timeline_png_and_window(tmp_path: Path, capsys) -> None:
    folder = CONFORMANCE / "train_1f1b_4stages"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    png, out = tmp_path / "g.png", tmp_path / "t.json"
    argv = ["replay", *_replay_flags(folder), f"--timeline-png={png}", f"--timeline={out}"]
    assert main([*argv, "--timeline-window=5000:6000", "--timeline-npus=1-2"]) == 0, capsys.readouterr().err
    assert png.read_bytes().startswith(PNG_MAGIC)
    expected = json.loads((folder / "expected.json").read_text())["node_ticks"]
    trace = json.loads(out.read_text())
    got = {(e["pid"] - 1, e["args"]["node_id"]) for e in trace["traceEvents"] if e["ph"] == "X"}
    want = {
        (rank, int(node))
        for rank in (1, 2)
        for node, (issue, end) in expected[str(rank)].items()
        if end >= 5_000_000 and issue <= 6_000_000
    }
    assert got == want and want


# --- a serving run's tracks ---------------------------------------------------------------------------------


def test_serving_tracks_of_a_real_serving_run() -> None:
    """What `pipesim run --timeline` adds: per instance its batches and its requests, at the loop's own times."""
    from astra_driver.cluster_config import load_cluster_config
    from astra_driver.report.serving_timeline import serving_tracks
    from astra_driver.serving.loop import ServingRunConfig, run_serving
    from astra_driver.serving.workload import load_workload
    from tests.conftest import REPO

    cluster = load_cluster_config(REPO / "configs" / "cluster" / "single_node_single_instance.json")
    requests = load_workload(REPO / "configs" / "workloads" / "example_trace.jsonl")
    result = run_serving(ServingRunConfig(cluster=cluster, requests=requests))
    tracks = serving_tracks(result.iterations, result.requests)
    assert [(t.process, t.name) for t in tracks] == [("instance 0", "iterations"), ("instance 0", "requests")]
    iterations, served = tracks
    assert [(s.start_ns, s.end_ns, s.args["batch_id"]) for s in iterations.spans] == [
        (r.start_ns, r.end_ns, r.batch_id) for r in result.iterations
    ]
    assert len(served.spans) == len(result.requests) == 12
    for span, request in zip(served.spans, result.requests, strict=True):
        assert (span.start_ns, span.end_ns) == (request.arrival_ns, request.finish_ns)
        assert span.args["ttft_ns"] == request.token_times_ns[0] - request.arrival_ns
    assert [i.at_ns for i in served.instants] == [r.token_times_ns[0] for r in result.requests]
    trace = build_timeline([], tracks=tracks).to_json()
    process = next(e["pid"] for e in trace["traceEvents"] if e["name"] == "process_name")
    assert len(_complete_events(trace, process)) == len(result.iterations) + 12
    _assert_tracks_nest(trace)


@needs_engine
def test_message_arrows_pair_each_send_with_its_recv(tmp_path: Path, capsys) -> None:
    """Flow events (Perfetto draws arrows): one per send, from the send to the recv ASTRA-Sim matched it with."""
    folder = CONFORMANCE / "train_1f1b_4stages"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    out = tmp_path / "t.json"
    assert main(["replay", *_replay_flags(folder), f"--timeline={out}"]) == 0, capsys.readouterr().err
    trace = json.loads(out.read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
    sends = [e for e in slices if e["cat"] == "COMM_SEND_NODE"]
    assert len(starts) == len(ends) == len(sends) == trace["otherData"]["messages"] > 0
    for flow_id, start in starts.items():
        end = ends[flow_id]
        assert end["bp"] == "e"

        def enclosing(flow: dict) -> dict:
            (found,) = [
                e
                for e in slices
                if (e["pid"], e["tid"]) == (flow["pid"], flow["tid"])
                and round(e["ts"] * 1000) <= round(flow["ts"] * 1000) <= round((e["ts"] + e["dur"]) * 1000)
                and e["cat"] in ("COMM_SEND_NODE", "COMM_RECV_NODE")
            ]
            return found

        send, recv = enclosing(start), enclosing(end)
        assert (send["cat"], recv["cat"]) == ("COMM_SEND_NODE", "COMM_RECV_NODE")
        assert (send["pid"] - 1, send["args"]["peer"]) == (recv["args"]["peer"], recv["pid"] - 1)
        assert (send["args"]["tag"], send["args"]["bytes"]) == (recv["args"]["tag"], recv["args"]["bytes"])
        # The data arrived when both completed (a recv ends when its send's data lands, or at its own issue).
        assert recv["args"]["end_ns"] == max(send["args"]["end_ns"], recv["args"]["issue_ns"])
    no_arrows = build_timeline([[(0, "s", 5, 0, 10)], [(0, "r", 6, 0, 10)]], messages=False)
    assert [e for e in no_arrows.trace_events if e["ph"] in ("s", "f")] == []


@needs_engine
def test_message_arrows_under_a_window_are_the_full_runs_pairs() -> None:
    """Pairs are matched over the whole run: a window keeps some of them, never makes new ones."""
    from astra_driver.backends import ReplayRun, replay

    folder = CONFORMANCE / "train_1f1b_4stages"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    run = ReplayRun(
        folder / "workload", folder / "system.json", folder / "network.yml", folder / "memory.json",
        record_node_times=True,
    )  # fmt: skip
    result = replay(run, "builtin")
    facts = node_facts(read_workload(folder / "workload"))

    def pairs(timeline) -> set[tuple[tuple[int, int], tuple[int, int]]]:
        slices = {(e["pid"], e["tid"], e["ts"]): e for e in timeline.trace_events if e["ph"] == "X"}
        flows: dict[int, dict[str, tuple[int, int]]] = {}
        for event in timeline.trace_events:
            if event["ph"] in ("s", "f"):
                if event["ph"] == "s":
                    node = slices[(event["pid"], event["tid"], event["ts"])]["args"]["node_id"]
                else:
                    node = next(
                        e["args"]["node_id"]
                        for e in timeline.trace_events
                        if e["ph"] == "X" and (e["pid"], e["tid"]) == (event["pid"], event["tid"])
                        and e["ts"] <= event["ts"] <= e["ts"] + e["dur"]
                    )  # fmt: skip
                flows.setdefault(event["id"], {})[event["ph"]] = (event["pid"] - 1, node)
        return {(flow["s"], flow["f"]) for flow in flows.values()}

    full = pairs(build_timeline(result.node_times, facts=facts))
    windowed = pairs(build_timeline(result.node_times, facts=facts, window=TimeWindow(8_000_000, 14_000_000)))
    assert windowed and windowed < full
