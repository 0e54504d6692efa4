"""Cluster config: bundled configs load, placement and weights per NPU match hand-computed values, and every
user mistake is one PipesimError line naming the file and the JSON path of the field."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from astra_driver.cluster_config import MEM_GB, ClusterConfig, load_cluster_config
from llm_converter.errors import PipesimError
from llm_converter.memory import weight_bytes_per_npu
from llm_converter.models import get_model
from llm_converter.plan import ParallelPlan
from tests.conftest import REPO

CLUSTER_DIR = REPO / "configs" / "cluster"

# The seed's single_node_pp_instance.json (seed 000), the base every mutation below starts from.
SEED: dict[str, Any] = {
    "num_nodes": 1,
    "link_bw": 16,
    "link_latency": 20000,
    "nodes": [
        {
            "num_instances": 1,
            "cpu_mem": {"mem_size": 512, "mem_bw": 256, "mem_latency": 0},
            "instances": [
                {
                    "model_name": "meta-llama/Llama-3.1-8B",
                    "hardware": "RTXPRO6000",
                    "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0},
                    "num_npus": 2,
                    "tp_size": 1,
                    "pp_size": 2,
                    "pd_type": None,
                }
            ],
        }
    ],
}

# Llama-3.1-8B parameter counts by hand (HF layout): h 4096, vocab 128256, 32 layers, 32 q heads, 8 kv heads of
# 128, gated MLP of 14336, RMSNorm, untied lm_head.
EMBEDDING = 128256 * 4096  # 525,336,576
BLOCK = 2 * 4096 + 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336  # 218,112,000
FINAL_NORM = 4096
LM_HEAD = 128256 * 4096


def write(tmp_path: Path, data: Any, name: str = "cluster.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def instance0(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["nodes"][0]["instances"][0]


def load_seed(tmp_path: Path, **instance_changes: Any) -> ClusterConfig:
    doc = copy.deepcopy(SEED)
    instance0(doc).update(instance_changes)
    return load_cluster_config(write(tmp_path, doc))


# ------------------------------------------------------------------------------------------------------------
# Valid configs
# ------------------------------------------------------------------------------------------------------------


def test_seed_config_loads_with_its_values(tmp_path: Path) -> None:
    cluster = load_cluster_config(write(tmp_path, SEED))
    assert cluster.num_nodes == 1 and cluster.link_bw == 16 and cluster.link_latency == 20000
    assert cluster.total_npus == 2
    (placed,) = cluster.instances()
    assert (placed.index, placed.node_index, placed.local_index, placed.npu_offset) == (0, 0, 0, 0)
    assert (placed.num_npus, placed.tp_size, placed.pp_size, placed.span_nodes) == (2, 1, 2, 1)
    assert placed.spec.pd_type is None
    assert placed.spec.npu_mem.mem_util == 0.9  # default when absent
    assert placed.usable_mem_bytes == int(96 * 2**30 * 0.9)
    assert placed.model.name == "meta-llama/Llama-3.1-8B"
    assert placed.hardware.name == "RTXPRO6000"
    assert placed.path == "nodes[0].instances[0]"
    # Stage 1 (blocks 16..31, final norm, lm_head) is the larger by the final norm: 4096 parameters.
    assert placed.weight_bytes_per_npu == 2 * (16 * BLOCK + FINAL_NORM + LM_HEAD) == 8_030_265_344


def test_bundled_seed_file_is_the_seed() -> None:
    assert json.loads((CLUSTER_DIR / "single_node_pp_instance.json").read_text()) == SEED


@pytest.mark.parametrize(
    ("name", "npus", "tp", "pp", "weight_bytes"),
    [
        ("single_node_single_instance.json", 1, 1, 1, 2 * (EMBEDDING + 32 * BLOCK + FINAL_NORM + LM_HEAD)),
        ("single_node_pp_instance.json", 2, 1, 2, 2 * (16 * BLOCK + FINAL_NORM + LM_HEAD)),
        ("tp2.json", 2, 2, 1, (EMBEDDING + 32 * BLOCK + FINAL_NORM + LM_HEAD)),
        ("tp2_pp2.json", 4, 2, 2, (16 * BLOCK + FINAL_NORM + LM_HEAD)),
        ("tp8_pp2.json", 16, 8, 2, None),
    ],
)
def test_bundled_configs_load(name: str, npus: int, tp: int, pp: int, weight_bytes: int | None) -> None:
    cluster = load_cluster_config(CLUSTER_DIR / name)
    (placed,) = cluster.instances()
    assert (cluster.total_npus, placed.tp_size, placed.pp_size) == (npus, tp, pp)
    if weight_bytes is not None:
        assert placed.weight_bytes_per_npu == weight_bytes
    assert placed.weight_bytes_per_npu <= placed.usable_mem_bytes


def test_all_bundled_configs_are_covered() -> None:
    assert sorted(p.name for p in CLUSTER_DIR.glob("*.json")) == [
        "pd_llama8b_rtxpro6000.json",  # 1 prefill + 1 decode instance: tests/test_serving_run_cli.py runs it
        "single_node_pp_instance.json",
        "single_node_single_instance.json",
        "tp2.json",
        "tp2_pp2.json",
        "tp8_pp2.json",
    ]


def test_two_node_instance_spans_both_nodes() -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp8_pp2.json")
    (placed,) = cluster.instances()
    assert placed.model.name == "meta-llama/Llama-3.1-70B" and placed.hardware.name == "H100-SXM"
    assert (placed.span_nodes, placed.npus_per_node, placed.node_indices) == (2, 8, [0, 1])
    assert placed.npu_ids == list(range(16))
    # Llama-3.1-70B by hand: h 8192, 80 layers, 64 q heads, 8 kv heads of 128, MLP 28672, vocab 128256.
    block = 2 * 8192 + 8192 * (8192 + 2 * 1024) + 8192 * 8192 + 3 * 8192 * 28672
    last_stage = 40 * block + 8192 + 128256 * 8192
    assert placed.weight_bytes_per_npu == 2 * last_stage // 8


def test_placement_offsets_across_nodes_and_instances(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    second = copy.deepcopy(instance0(doc)) | {"num_npus": 4, "tp_size": 2, "pp_size": 2, "pd_type": "decode"}
    instance0(doc)["pd_type"] = "prefill"
    doc["nodes"][0]["instances"].append(second)
    doc["nodes"][0]["num_instances"] = 2
    node1 = copy.deepcopy(doc["nodes"][0]) | {"num_instances": 1}
    node1["instances"] = [copy.deepcopy(instance0(doc))]
    doc["nodes"].append(node1)
    doc["num_nodes"] = 2
    cluster = load_cluster_config(write(tmp_path, doc))
    rows = [
        (p.index, p.node_index, p.local_index, p.npu_offset, p.num_npus, p.spec.pd_type) for p in cluster.instances()
    ]
    assert rows == [(0, 0, 0, 0, 2, "prefill"), (1, 0, 1, 2, 4, "decode"), (2, 1, 0, 6, 2, "prefill")]
    assert cluster.total_npus == 8
    assert cluster.instance(2).npu_ids == [6, 7]
    assert cluster.instances()[2].path == "nodes[1].instances[0]"
    with pytest.raises(PipesimError, match="instance 3 does not exist"):
        cluster.instance(3)


def test_stage_split_is_even_with_larger_stages_first() -> None:
    def stage_layer_counts(num_layers: int, pp: int) -> list[int]:
        return [end - start for start, end in ParallelPlan.even(tp=1, pp=pp, num_blocks=num_layers).stage_blocks]

    def fullest_npu(model, tp: int, pp: int, element_bytes: int) -> int:
        return max(weight_bytes_per_npu(model, ParallelPlan.even(tp, pp, model.num_layers), element_bytes))

    assert stage_layer_counts(32, 3) == [11, 11, 10]
    assert stage_layer_counts(32, 32) == [1] * 32
    model = get_model("meta-llama/Llama-3.1-8B")
    # pp 3: stage 0 = embedding + 11 blocks (2.92e9) beats stage 2 = 10 blocks + norm + lm_head (2.71e9).
    assert fullest_npu(model, 1, 3, 2) == 2 * (EMBEDDING + 11 * BLOCK)
    assert fullest_npu(model, 2, 3, 2) == EMBEDDING + 11 * BLOCK
    assert fullest_npu(model, 1, 1, 2) == model.weight_bytes("bfloat16")


def test_memory_fit_boundary(tmp_path: Path) -> None:
    need = 2 * (EMBEDDING + 32 * BLOCK + FINAL_NORM + LM_HEAD)  # 14.96 GB (GiB) on one NPU
    fits = {"mem_size": need / MEM_GB, "mem_bw": 1597, "mem_latency": 0, "mem_util": 1.0}
    load_seed(tmp_path, num_npus=1, pp_size=1, npu_mem=fits)
    too_small = fits | {"mem_size": need / MEM_GB - 0.01}
    with pytest.raises(PipesimError, match=r"need 14\.96 GB per NPU .* = 14\.95 GB"):
        load_seed(tmp_path, num_npus=1, pp_size=1, npu_mem=too_small)


def test_dtype_sizes_the_weights(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    instance0(doc).update(num_npus=1, pp_size=1, npu_mem={"mem_size": 24, "mem_bw": 1597, "mem_latency": 0})
    instance0(doc)["npu_mem"]["mem_size"] = 12
    path = write(tmp_path, doc)
    assert load_cluster_config(path, dtype="fp8").instances()[0].weight_bytes_per_npu == 8_030_261_248
    with pytest.raises(PipesimError, match="bfloat16 weights need 14.96 GB"):
        load_cluster_config(path, dtype="bfloat16")


def test_model_given_as_hf_config_path_beside_the_cluster_file(tmp_path: Path, shared_dir: Path) -> None:
    (tmp_path / "llama8b.json").write_text((shared_dir / "models" / "meta-llama" / "Llama-3.1-8B.json").read_text())
    cluster = load_seed(tmp_path, model_name="llama8b.json")
    assert cluster.instances()[0].weight_bytes_per_npu == 2 * (16 * BLOCK + FINAL_NORM + LM_HEAD)


# ------------------------------------------------------------------------------------------------------------
# Every mistake: one line, the file, the field's JSON path, what is wrong
# ------------------------------------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(*path_and_value: Any) -> Mutation:
    *path, value = path_and_value

    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(*path: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


def _instance(**changes: Any) -> Mutation:
    return lambda doc: instance0(doc).update(changes)


I0 = ("nodes", 0, "instances", 0)
P0 = "nodes[0].instances[0]"

MUTATIONS: list[tuple[str, Mutation, str, str]] = [
    ("missing top field", _delete("num_nodes"), "num_nodes", "missing; add it"),
    ("extra top field", _set("link_speed", 3), "link_speed", "unknown field; remove it"),
    ("missing instance field", _delete(*I0, "tp_size"), f"{P0}.tp_size", "missing; add it"),
    ("missing npu_mem", _delete(*I0, "npu_mem"), f"{P0}.npu_mem", "an object with mem_size, mem_bw"),
    ("extra npu_mem field", _set(*I0, "npu_mem", "bogus", 1), f"{P0}.npu_mem.bogus", "allowed here: mem_size"),
    ("extra cpu_mem field", _set("nodes", 0, "cpu_mem", "mem_util", 0.5), "nodes[0].cpu_mem.mem_util", "unknown"),
    ("npus != tp*pp", _instance(num_npus=3), f"{P0}.num_npus", "3 != tp_size * pp_size = 1 * 2 = 2"),
    ("pp_size 0", _instance(pp_size=0, num_npus=0), f"{P0}.num_npus", "must be >= 1"),
    ("pp_size 0 only", _instance(pp_size=0), f"{P0}.pp_size", "must be >= 1"),
    ("pp beyond layers", _instance(pp_size=33, num_npus=33), f"{P0}.pp_size", "32 decoder layers; use pp_size <= 32"),
    ("tp not dividing heads", _instance(tp_size=3, pp_size=1, num_npus=3), f"{P0}.tp_size", "use one of 1, 2, 4, 8"),
    ("tp not dividing kv heads", _instance(tp_size=16, pp_size=1, num_npus=16), f"{P0}.tp_size", "num_kv_heads 8"),
    ("mem_util 0", _set(*I0, "npu_mem", "mem_util", 0), f"{P0}.npu_mem.mem_util", "outside (0, 1]"),
    ("mem_util > 1", _set(*I0, "npu_mem", "mem_util", 1.5), f"{P0}.npu_mem.mem_util", "outside (0, 1]"),
    (
        "weights do not fit",
        _set(*I0, "npu_mem", "mem_size", 8),
        f"{P0}.npu_mem.mem_size",
        "need 7.48 GB per NPU (largest of 2 stages / tp 1) but mem_size * mem_util = 8 * 0.9 = 7.20 GB; "
        "use a larger tp_size or pp_size",
    ),
    ("unknown model", _instance(model_name="llama-9000"), f"{P0}.model_name", "meta-llama/Llama-3.1-8B"),
    ("unknown hardware", _instance(hardware="TPUv9"), f"{P0}.hardware", "RTXPRO6000"),
    ("num_nodes mismatch", _set("num_nodes", 2), "num_nodes", "says 2 but nodes lists 1"),
    ("num_instances mismatch", _set("nodes", 0, "num_instances", 2), "nodes[0].num_instances", "says 2"),
    ("link_bw 0", _set("link_bw", 0), "link_bw", "must be > 0, got 0"),
    ("link_latency < 0", _set("link_latency", -1), "link_latency", "must be >= 0, got -1"),
    ("npu mem_bw < 0", _set(*I0, "npu_mem", "mem_bw", -5), f"{P0}.npu_mem.mem_bw", "must be > 0"),
    ("npu mem_size 0", _set(*I0, "npu_mem", "mem_size", 0), f"{P0}.npu_mem.mem_size", "must be > 0"),
    ("cpu mem_size 0", _set("nodes", 0, "cpu_mem", "mem_size", 0), "nodes[0].cpu_mem.mem_size", "must be > 0"),
    ("npus as string", _instance(num_npus="2"), f"{P0}.num_npus", 'expected an integer, got "2"'),
    ("npus as float", _instance(num_npus=2.0), f"{P0}.num_npus", "expected an integer, got 2.0"),
    ("npus as bool", _instance(num_npus=True), f"{P0}.num_npus", "expected an integer, got true"),
    ("bad pd_type", _instance(pd_type="both"), f"{P0}.pd_type", 'expected null, "prefill" or "decode"'),
    ("model_name not a string", _instance(model_name=8), f"{P0}.model_name", "expected a string"),
    ("nodes not a list", _set("nodes", {}), "nodes", "expected a list"),
    ("span past last node", _instance(span_nodes=2), f"{P0}.span_nodes", "runs past the last node"),
    ("no instances", _set("nodes", 0, "instances", []), "nodes[0].num_instances", "says 1 but instances lists 0"),
]


@pytest.mark.parametrize(("label", "mutate", "field", "what"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mistake_is_one_line_naming_file_and_field(
    tmp_path: Path, label: str, mutate: Mutation, field: str, what: str
) -> None:
    doc = copy.deepcopy(SEED)
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(PipesimError) as caught:
        load_cluster_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert what in message, message
    assert "pydantic" not in message and "For further information" not in message


def test_not_json(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "num_nodes": 1,\n  "link_bw": ,\n}')
    with pytest.raises(PipesimError, match=r"cluster\.json: line 3 column 14: not valid JSON"):
        load_cluster_config(path)


def test_top_level_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match=r"\(top level\): expected an object"):
        load_cluster_config(write(tmp_path, [1, 2]))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match="no such file"):
        load_cluster_config(tmp_path / "absent.json")


def test_counts_more_problems_without_listing_them(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    del doc["link_bw"]
    doc["extra"] = 1
    with pytest.raises(PipesimError, match=r"link_bw: missing; add it \(a number in GB/s\) \(1 more problem after"):
        load_cluster_config(write(tmp_path, doc))


def test_hf_config_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match=re.escape(f"{P0}.model_name: absent.json")):
        load_seed(tmp_path, model_name="absent.json")


def test_span_covers_a_node_that_lists_an_instance(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    instance0(doc).update(num_npus=4, tp_size=2, pp_size=2, span_nodes=2)
    doc["nodes"].append(copy.deepcopy(doc["nodes"][0]))
    doc["num_nodes"] = 2
    with pytest.raises(PipesimError, match=r"nodes\[1\]\.instances: this node is occupied by nodes\[0\]\.instances"):
        load_cluster_config(write(tmp_path, doc))


@pytest.mark.parametrize(("npus", "tp", "pp"), [(8, 8, 1), (8, 2, 4), (4, 1, 4)])
def test_span_must_put_one_stage_on_each_node(tmp_path: Path, npus: int, tp: int, pp: int) -> None:
    doc = copy.deepcopy(SEED)
    instance0(doc).update(num_npus=npus, tp_size=tp, pp_size=pp, span_nodes=2)
    doc["nodes"].append({"num_instances": 0, "cpu_mem": doc["nodes"][0]["cpu_mem"], "instances": []})
    doc["num_nodes"] = 2
    expected = f"{P0}.span_nodes: {npus // 2} NPUs per node but tp_size is {tp}; an instance across nodes must put "
    with pytest.raises(PipesimError, match=re.escape(expected) + rf".*set span_nodes to pp_size = {pp}\)$"):
        load_cluster_config(write(tmp_path, doc))


def _two_instances(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(SEED)
    base = instance0(doc)
    doc["nodes"][0]["instances"] = [base | first, copy.deepcopy(base) | second]
    doc["nodes"][0]["num_instances"] = 2
    return doc


@pytest.mark.parametrize(
    ("first", "second", "field", "what"),
    [
        ({"pd_type": "prefill"}, {"pd_type": None}, "nodes[0].instances[1].pd_type", "null while other instances"),
        ({"pd_type": "prefill"}, {"pd_type": "prefill"}, "nodes[0].instances[0].pd_type", 'no instance is "decode"'),
        (
            {"pd_type": "prefill"},
            {"pd_type": "decode", "model_name": "meta-llama/Llama-3.1-70B", "num_npus": 8, "tp_size": 8, "pp_size": 1},
            "nodes[0].instances[1].model_name",
            "must serve the same model",
        ),
    ],
)
def test_disaggregation_needs_both_roles_on_one_model(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], field: str, what: str
) -> None:
    path = write(tmp_path, _two_instances(first, second))
    with pytest.raises(PipesimError) as caught:
        load_cluster_config(path)
    assert str(caught.value).startswith(f"{path}: {field}: ") and what in str(caught.value)


def test_disaggregated_pair_loads(tmp_path: Path) -> None:
    cluster = load_cluster_config(write(tmp_path, _two_instances({"pd_type": "prefill"}, {"pd_type": "decode"})))
    assert [p.spec.pd_type for p in cluster.instances()] == ["prefill", "decode"]
    assert [p.npu_offset for p in cluster.instances()] == [0, 2]


def test_node_network_dimensions() -> None:
    """cluster_network.node_network: one dimension up to a node, else [gpus_per_node, nodes]; a 1-GPU node is the
    inter-node dimension alone (ASTRA-Sim refuses dimensions of one NPU)."""
    from astra_driver.cluster_network import DEFAULT_INTER_NODE_BW_GBPS, hardware_node_network, node_network
    from llm_converter.hardware import get_hardware

    assert DEFAULT_INTER_NODE_BW_GBPS == 50.0  # 400 Gb/s / 8 bits
    flat = node_network(8, 8, 450, 50, 1000, 5000)
    assert (flat.npus_count, flat.bandwidth, flat.latency) == ([8], [450.0], [1000.0])
    two = node_network(128, 8, 450, 50, 1000, 5000)
    assert (two.npus_count, two.bandwidth, two.latency) == ([8, 16], [450.0, 50.0], [1000.0, 5000.0])
    one_per_node = node_network(4, 1, 450, 50, 1000, 5000)
    assert (one_per_node.npus_count, one_per_node.bandwidth) == ([4], [50.0])
    pcie = hardware_node_network(get_hardware("RTXPRO6000"), 16)
    assert (pcie.npus_count, pcie.bandwidth, pcie.latency) == ([8, 2], [64.0, 50.0], [2000.0, 5000.0])
    with pytest.raises(PipesimError, match="--gpus-per-node 8: 12 NPUs do not fill whole nodes"):
        node_network(12, 8, 450, 50)
    with pytest.raises(PipesimError, match="--inter-node-bw 0: must be > 0 GB/s"):
        node_network(16, 8, 450, 0)
