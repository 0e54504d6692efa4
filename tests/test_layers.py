"""Layer list from a model: rows per stage, per-layer time and traffic, the balanced plan, CSV out and in."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_converter.errors import PipesimError
from llm_converter.hardware import get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.layer_ops import iteration_ops
from llm_converter.layers import (
    CSV_COLUMNS,
    LayerList,
    LayerRow,
    balanced_plan,
    build_layer_list,
    plan_of_layers,
    read_layer_csv,
    timed_ops,
)
from llm_converter.models import get_model
from llm_converter.plan import ParallelPlan

ITERATION = Iteration(prefill=(PrefillChunk(512),), decode=(1024,) * 32)  # 544 tokens, 33 sequences


def _layers(model_name: str, hardware_name: str, tp: int, pp: int) -> tuple[LayerList, ParallelPlan]:
    model = get_model(model_name)
    latency = make_latency_model(model, get_hardware(hardware_name), tp, "float16")
    ops = timed_ops(model, ITERATION, tp, latency, "float16")
    plan = balanced_plan(ops, model.num_layers, tp, pp)
    return build_layer_list(model, ITERATION, plan, latency, "float16", ops=ops), plan


def test_rows_replicate_one_block_per_decoder_layer() -> None:
    model = get_model("meta-llama/Llama-3.1-8B")
    layers, plan = _layers("meta-llama/Llama-3.1-8B", "RTXPRO6000", tp=2, pp=2)
    pre, block, post = iteration_ops(model, ITERATION, 2, "float16")
    assert len(layers.rows) == len(pre) + 32 * len(block) + len(post)
    assert [r.name for r in layers.rows[:3]] == ["embedding", "input_layernorm", "qkv_proj"]
    assert [r.name for r in layers.rows[-3:]] == ["final_layernorm", "lm_head", "sampler"]
    assert layers.rows[0].block == -1 and layers.rows[0].stage == 0
    assert all(r.stage == 1 and r.block == -1 for r in layers.rows[-3:])
    for row in layers.rows:
        if row.block >= 0:
            assert row.stage == plan.stage_of_block(row.block)
    # Every block is the same work: the same ns for the same layer name in every block.
    by_name: dict[str, set[int]] = {}
    for row in layers.rows:
        if row.block >= 0:
            by_name.setdefault(row.name, set()).add(row.ns)
    assert all(len(values) == 1 for values in by_name.values())
    assert [r.stage for r in layers.rows] == sorted(r.stage for r in layers.rows)


def test_layer_time_is_the_roofline_of_its_flops_and_bytes() -> None:
    hw = get_hardware("RTXPRO6000")
    layers, _ = _layers("meta-llama/Llama-3.1-8B", "RTXPRO6000", tp=1, pp=2)
    qkv = next(r for r in layers.rows if r.name == "qkv_proj")
    # Llama-3.1-8B qkv_proj on tp1: 4096 -> 4096 + 2 * 1024, 544 tokens.
    assert qkv.flops == 2 * 544 * 4096 * 6144
    assert qkv.params == 4096 * 6144
    assert qkv.bytes == (4096 * 6144 + 544 * (4096 + 6144)) * 2
    compute = qkv.flops / (hw.peak_tflops * 1e3 * hw.compute_efficiency)
    memory = qkv.bytes / (hw.hbm_gbps * hw.memory_efficiency)
    assert qkv.ns == round(max(compute, memory) + hw.gemm.kernels * hw.launch_ns)  # a GEMM: no L2 term


def test_all_reduce_and_activation_bytes() -> None:
    layers, _ = _layers("meta-llama/Llama-3.1-8B", "H100-SXM", tp=2, pp=2)
    reduced = [r for r in layers.rows if r.comm == "all_reduce"]
    # vLLM all-reduces o_proj, down_proj and the vocab-parallel embedding's output under TP.
    assert {r.name for r in reduced} == {"o_proj", "down_proj", "embedding"}
    assert len(reduced) == 2 * 32 + 1
    assert all(r.comm_bytes == 544 * 4096 * 2 for r in reduced)
    # ... and all-gathers lm_head's logits: each rank's shard of 33 sequences x ceil(128256 / 2) vocab rows.
    gathered = [r for r in layers.rows if r.comm == "all_gather"]
    assert [(r.name, r.stage, r.comm_bytes) for r in gathered] == [("lm_head", 1, 33 * 64128 * 2)]
    assert layers.activation_bytes(0) == 544 * 4096 * 2
    single, _ = _layers("meta-llama/Llama-3.1-8B", "H100-SXM", tp=1, pp=2)
    assert all(r.comm == "none" and r.comm_bytes == 0 for r in single.rows)


def test_llama_405b_tp8_pp16_splits_8_blocks_per_stage_with_7_on_the_ends() -> None:
    layers, plan = _layers("meta-llama/Llama-3.1-405B", "H100-SXM", tp=8, pp=16)
    ops_ns = {r.name: r.ns for r in layers.rows}
    block_ns = sum(r.ns for r in layers.rows if r.block == 0)
    head_ns = ops_ns["final_layernorm"] + ops_ns["lm_head"] + ops_ns["sampler"]
    assert 0 < ops_ns["embedding"] and head_ns < block_ns  # the premise of the 7/8.../8/7 shape
    assert [end - start for start, end in plan.stage_blocks] == [7] + [8] * 14 + [7]
    assert layers.rows[0].name == "embedding" and layers.rows[0].stage == 0
    assert next(r for r in layers.rows if r.name == "lm_head").stage == 15
    assert max(layers.stage_ns()) == 8 * block_ns
    assert plan_of_layers(layers, tp=8) == plan


def test_pp_beyond_the_layer_count_is_refused() -> None:
    with pytest.raises(PipesimError, match="pp = 13 is more than the model's 12 decoder layers"):
        _layers("openai-community/gpt2", "RTX4090", tp=1, pp=13)


def test_csv_round_trip(tmp_path: Path) -> None:
    layers, plan = _layers("meta-llama/Llama-3.1-8B", "RTXPRO6000", tp=2, pp=2)
    path = tmp_path / "layers.csv"
    layers.write_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == "# pipesim layer list: hidden_size=4096 dtype_bytes=2"
    assert lines[1] == ",".join(CSV_COLUMNS)
    back = read_layer_csv(path)
    assert back.rows == layers.rows
    assert (back.hidden_size, back.dtype_bytes) == (4096, 2)
    assert plan_of_layers(back, tp=2) == plan


def test_researcher_csv_without_stages_is_split_by_its_own_times(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    lines = ["name,block,tokens,ns,comm"]
    lines.append("embed,-1,64,5000,none")
    for block in range(4):
        lines.append(f"attn,{block},64,10000,all_reduce")
        lines.append(f"mlp,{block},64,20000,all_reduce")
    lines.append("head,-1,8,50000,none")
    path.write_text("\n".join(lines) + "\n")
    layers = read_layer_csv(path, hidden_size=512, dtype_bytes=2, pp=2)
    # Blocks cost 30 us; the head of 50 us on the last stage: stage 0 = 5 + 3*30 = 95, stage 1 = 30 + 50 = 80.
    assert [r.stage for r in layers.rows] == [0] + [0] * 6 + [1] * 2 + [1]
    assert layers.stage_ns() == [95_000, 80_000]
    assert all(r.comm_bytes == 64 * 512 * 2 for r in layers.rows if r.comm == "all_reduce")
    assert plan_of_layers(layers, tp=2).stage_blocks == ((0, 3), (3, 4))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,block,tokens\nx,0,1\n", "line 1: column 'ns' is missing"),
        ("name,block,tokens,ns,speed\nx,0,1,1,2\n", "line 1: unknown column 'speed'"),
        ("name,block,tokens,ns\nx,0,1,1\ny,0,one,1\n", "line 3: column 'tokens' is 'one'"),
        ("# note\nname,block,tokens,ns\nx,0,1,1.5\n", "line 3: column 'ns' is '1.5'"),
        ("name,block,tokens,ns\nx,0,1\n", "line 2: 3 fields for 4 columns"),
        ("name,block,tokens,ns,comm\nx,0,1,1,broadcast\n", "line 2: column 'comm' is 'broadcast'"),
        ("name,block,tokens,ns\nx,-2,1,1\n", "line 2: column 'block' is -2"),
        ("name,block,tokens,ns\nx y,0,1,1\n", "line 2: column 'name'"),
        ("name,block,tokens,ns\n", "no rows after the header"),
        ("name,block,tokens,ns\nx,0,1,1\nx,2,1,1\n", "column 'block' jumps to 2"),
    ],
)
def test_csv_errors_name_the_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(PipesimError, match=message) as info:
        read_layer_csv(path, hidden_size=64, dtype_bytes=2, pp=1)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_csv_needs_hidden_size_and_stages(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("name,block,tokens,ns\nx,0,1,1\n")
    with pytest.raises(PipesimError, match="pass --hidden and --dtype"):
        read_layer_csv(path, pp=1)
    with pytest.raises(PipesimError, match="pass --pp"):
        read_layer_csv(path, hidden_size=8, dtype_bytes=2)
    with pytest.raises(PipesimError, match="no such file"):
        read_layer_csv(tmp_path / "missing.csv")


def test_rows_out_of_stage_order_are_refused() -> None:
    rows = [LayerRow("a", 0, 1, 1, 1), LayerRow("b", 1, 0, 1, 1)]
    with pytest.raises(PipesimError, match="execution order"):
        LayerList(rows, hidden_size=8, dtype_bytes=2)


def test_llama_405b_tp8_pp16_workload_is_valid_with_the_expected_node_counts() -> None:
    from llm_converter.chakra.validator import validate_workload
    from llm_converter.graphs.forward import build_serving_workload

    layers, plan = _layers("meta-llama/Llama-3.1-405B", "H100-SXM", tp=8, pp=16)
    workload = build_serving_workload(layers, plan)
    assert workload.npus == 128
    for graph in workload.graphs:
        stage = plan.coords(graph.rank).stage
        blocks = len(plan.blocks_of(stage))
        # 9 layers + 2 all-reduces per block; embedding + its all-reduce + send on stage 0; recv + 3 head layers
        # + lm_head's all-gather on stage 15; recv + send in between.
        extra = {0: 2 + 1, 15: 1 + 3 + 1}.get(stage, 2)
        assert len(graph.nodes) == 11 * blocks + extra
    assert len(workload.comm_groups) == 16
    workload_report = validate_workload(workload)
    assert workload_report.ok, workload_report.problems[:3]


def test_csv_decimal_forms_are_exact(tmp_path: Path) -> None:
    # 2**53 + 1 written the spreadsheet way must not lose its last digit to a float; a fraction a float cannot
    # tell from 1 must still be refused.
    path = tmp_path / "t.csv"
    path.write_text("name,block,tokens,ns,flops\nx,0,1.0e0,1.234e3,9007199254740993.0\n")
    (row,) = read_layer_csv(path, hidden_size=8, dtype_bytes=2, pp=1).rows
    assert (row.tokens, row.ns, row.flops) == (1, 1234, 9007199254740993)
    path.write_text("name,block,tokens,ns\nx,0,1,1.00000000000000001\n")
    with pytest.raises(PipesimError, match=r"line 2: column 'ns' is '1.00000000000000001'; it needs an integer"):
        read_layer_csv(path, hidden_size=8, dtype_bytes=2, pp=1)
    for text in ("1e999999", "nan", "inf"):
        path.write_text(f"name,block,tokens,ns\nx,0,1,{text}\n")
        with pytest.raises(PipesimError, match=r"line 2: column 'ns' is"):
            read_layer_csv(path, hidden_size=8, dtype_bytes=2, pp=1)
