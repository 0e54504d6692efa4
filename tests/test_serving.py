"""Per-NPU serving graphs from a layer list: structure, sizes, pairing, groups and duration rounding,
checked against closed forms and against the structure of the serving_tp2_pp2 conformance workload."""

from __future__ import annotations

from collections import Counter

import pytest

from llm_converter.chakra.validator import validate_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, NodeType
from llm_converter.graphs.forward import (
    TAG_ITERATION_PERIOD,
    TAG_STAGE_STRIDE,
    activation_tag,
    build_serving_workload,
    micros_durations,
)
from llm_converter.layers import LayerList, LayerRow
from llm_converter.plan import ParallelPlan
from tests.conftest import CONFORMANCE

HIDDEN = 256
DTYPE_BYTES = 2
TOKENS = 40
SEQUENCES = 3
BLOCKS = 8
# (name, ns, all-reduced after it) of one block, like a Llama block.
BLOCK_OPS = (
    ("input_layernorm", 1_400, False),
    ("qkv_proj", 12_345, False),
    ("attention", 7_777, False),
    ("o_proj", 4_499, True),
    ("post_attention_layernorm", 1_400, False),
    ("gate_up_proj", 25_001, False),
    ("act_fn", 600, False),
    ("down_proj", 12_500, True),
)


def small_layer_list(plan: ParallelPlan) -> LayerList:
    """A hand-built layer list: embedding, BLOCKS identical blocks, final norm + lm_head + sampler."""
    all_reduce_bytes = TOKENS * HIDDEN * DTYPE_BYTES
    rows = [LayerRow("embedding", -1, 0, TOKENS, 900, 0, 100, 10)]
    for stage in range(plan.pp):
        for block in plan.blocks_of(stage):
            for name, ns, reduces in BLOCK_OPS:
                comm = "all_reduce" if reduces and plan.tp > 1 else "none"
                size = all_reduce_bytes if comm == "all_reduce" else 0
                rows.append(LayerRow(name, block, stage, TOKENS, ns, 7 * ns, 3 * ns, 5, comm, size))
    last = plan.pp - 1
    rows += [
        LayerRow("final_layernorm", -1, last, TOKENS, 1_400),
        LayerRow("lm_head", -1, last, SEQUENCES, 30_000),
        LayerRow("sampler", -1, last, SEQUENCES, 2_000),
    ]
    return LayerList(rows=rows, hidden_size=HIDDEN, dtype_bytes=DTYPE_BYTES)


def expected_node_count(plan: ParallelPlan, stage: int) -> int:
    blocks = len(plan.blocks_of(stage))
    count = blocks * len(BLOCK_OPS)
    count += 1 if stage == 0 else 0  # embedding
    count += 3 if stage == plan.pp - 1 else 0  # final norm, lm_head, sampler
    count += 2 * blocks if plan.tp > 1 else 0  # o_proj and down_proj all-reduces
    count += 1 if stage > 0 else 0  # recv
    count += 1 if stage < plan.pp - 1 else 0  # send
    return count


@pytest.mark.parametrize("tp", range(1, 9))
@pytest.mark.parametrize("pp", range(1, 9))
def test_structure_for_every_tp_pp(tp: int, pp: int) -> None:
    plan = ParallelPlan.even(tp=tp, pp=pp, num_blocks=BLOCKS)
    workload = build_serving_workload(small_layer_list(plan), plan, iteration_id=3)
    assert workload.npus == tp * pp
    assert workload.comm_groups == plan.comm_groups()

    sends: Counter[tuple[int, int, int, int]] = Counter()
    recvs: Counter[tuple[int, int, int, int]] = Counter()
    collectives: dict[int, list[tuple[int, int, str | None]]] = {}
    for graph in workload.graphs:
        stage, tp_rank, _ = plan.coords(graph.rank)
        assert len(graph.nodes) == expected_node_count(plan, stage)
        for index, node in enumerate(graph.nodes):
            assert node.id == index
            assert node.data_deps == ([] if index == 0 else [index - 1])
            assert node.is_cpu_op is False
            assert node.name.startswith(node.type.name + "_")
            if node.type == NodeType.COMM_SEND_NODE:
                assert index == len(graph.nodes) - 1
                assert node.comm_dst == plan.rank(stage + 1, tp_rank)
                assert node.comm_size == TOKENS * HIDDEN * DTYPE_BYTES
                assert node.comm_tag == 3 * TAG_STAGE_STRIDE + stage
                sends[(node.comm_src, node.comm_dst, node.comm_tag, node.comm_size)] += 1
            elif node.type == NodeType.COMM_RECV_NODE:
                assert index == 0
                assert node.comm_src == plan.rank(stage - 1, tp_rank)
                recvs[(node.comm_src, node.comm_dst, node.comm_tag, node.comm_size)] += 1
            elif node.type == NodeType.COMM_COLL_NODE:
                assert graph.nodes[index - 1].name.split("_b")[0] in ("COMP_NODE_o_proj", "COMP_NODE_down_proj")
                assert node.comm_type == CollectiveType.ALL_REDUCE
                assert node.comm_size == TOKENS * HIDDEN * DTYPE_BYTES
                assert node.pg_name == plan.pg_name(stage)
                collectives.setdefault(graph.rank, []).append((node.comm_type, node.comm_size, node.pg_name))
    # Every send has exactly one recv with the same (src, dst, tag, size), and the other way round.
    assert sends == recvs
    assert all(count == 1 for count in sends.values())
    assert sum(sends.values()) == tp * (pp - 1)
    # Collectives: the same sequence on every member of a TP group, 2 per block of the stage.
    for stage in range(pp):
        group = plan.tp_group(stage)
        sequences = [collectives.get(rank, []) for rank in group]
        assert all(sequence == sequences[0] for sequence in sequences)
        assert len(sequences[0]) == (2 * len(plan.blocks_of(stage)) if tp > 1 else 0)
    report = validate_workload(workload)
    assert report.ok, report.problems[:3]


def test_data_parallel_replicas_are_independent_copies() -> None:
    plan = ParallelPlan.even(tp=2, pp=2, num_blocks=BLOCKS, dp=2)
    workload = build_serving_workload(small_layer_list(plan), plan)
    assert workload.npus == 8
    replica_1_send = workload.graphs[5].nodes[-1]
    assert (replica_1_send.comm_src, replica_1_send.comm_dst) == (5, 7)
    assert {n.pg_name for n in workload.graphs[6].nodes if n.pg_name} == {"4"}
    assert validate_workload(workload).ok


def test_durations_carry_the_rounding_remainder() -> None:
    # 0.4 + 0.4 + 0.4 us: independent rounding would give 0 + 0 + 0; carrying gives 0 + 1 + 0 (total 1.2 -> 1).
    rows = [LayerRow(f"op{i}", 0, 0, 1, 400) for i in range(3)]
    assert micros_durations(rows) == [0, 1, 0]
    rows = [LayerRow(f"op{i}", 0, 0, 1, ns) for i, ns in enumerate((1_499, 1, 2_500, 500, 999_999))]
    durations = micros_durations(rows)
    elapsed_ns = 0
    for index, row in enumerate(rows):
        elapsed_ns += row.ns
        # The cumulative sum is the cumulative ns rounded half up to whole microseconds.
        assert sum(durations[: index + 1]) == (elapsed_ns + 500) // 1000
    # cumulative ns 1499, 1500, 4000, 4500, 1004499 -> us 1, 2, 4, 5, 1004
    assert durations == [1, 1, 2, 1, 999]


def test_stage_compute_total_survives_rounding() -> None:
    plan = ParallelPlan.even(tp=2, pp=3, num_blocks=BLOCKS)
    layers = small_layer_list(plan)
    workload = build_serving_workload(layers, plan)
    for graph in workload.graphs:
        stage = plan.coords(graph.rank).stage
        total_us = sum(n.duration_micros for n in graph.nodes if n.type == NodeType.COMP_NODE)
        assert total_us == (layers.stage_ns()[stage] + 500) // 1000
        comp = [n for n in graph.nodes if n.type == NodeType.COMP_NODE]
        rows = layers.stage_rows(stage)
        # At least 1 of each, so ASTRA-Sim's roofline mode never computes 0/0 (the embedding has 0 FLOPs).
        assert [n.num_ops for n in comp] == [max(r.flops, 1) for r in rows]
        assert [n.tensor_size for n in comp] == [max(r.bytes, 1) for r in rows]


def test_tags_encode_iteration_and_boundary() -> None:
    assert activation_tag(0, 0) == 0
    assert activation_tag(7, 2) == 7 * 1024 + 2
    assert activation_tag(TAG_ITERATION_PERIOD + 7, 2) == activation_tag(7, 2)
    assert activation_tag(TAG_ITERATION_PERIOD - 1, TAG_STAGE_STRIDE - 1) < 500_000_000
    tags = {activation_tag(i, b) for i in range(50) for b in range(16)}
    assert len(tags) == 50 * 16
    with pytest.raises(PipesimError, match="boundary"):
        activation_tag(0, TAG_STAGE_STRIDE)


def test_node_names_follow_the_type_prefix_convention() -> None:
    plan = ParallelPlan.even(tp=2, pp=2, num_blocks=BLOCKS)
    workload = build_serving_workload(small_layer_list(plan), plan)
    names = [n.name for n in workload.graphs[0].nodes[:6]]
    assert names == [
        "COMP_NODE_embedding",
        "COMP_NODE_input_layernorm_b0",
        "COMP_NODE_qkv_proj_b0",
        "COMP_NODE_attention_b0",
        "COMP_NODE_o_proj_b0",
        "COMM_COLL_NODE_o_proj_ar_b0",
    ]
    assert workload.graphs[0].nodes[-1].name == "COMM_SEND_NODE_act_s0_to_s1"
    assert workload.graphs[2].nodes[0].name == "COMM_RECV_NODE_act_s0_to_s1"
    assert workload.graphs[3].nodes[-1].name == "COMP_NODE_sampler"


def test_stage_mismatch_is_a_one_line_error() -> None:
    plan = ParallelPlan.even(tp=1, pp=2, num_blocks=BLOCKS)
    with pytest.raises(PipesimError, match="2 stages but the plan has pp = 4"):
        build_serving_workload(small_layer_list(plan), ParallelPlan.even(1, 4, BLOCKS))


@pytest.mark.skipif(not (CONFORMANCE / "serving_tp2_pp2").is_dir(), reason="../shared conformance cases absent")
def test_matches_the_conformance_serving_case_structure() -> None:
    """The conformance case serving_tp2_pp2 is one serving iteration on tp2 x pp2, written by hand: build the
    same layer list and compare node for node (types, deps, durations, sizes, groups, peers)."""
    from llm_converter.chakra.reader import read_workload

    reference = read_workload(CONFORMANCE / "serving_tp2_pp2" / "workload")
    plan = ParallelPlan.even(tp=2, pp=2, num_blocks=4)
    size = 8_388_608  # 1024 tokens x 4096 hidden x 2 bytes
    rows = []
    for block in range(4):
        stage = block // 2
        rows.append(LayerRow(f"attn{block}", block, stage, 1024, 250_000, comm="all_reduce", comm_bytes=size))
        rows.append(LayerRow(f"mlp{block}", block, stage, 1024, 500_000, comm="all_reduce", comm_bytes=size))
    rows.append(LayerRow("lm_head", -1, 1, 1024, 333_000))
    ours = build_serving_workload(LayerList(rows, hidden_size=4096, dtype_bytes=2), plan)
    assert ours.comm_groups == {"1": [0, 1], "2": [2, 3]}
    for mine, theirs in zip(ours.graphs, reference.graphs, strict=True):
        assert len(mine.nodes) == len(theirs.nodes)
        for a, b in zip(mine.nodes, theirs.nodes, strict=True):
            assert (a.id, a.type, a.data_deps, a.duration_micros) == (b.id, b.type, b.data_deps, b.duration_micros)
            assert (a.comm_type, a.comm_size, a.pg_name, a.comm_src, a.comm_dst) == (
                b.comm_type,
                b.comm_size,
                b.pg_name,
                b.comm_src,
                b.comm_dst,
            )


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_fused_graphs_finish_like_per_layer_graphs(tp: int, pp: int) -> None:
    """The serving loop's fused graphs end on the same tick as the per-layer graphs `pipesim trace` writes."""
    from astra_driver.astra_config import AstraConfig, NetworkConfig
    from astra_driver.engine import simulate
    from llm_converter.graphs.forward import build_fused_workload, fused_steps
    from llm_converter.hardware import get_hardware
    from llm_converter.iteration import Iteration, PrefillChunk
    from llm_converter.latency import make_latency_model
    from llm_converter.layers import build_layer_list, timed_ops
    from llm_converter.models import get_model

    model = get_model("Llama-3.1-8B")
    iteration = Iteration(prefill=(PrefillChunk(300, 17),), decode=(40, 900, 5))
    latency = make_latency_model(model, get_hardware("RTXPRO6000"), tp, "float16")
    plan = ParallelPlan.even(tp, pp, model.num_layers)
    ops = timed_ops(model, iteration, tp, latency, "float16")
    per_layer = build_serving_workload(build_layer_list(model, iteration, plan, latency, "float16", ops=ops), plan, 7)
    fused = build_fused_workload(fused_steps(ops, plan, model.hidden_size, 2), plan, 7, [303 * 4096 * 2] * (pp - 1))
    config = AstraConfig(NetworkConfig(["FullyConnected"], [plan.npus], [16.0], [20_000.0]))
    a, b = simulate(per_layer, config), simulate(fused, config)
    assert a.finish_ns == b.finish_ns and a.exposed_comm_ns == b.exposed_comm_ns
    collectives = [n for n in per_layer.graphs[-1].nodes if n.type == NodeType.COMM_COLL_NODE]
    assert [(n.comm_type, n.comm_size) for n in collectives] == [
        (n.comm_type, n.comm_size) for n in fused.graphs[-1].nodes if n.type == NodeType.COMM_COLL_NODE
    ]
    compute = [n for n in fused.graphs[0].nodes if n.type == NodeType.COMP_NODE]
    # tp > 1: embedding | 2 per block | final norm + lm_head | sampler (on stage 0 when it is the last too)
    assert len(compute) == (1 if tp == 1 else 1 + 2 * len(plan.blocks_of(0)) + (2 if pp == 1 else 0))
