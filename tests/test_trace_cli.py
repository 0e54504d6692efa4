"""`pipesim trace` / `pipesim convert` and the library calls behind them: files written, their contents, the
end-to-end replay time by closed form, atomic replacement, and one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import astra_driver.trace_job as trace_job
from astra_driver.cli import main
from astra_driver.trace_job import (
    TraceRequest,
    iteration_from_flags,
    parse_decode,
    parse_prefill,
    run_convert,
    run_trace,
)
from llm_converter.chakra.reader import read_workload
from llm_converter.chakra.validator import validate_workload
from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.models import get_model
from tests.conftest import PROFILES, REPO

PP_CLUSTER = REPO / "configs" / "cluster" / "single_node_pp_instance.json"
TP2_PP2_CLUSTER = REPO / "configs" / "cluster" / "tp2_pp2.json"
BATCH = Iteration(prefill=(PrefillChunk(512),), decode=(1024,) * 32)


def test_batch_flags() -> None:
    assert parse_prefill("512") == PrefillChunk(512, 0)
    assert parse_prefill("256@1024") == PrefillChunk(256, 1024)
    assert parse_decode("32x1024") == (1024,) * 32
    iteration = iteration_from_flags(["512", "128@64"], ["2x10", "1x5"])
    assert iteration.tokens == 512 + 128 + 3
    assert iteration.decode == (10, 10, 5)
    for bad in ("", "0", "12@", "a@1", "-3"):
        with pytest.raises(PipesimError, match="--prefill"):
            parse_prefill(bad)
    for bad in ("32", "0x10", "x10", "3x"):
        with pytest.raises(PipesimError, match="--decode"):
            parse_decode(bad)
    with pytest.raises(PipesimError, match="the batch is empty"):
        iteration_from_flags([], [])


def test_trace_of_the_seed_pp2_cluster(tmp_path: Path) -> None:
    result = run_trace(TraceRequest(name="llama8b_pp2", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER))
    folder = tmp_path / "llama8b_pp2"
    assert sorted(p.name for p in folder.iterdir()) == [
        "layers.csv",
        "llm.0.et",
        "llm.1.et",
        "memory.json",
        "network.yml",
        "system.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["llama8b_pp2"]  # no staging folders left
    assert (result.plan.tp, result.plan.pp) == (1, 2)
    workload = read_workload(folder / "llm")
    assert validate_workload(workload).ok
    # Llama-3.1-8B: 32 blocks of 9 layers; stage 0 adds the embedding and a send, stage 1 a recv and 3 head layers.
    blocks = [end - start for start, end in result.plan.stage_blocks]
    assert [len(g.nodes) for g in workload.graphs] == [blocks[0] * 9 + 2, blocks[1] * 9 + 4]
    assert result.nodes_per_npu == [len(g.nodes) for g in workload.graphs]
    send = workload.graphs[0].nodes[-1]
    assert (send.comm_dst, send.comm_size) == (1, 544 * 4096 * 2)
    network = (folder / "network.yml").read_text()
    assert "bandwidth: [ 16.0 ]" in network and "latency: [ 20000.0 ]" in network
    model = get_model("meta-llama/Llama-3.1-8B")
    assert sum(result.stage_params) == model.total_params()
    summary = result.summary()
    assert "tp 1 x pp 2 (2 NPUs)" in summary and "stage 1: blocks" in summary and "llm.{0..1}.et" in summary


def test_replay_of_the_trace_matches_the_closed_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stage 0 computes, sends one activation over the 16 GB/s, 20 us link, then stage 1 computes:
    finish(0) = C0 + latency + floor(bytes / (16 * 2^30 / 1e9)); finish(1) = finish(0) + C1 (the recv is posted
    at 0 and completes when the data lands, exactly when the send does)."""
    result = run_trace(TraceRequest(name="x", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER))
    folder = tmp_path / "x"
    compute_ns = [(ns + 500) // 1000 * 1000 for ns in result.layers.stage_ns()]
    # Layers shorter than 0.5 us round to 0 us, which ASTRA-Sim runs as 1 ns.
    graphs = read_workload(folder / "llm").graphs
    zero = [sum(1 for n in g.nodes if n.type == 4 and n.duration_micros == 0) for g in graphs]
    message = 20000 + (544 * 4096 * 2 * 10**9) // (16 * 2**30)
    finish0 = compute_ns[0] + zero[0] + message
    finish1 = finish0 + compute_ns[1] + zero[1]
    code = main(
        [
            "replay",
            f"--workload-configuration={folder / 'llm'}",
            f"--system-configuration={folder / 'system.json'}",
            f"--network-configuration={folder / 'network.yml'}",
            f"--remote-memory-configuration={folder / 'memory.json'}",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        f"sys[0] finished, {finish0} cycles, exposed communication {finish0 - compute_ns[0] - zero[0]} cycles." in lines
    )
    assert f"sys[1] finished, {finish1} cycles, exposed communication {finish0} cycles." in lines


def test_tp2_pp2_writes_comm_groups(tmp_path: Path) -> None:
    result = run_trace(TraceRequest(name="t", iteration=BATCH, out_dir=tmp_path, cluster_config=TP2_PP2_CLUSTER))
    folder = tmp_path / "t"
    assert json.loads((folder / "comm_groups.json").read_text()) == {"1": [0, 1], "2": [2, 3]}
    workload = read_workload(folder / "llm")
    workload.comm_groups = {"1": [0, 1], "2": [2, 3]}
    assert validate_workload(workload).ok
    reduces = [n for n in workload.graphs[3].nodes if n.type == 7 and n.comm_type == 0]  # ALL_REDUCE
    assert len(reduces) == 2 * (result.plan.stage_blocks[1][1] - result.plan.stage_blocks[1][0])
    assert {(n.pg_name, n.comm_size) for n in reduces} == {("2", 544 * 4096 * 2)}
    # lm_head's logits shards (33 sequences x 128256 / 2 vocab rows, fp16) are all-gathered on the last stage.
    gathers = [(n.name, n.pg_name, n.comm_size) for n in workload.graphs[3].nodes if n.type == 7 and n.comm_type == 2]
    assert gathers == [("COMM_COLL_NODE_lm_head_ag", "2", 33 * 64128 * 2)]


def test_model_flags_and_cli_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["trace", "--model", "openai-community/gpt2", "--hardware", "H100-SXM", "--tp", "2", "--pp", "4"]
    args += [
        "--decode",
        "8x100",
        "--link-bw",
        "100",
        "--link-latency",
        "700",
        "--name",
        "g",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "openai-community/gpt2 on H100-SXM, tp 2 x pp 4 (8 NPUs)" in out
    assert "comm_groups.json" in out
    assert "bandwidth: [ 100.0 ]" in (tmp_path / "g" / "network.yml").read_text()
    assert len(read_workload(tmp_path / "g" / "llm").graphs) == 8


def test_one_npu_writes_the_trace_without_astra_configs(tmp_path: Path) -> None:
    request = TraceRequest(
        name="one", iteration=BATCH, out_dir=tmp_path, model="openai-community/gpt2", hardware="RTX4090"
    )
    result = run_trace(request)
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["layers.csv", "llm.0.et"]
    assert result.notes and "1 NPU" in result.notes[0]
    assert "neither `pipesim replay` nor ASTRA-Sim can run this trace" in result.summary()


def test_flag_cluster_spans_nodes_of_gpus_per_node(tmp_path: Path) -> None:
    """Issue 6 item 5: Llama-3.1-405B tp 8 x pp 16 is 16 nodes of 8 H100s: NVLink per direction (450 GB/s, the
    catalog's interconnect_gbps) inside a node, a 400 Gb/s NIC per GPU (50 GB/s) across."""
    from astra_driver.astra_config import load_network

    request = TraceRequest(
        name="big",
        iteration=Iteration(decode=(2048,) * 8),
        out_dir=tmp_path,
        model="Llama-3.1-405B",
        hardware="H100-SXM",
        tp=8,
        pp=16,
    )
    result = run_trace(request)
    network = load_network(tmp_path / "big" / "network.yml")
    assert network.npus_count == [8, 16]
    assert network.bandwidth == [450.0, 50.0] and network.latency == [1000.0, 5000.0]
    assert network.topology == ["FullyConnected", "FullyConnected"]
    assert any("16 nodes of 8 NPUs" in note for note in result.notes)
    assert result.instance.span_nodes == 16 and result.instance.npus_per_node == 8


def test_flag_links_reach_the_network(tmp_path: Path) -> None:
    from astra_driver.astra_config import load_network

    args = ["trace", "--model", "Llama-3.1-8B", "--hardware", "H100-SXM", "--tp", "2", "--pp", "2"]
    args += ["--decode", "4x100", "--out-dir", str(tmp_path)]
    assert main([*args, "--name", "one", "--link-bw", "100"]) == 0
    flat = load_network(tmp_path / "one" / "network.yml")  # 4 NPUs <= 8 per node: one dimension
    assert (flat.npus_count, flat.bandwidth, flat.latency) == ([4], [100.0], [1000.0])
    more = ["--gpus-per-node", "2", "--inter-node-bw", "25", "--inter-node-latency", "3000", "--link-latency", "700"]
    assert main([*args, "--name", "two", *more]) == 0
    two = load_network(tmp_path / "two" / "network.yml")
    assert (two.npus_count, two.bandwidth, two.latency) == ([2, 2], [450.0, 25.0], [700.0, 3000.0])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tp", "3"], "pipesim: error: --tp: 3 does not divide num_attention_heads 32 and num_kv_heads 8 of "),
        (["--dtype", "int8"], "pipesim: error: --dtype 'int8': unknown; use one of float16, bfloat16, fp8"),
        (["--tp", "2", "--pp", "8"], "pipesim: error: --gpus-per-node 8: tp 2 x pp 8 = 16 NPUs span nodes"),
        (["--gpus-per-node", "0"], "pipesim: error: --gpus-per-node 0: must be >= 1"),
        (["--inter-node-bw", "0"], "pipesim: error: --inter-node-bw 0: must be a bandwidth > 0 GB/s"),
        (["--hardware", "RTX4090", "--model", "Llama-3.1-70B"], "pipesim: error: --tp/--pp: the float16 weights"),
    ],
)
def test_flag_errors_name_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    args = ["trace", "--model", "Llama-3.1-8B", "--hardware", "H100-SXM", "--decode", "4x100"]
    assert main([*args, "--out-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert "nodes[0]" not in err and "tp_size" not in err
    assert list(tmp_path.iterdir()) == []


def test_summary_weights_and_span_advice_in_the_units_and_ways_that_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The summary printed weights in 1e9-byte GB while the memory errors (and mem_size) use GiB; with pp 1 the
    span error offered the same --gpus-per-node twice ("use --gpus-per-node 8 (one stage per node) or ... 8")."""
    args = [
        "trace",
        "--model",
        "Llama-3.1-8B",
        "--hardware",
        "H100-SXM",
        "--decode",
        "2x64",
        "--out-dir",
        str(tmp_path),
    ]
    request = TraceRequest(name="w", iteration=Iteration(decode=(64, 64)), out_dir=tmp_path)
    result = run_trace(replace(request, model="Llama-3.1-8B", hardware="H100-SXM", pp=2))
    # Stage 1 (blocks 17-31 of the time-balanced split, final norm, lm_head): 15 x 218,112,000 + 4,096 +
    # 128,256 x 4,096 = 3,797,020,672 float16 parameters.
    assert result.weight_bytes_per_npu[1] == 2 * 3_797_020_672
    assert "weights 7.07 GB/NPU" in result.summary().splitlines()[3]  # 7,594,041,344 / 2**30
    assert main([*args, "--tp", "8", "--gpus-per-node", "3"]) == 2
    assert capsys.readouterr().err.endswith("(--tp NPUs); use --gpus-per-node 8 (one node)\n")
    assert main([*args, "--tp", "2", "--pp", "8"]) == 2
    message = "use --gpus-per-node 2 (one stage per node) or --gpus-per-node 16 (one node)\n"
    assert capsys.readouterr().err.endswith(message)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decode", "8"], "--decode '8'"),
        (["--decode", "8x10", "--pp", "13"], "--pp: 13 stages but openai-community/gpt2 has 12"),
        (["--decode", "8x10", "--cluster-config", str(PP_CLUSTER)], "drop --model"),
        (["--decode", "8x10", "--dtype", "int3"], "--dtype 'int3': unknown"),
        (["--decode", "8x10", "--name", "../x"], "--name '../x'"),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = ["trace", "--model", "openai-community/gpt2", "--hardware", "H100-SXM", "--out-dir", str(tmp_path)]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_failed_trace_leaves_the_previous_output_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request = TraceRequest(name="keep", iteration=BATCH, out_dir=tmp_path, cluster_config=TP2_PP2_CLUSTER)
    run_trace(request)
    before = {p.name: p.read_bytes() for p in (tmp_path / "keep").iterdir()}

    def explode(*args: object, **kwargs: object) -> None:
        raise PipesimError("disk full")

    monkeypatch.setattr(trace_job, "write_astra_files", explode)
    with pytest.raises(PipesimError, match="disk full"):
        run_trace(
            TraceRequest(
                name="keep", iteration=Iteration(decode=(5,)), out_dir=tmp_path, cluster_config=TP2_PP2_CLUSTER
            )
        )
    assert {p.name: p.read_bytes() for p in (tmp_path / "keep").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]
    monkeypatch.undo()
    # A successful re-run replaces the folder as a whole (a smaller plan leaves no stale rank files).
    run_trace(TraceRequest(name="keep", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER))
    assert sorted(p.name for p in (tmp_path / "keep").glob("*.et")) == ["llm.0.et", "llm.1.et"]


def test_trace_refuses_to_replace_a_folder_holding_other_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The folder is replaced whole: `--name llama8b_pp2` over `make trace`'s kept serving traces (manifest.json,
    instance0/) deleted them. A previous trace (and a replay's log/) may be replaced; anything else is refused."""
    kept = tmp_path / "llama8b_pp2"
    (kept / "instance0").mkdir(parents=True)
    (kept / "manifest.json").write_text("{}")
    (kept / "llm.x.et").write_text("mine")
    argv = ["trace", "--cluster-config", str(PP_CLUSTER), "--decode", "2x64", "--out-dir", str(tmp_path)]
    assert main([*argv, "--name", "llama8b_pp2"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"pipesim: error: {kept}: holds files this command did not write (instance0, llm.x.et, manifest.json), "
        "and the folder is replaced whole (given as --out-dir/--name); choose a new or empty folder, or remove them"
    ]
    assert sorted(p.name for p in kept.iterdir()) == ["instance0", "llm.x.et", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama8b_pp2"]  # no staging folder left either
    # A previous trace, with a replay's log/ in it, is replaced.
    assert main([*argv, "--name", "t"]) == 0
    (tmp_path / "t" / "log").mkdir()
    assert main([*argv, "--name", "t", "--decode", "1x8"]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "layers.csv", "llm.0.et", "llm.1.et", "memory.json", "network.yml", "system.json"
    ]  # fmt: skip


def test_convert_of_the_trace_layer_table_reproduces_the_trace(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_trace(TraceRequest(name="t", iteration=BATCH, out_dir=tmp_path, cluster_config=TP2_PP2_CLUSTER))
    folder = tmp_path / "t"
    result = run_convert(
        folder / "layers.csv", tp=2, pp=2, prefix=tmp_path / "c" / "llm", cluster_config=TP2_PP2_CLUSTER
    )
    for rank in range(4):
        assert (tmp_path / "c" / f"llm.{rank}.et").read_bytes() == (folder / f"llm.{rank}.et").read_bytes()
    for name in ("network.yml", "system.json", "memory.json", "comm_groups.json"):
        assert (tmp_path / "c" / name).read_text() == (folder / name).read_text()
    assert result.nodes_per_npu == [len(g.nodes) for g in read_workload(folder / "llm").graphs]
    # Through the CLI, to a prefix with leftovers of a larger conversion: those are removed.
    (tmp_path / "c" / "llm.4.et").write_bytes(b"stale")
    assert (
        main(["convert", str(folder / "layers.csv"), "--tp", "2", "--pp", "2", "-o", str(tmp_path / "c" / "llm")]) == 0
    )
    assert not (tmp_path / "c" / "llm.4.et").exists()
    assert "tp 2 x pp 2" in capsys.readouterr().out


def test_convert_a_researcher_table(tmp_path: Path) -> None:
    table = tmp_path / "mine.csv"
    rows = ["name,block,tokens,ns,comm"] + [f"layer{b},{b},128,{10_000 * (b + 1)},all_reduce" for b in range(6)]
    table.write_text("\n".join(rows) + "\n")
    result = run_convert(table, tp=2, pp=3, prefix=tmp_path / "out" / "llm", dtype="bfloat16", hidden=1024)
    # Blocks of 10, 20, ..., 60 us over 3 stages: [10 20 30] [40 50] [60] has its slowest stage at 90 us, and
    # every other contiguous split has one at >= 100 (e.g. [10 20 30 40] or [50 60] = 110).
    assert result.plan.stage_blocks == ((0, 3), (3, 5), (5, 6))
    workload = read_workload(tmp_path / "out" / "llm")
    assert len(workload.graphs) == 6
    assert [len(g.nodes) for g in workload.graphs] == [3 * 2 + 1] * 2 + [1 + 2 * 2 + 1] * 2 + [1 + 2] * 2
    assert {n.comm_size for g in workload.graphs for n in g.nodes if n.type == 7} == {128 * 1024 * 2}
    with pytest.raises(PipesimError, match="pass --hidden and --dtype"):
        run_convert(table, tp=1, pp=1, prefix=tmp_path / "o2" / "llm")


def test_convert_writes_the_groups_file_its_collectives_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 6 item 2: without --cluster-config, tp 4 x pp 2 still gets comm_groups.json beside the traces (the
    all-reduces' pg_name "1" and "2"), so replay finds every group; tp 1 needs none and gets none."""
    run_trace(
        TraceRequest(name="t", iteration=BATCH, out_dir=tmp_path, model="Llama-3.1-8B", hardware="H100-SXM", tp=4, pp=2)
    )
    table = tmp_path / "t" / "layers.csv"
    assert main(["convert", str(table), "--tp", "4", "--pp", "2", "-o", str(tmp_path / "x" / "llm")]) == 0
    out = capsys.readouterr().out
    assert "comm_groups.json" in out and "no network.yml/system.json/memory.json written" in out
    groups = json.loads((tmp_path / "x" / "comm_groups.json").read_text())
    assert groups == {"1": [0, 1, 2, 3], "2": [4, 5, 6, 7]}
    graphs = read_workload(tmp_path / "x" / "llm").graphs
    assert {node.pg_name for graph in graphs for node in graph.nodes if node.pg_name} == {"1", "2"}
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["comm_groups.json"] + [
        f"llm.{r}.et" for r in range(8)
    ]


def test_convert_refuses_a_table_made_for_another_plan(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 6 item 6: trace records the plan in layers.csv ('# pipesim plan: tp=2 pp=2'); convert refuses another
    --tp or --pp, and still reads tables without that line."""
    run_trace(TraceRequest(name="t", iteration=BATCH, out_dir=tmp_path, cluster_config=TP2_PP2_CLUSTER))
    table = tmp_path / "t" / "layers.csv"
    lines = table.read_text().splitlines()
    assert lines[:2] == ["# pipesim layer list: hidden_size=4096 dtype_bytes=2", "# pipesim plan: tp=2 pp=2"]
    for flags in (["--tp", "4", "--pp", "2"], ["--tp", "2", "--pp", "1"]):
        assert main(["convert", str(table), *flags, "-o", str(tmp_path / "x" / "llm")]) == 2
        err = capsys.readouterr().err
        assert f"{table}: line 2: the table was made for tp 2 x pp 2" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    old = tmp_path / "old.csv"
    old.write_text("\n".join(line for line in lines if not line.startswith("# pipesim plan")) + "\n")
    result = run_convert(old, tp=2, pp=2, prefix=tmp_path / "o" / "llm")
    assert result.plan.tp == 2 and result.layers.tp == 2
    # Without --tp/--pp, convert takes the plan the table records.
    recorded = run_convert(table, tp=None, pp=None, prefix=tmp_path / "r" / "llm")
    assert (recorded.plan.tp, recorded.plan.pp) == (2, 2) and len(recorded.et_files) == 4


@pytest.mark.skipif(not (PROFILES / "RTXPRO6000").is_dir(), reason="../shared profiles absent")
def test_profile_bundle_latency(tmp_path: Path) -> None:
    bundle = PROFILES / "RTXPRO6000" / "meta-llama" / "Llama-3.1-8B"
    request = TraceRequest(
        name="p", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER, profile_dir=bundle, dtype="bfloat16"
    )
    measured = run_trace(request)
    roofline = run_trace(TraceRequest(name="r", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER))
    assert measured.latency_source.startswith("profile bundle")
    assert measured.layers.stage_ns() != roofline.layers.stage_ns()
    assert [r.name for r in measured.layers.rows] == [r.name for r in roofline.layers.rows]


def test_unknown_instance_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "trace",
        "--cluster-config",
        str(PP_CLUSTER),
        "--instance",
        "3",
        "--decode",
        "1x1",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "instance 3 does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_weights_of_the_time_balanced_split_must_fit(tmp_path: Path) -> None:
    """The cluster config checks an even split (16/16 blocks of Llama-3.1-8B: 7.48 GiB on stage 0); a split
    that loads 24 blocks on stage 0 needs (24 * 218,112,000 + 525,336,576) * 2 B = 10.73 GiB and must be refused."""
    from astra_driver.cluster_config import cluster_config_from_dict
    from llm_converter.iteration import Iteration
    from llm_converter.memory import check_batch_fits
    from llm_converter.plan import ParallelPlan

    seed = json.loads((REPO / "configs/cluster/single_node_pp_instance.json").read_text())
    seed["nodes"][0]["instances"][0]["npu_mem"].update(mem_size=10, mem_util=1.0)
    placed = cluster_config_from_dict(seed, "tight.json", "bfloat16").instance(0)
    no_kv = Iteration()
    check_batch_fits(placed.model, ParallelPlan(1, 2, 1, ((0, 16), (16, 32))), no_kv, 2, placed.usable_mem_bytes, "x")
    with pytest.raises(PipesimError, match=r"stage 0 \(blocks 0-23\) needs 10\.73 GB of weights \+ 0\.00 GB"):
        plan = ParallelPlan(1, 2, 1, ((0, 24), (24, 32)))
        check_batch_fits(placed.model, plan, no_kv, 2, placed.usable_mem_bytes, "x")


def test_trace_replays_in_roofline_mode(tmp_path: Path) -> None:
    """Every compute node carries num_ops and tensor_size >= 1, so ASTRA-Sim's roofline mode can time the trace:
    the embedding (0 FLOPs, written as 1 op) becomes memory-bound, tensor_size / local-mem-bw."""
    from dataclasses import replace

    from astra_driver.astra_config import load_astra_config
    from astra_driver.engine import simulate

    run_trace(TraceRequest(name="r", iteration=BATCH, out_dir=tmp_path, cluster_config=PP_CLUSTER))
    folder = tmp_path / "r"
    config = load_astra_config(folder / "system.json", folder / "network.yml", folder / "memory.json")
    config = replace(config, system=replace(config.system, roofline_enabled=True))
    result = simulate(read_workload(folder / "llm"), config, record_node_times=True)
    embedding = read_workload(folder / "llm").graphs[0].nodes[0]
    assert embedding.name == "COMP_NODE_embedding" and embedding.num_ops == 1
    (node_id, _, _, issue, end) = result.node_times[0][0]
    assert (node_id, issue) == (0, 0)
    assert end == int(embedding.tensor_size / config.system.local_mem_bw)
    assert all(finish > 0 for finish in result.finish_ns)


def _doc_command(path: Path, marker: str) -> list[str]:
    """The `pipesim ...` command of `path` (a Markdown code block) whose text contains `marker`, continuation lines
    joined, as argv without the leading `pipesim`."""
    text = path.read_text().replace("\\\n", " ")
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith("pipesim ") and marker in line]
    return line.split()[1:]


def test_the_profile_example_of_docs_cli_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_dir: Path
) -> None:
    """Issue 6 item 6: it lacked --dtype bfloat16, which the measured bundle needs (the default is float16)."""
    args = _doc_command(REPO / "docs" / "cli.md", "--profile-dir")
    assert "--dtype" in args
    args = [arg.replace("../shared", str(shared_dir)) for arg in args]
    monkeypatch.chdir(REPO)  # the example's relative paths are from the checkout's root
    assert main([*args, "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "l8_measured" / "llm.1.et").is_file()


def test_makefile_calls_pipesim_through_python(tmp_path: Path) -> None:
    """Issue 6 item 6: `make trace simulate` ran a bare `pipesim`, found only with the venv activated."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), "trace", "simulate", "PYTHON=py"], capture_output=True, text=True, check=True
    )
    commands = [line for line in dry.stdout.splitlines() if line and not line.startswith(("make", " "))]
    assert len(commands) == 2
    assert all(line.startswith("py -m astra_driver.cli ") for line in commands), commands


def test_fake_binaries_log_beside_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 6 item 6: the suite left log/args.txt in the checkout: a fake `docker` (tests/fixtures/fake_astra.py's
    write_script) run without --logging-folder logged to ./log, the checkout when pytest runs there."""
    import subprocess

    from tests.fixtures.fake_astra import write_script

    docker = write_script(tmp_path / "bin" / "docker", "exit 1")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    subprocess.run([str(docker), "image", "inspect", "astra:good"], check=False)
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "bin" / "log" / "args.txt").read_text().split() == ["image", "inspect", "astra:good"]
