"""ASTRA-Sim config files: the cluster -> AstraConfig mapping, exact rendered text, round trips through the
loaders (our configs, the conformance cases' configs, network/), and refusals of what ASTRA-Sim rejects."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from astra_driver.astra_config import (
    AstraConfig,
    MemoryConfig,
    NetworkConfig,
    SystemConfig,
    load_astra_config,
    load_network,
)
from astra_driver.astra_files import (
    astra_config_for_instance,
    render_astra_files,
    write_astra_files,
)
from astra_driver.cluster_config import cluster_config_from_dict, load_cluster_config
from llm_converter.errors import PipesimError
from llm_converter.hardware import get_hardware
from llm_converter.plan import ParallelPlan
from tests.conftest import CONFORMANCE, REPO, conformance_cases
from tests.test_cluster_config import SEED, instance0

CLUSTER_DIR = REPO / "configs" / "cluster"


def load_back(paths: dict[str, Path]) -> AstraConfig:
    return load_astra_config(paths["system"], paths["network"], paths["memory"], paths.get("comm_groups"))


# ------------------------------------------------------------------------------------------------------------
# Cluster config -> AstraConfig
# ------------------------------------------------------------------------------------------------------------


def test_seed_instance_maps_to_fully_connected_link_network() -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "single_node_pp_instance.json")
    config = astra_config_for_instance(cluster, 0)
    assert config.network == NetworkConfig(["FullyConnected"], [2], [16.0], [20000.0])
    assert config.system.local_mem_bw == 1597  # npu_mem.mem_bw
    assert config.system.peak_perf == get_hardware("RTXPRO6000").peak_tflops
    assert config.system.all_reduce_implementation == ["ring"]
    assert config.memory == MemoryConfig()
    assert config.comm_groups == {}


def test_link_bw_and_latency_flow_into_the_network() -> None:
    doc = copy.deepcopy(SEED) | {"link_bw": 64, "link_latency": 1500.5}
    network = astra_config_for_instance(cluster_config_from_dict(doc), 0).network
    assert (network.bandwidth, network.latency) == ([64.0], [1500.5])


def test_instance_argument_forms_agree() -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp2_pp2.json")
    placed = cluster.instances()[0]
    by_index = astra_config_for_instance(cluster, 0)
    assert astra_config_for_instance(cluster, placed) == by_index
    assert astra_config_for_instance(cluster, placed.spec) == by_index


def test_two_node_instance_gets_a_2d_network() -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp8_pp2.json")
    placed = cluster.instances()[0]
    plan = ParallelPlan.even(placed.tp_size, placed.pp_size, placed.model.num_layers)
    config = astra_config_for_instance(cluster, placed, plan.comm_groups())
    h100 = get_hardware("H100-SXM")
    assert config.network == NetworkConfig(
        ["FullyConnected", "FullyConnected"],
        [8, 2],
        [h100.interconnect_gbps, 50.0],  # dim 0 NVLink from the hardware, dim 1 the cluster's link_bw
        [h100.interconnect_latency_ns, 5000.0],
    )
    assert config.system.all_gather_implementation == ["ring", "ring"]
    assert config.system.local_mem_bw == 3350 and config.system.peak_perf == h100.peak_tflops
    # Each TP group (the consecutive ranks of a stage) is exactly one node: dimension 0.
    assert config.comm_groups == {"1": list(range(8)), "2": list(range(8, 16))}


def test_span_with_one_npu_per_node_drops_the_empty_dimension() -> None:
    doc = copy.deepcopy(SEED)
    instance0(doc)["span_nodes"] = 2
    doc["nodes"].append({"num_instances": 0, "cpu_mem": doc["nodes"][0]["cpu_mem"], "instances": []})
    doc["num_nodes"] = 2
    network = astra_config_for_instance(cluster_config_from_dict(doc), 0).network
    assert network == NetworkConfig(["FullyConnected"], [2], [16.0], [20000.0])


def test_remote_memory_comes_from_the_node_cpu_mem(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    doc["nodes"][0]["cpu_mem"] = {"mem_size": 512, "mem_bw": 256, "mem_latency": 700}
    config = astra_config_for_instance(cluster_config_from_dict(doc), 0, remote_memory=True)
    assert config.memory == MemoryConfig("PER_NODE_MEMORY_EXPANSION", 1, 2, 700.0, 256.0)
    assert load_back(write_astra_files(tmp_path, config)) == config


def test_one_npu_instance_is_refused_for_astra_sim(tmp_path: Path) -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "single_node_single_instance.json")
    config = astra_config_for_instance(cluster, 0)
    assert config.network.npus_count == [1]  # the truth, for the builtin engine: no invented second NPU
    with pytest.raises(PipesimError) as caught:
        write_astra_files(tmp_path / "out", config)
    message = str(caught.value)
    assert "npus_count[0] = 1" in message and "at least 2 NPUs per dimension" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------
# Rendering and writing
# ------------------------------------------------------------------------------------------------------------


def test_rendered_text_of_the_tp2_pp2_instance() -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp2_pp2.json")
    texts = render_astra_files(astra_config_for_instance(cluster, 0, {"1": [0, 1], "2": [2, 3]}))
    assert texts["network.yml"] == (
        "topology: [ FullyConnected ]\nnpus_count: [ 4 ]\nbandwidth: [ 16.0 ]\nlatency: [ 20000.0 ]\n"
    )
    assert json.loads(texts["system.json"]) == {
        "scheduling-policy": "LIFO",
        "endpoint-delay": 10,
        "active-chunks-per-dimension": 1,
        "preferred-dataset-splits": 4,
        "all-reduce-implementation": ["ring"],
        "all-gather-implementation": ["ring"],
        "reduce-scatter-implementation": ["ring"],
        "all-to-all-implementation": ["ring"],
        "collective-optimization": "localBWAware",
        "local-mem-bw": 1597,
        "peak-perf": get_hardware("RTXPRO6000").peak_tflops,
        "roofline-enabled": 0,
        "replay-only": 0,
        "trace-enabled": 0,
        "track-local-mem": 0,
    }
    assert '"local-mem-bw": 1597,' in texts["system.json"]  # integral numbers written as integers
    assert json.loads(texts["memory.json"]) == {"memory-type": "NO_MEMORY_EXPANSION"}
    assert json.loads(texts["comm_groups.json"]) == {"1": [0, 1], "2": [2, 3]}


def test_write_returns_paths_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp2.json")
    without_groups = write_astra_files(tmp_path / "a", astra_config_for_instance(cluster, 0))
    assert set(without_groups) == {"network", "system", "memory"}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["memory.json", "network.yml", "system.json"]
    with_groups = write_astra_files(tmp_path / "b", astra_config_for_instance(cluster, 0, {"1": [0, 1]}))
    assert with_groups["comm_groups"] == tmp_path / "b" / "comm_groups.json"
    assert len(list((tmp_path / "b").iterdir())) == 4


@pytest.mark.parametrize("name", ["single_node_pp_instance.json", "tp2.json", "tp2_pp2.json", "tp8_pp2.json"])
def test_bundled_configs_round_trip_through_the_loaders(tmp_path: Path, name: str) -> None:
    cluster = load_cluster_config(CLUSTER_DIR / name)
    placed = cluster.instances()[0]
    plan = ParallelPlan.even(placed.tp_size, placed.pp_size, placed.model.num_layers)
    config = astra_config_for_instance(cluster, placed, plan.comm_groups())
    assert load_back(write_astra_files(tmp_path, config)) == config


def test_every_field_round_trips(tmp_path: Path) -> None:
    config = AstraConfig(
        network=NetworkConfig(["Ring", "Switch", "FullyConnected"], [2, 4, 3], [400.0, 50.5, 12.25], [936.25, 0, 7]),
        system=SystemConfig(
            scheduling_policy="FIFO",
            endpoint_delay=25,
            active_chunks_per_dimension=2,
            preferred_dataset_splits=16,
            all_reduce_implementation=["ring", "halvingDoubling", "direct"],
            all_gather_implementation=["oneRing", "ring", "doubleBinaryTree"],
            reduce_scatter_implementation=["ring", "oneDirect", "ring"],
            all_to_all_implementation=["direct", "direct", "oneHalvingDoubling"],
            collective_optimization="baseline",
            local_mem_bw=1234.5,
            peak_perf=0.125,
            roofline_enabled=True,
            replay_only=True,
            trace_enabled=True,
            track_local_mem=True,
        ),
        memory=MemoryConfig("MEMORY_POOL", 3, 8, 1500.5, 64.0),
        comm_groups={"1": [0, 5, 23], "12": [7]},
    )
    assert load_back(write_astra_files(tmp_path, config)) == config


def test_exponent_floats_round_trip(tmp_path: Path) -> None:
    """repr writes 1e-05 and 1e+16, which YAML 1.1 reads back as strings: network.yml must write a dot."""
    network = NetworkConfig(["Ring", "Switch"], [2, 2], [1e16, 2.5e-07], [1e-05, 3e20])
    config = AstraConfig(network=network, system=_system_for(2))
    text = render_astra_files(config)["network.yml"]
    assert "bandwidth: [ 1.0e+16, 2.5e-07 ]" in text
    assert "latency: [ 1.0e-05, 3.0e+20 ]" in text
    assert load_back(write_astra_files(tmp_path, config)) == config


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_configs_round_trip(tmp_path: Path, case: str) -> None:
    folder = CONFORMANCE / case
    groups = folder / "comm_groups.json"
    original = load_astra_config(
        folder / "system.json", folder / "network.yml", folder / "memory.json", groups if groups.is_file() else None
    )
    assert load_back(write_astra_files(tmp_path, original)) == original


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ring_4.yml", NetworkConfig(["Ring"], [4], [50.0], [500.0])),
        ("fully_connected_8.yml", NetworkConfig(["FullyConnected"], [8], [64.0], [700.0])),
        ("switch_8.yml", NetworkConfig(["Switch"], [8], [450.0], [500.0])),
        ("hgx_2x8.yml", NetworkConfig(["Switch", "Switch"], [8, 2], [450.0, 50.0], [500.0, 2500.0])),
    ],
)
def test_bundled_network_files_load(tmp_path: Path, name: str, expected: NetworkConfig) -> None:
    network = load_network(REPO / "network" / name)
    assert network == expected
    paths = write_astra_files(tmp_path, AstraConfig(network=network, system=_system_for(network.dims)))
    assert load_network(paths["network"]) == expected


def _system_for(dims: int) -> SystemConfig:
    ring = ["ring"] * dims
    return SystemConfig(
        all_reduce_implementation=ring,
        all_gather_implementation=ring,
        reduce_scatter_implementation=ring,
        all_to_all_implementation=ring,
    )


BASE = AstraConfig(network=NetworkConfig(["Ring"], [4], [50.0], [500.0]))


@pytest.mark.parametrize(
    ("config", "what"),
    [
        (replace(BASE, network=NetworkConfig(["Torus"], [4], [50.0], [500.0])), "topology: unknown 'Torus'"),
        (replace(BASE, network=NetworkConfig(["Ring"], [4, 2], [50.0], [500.0])), "npus_count has 2 entries"),
        (replace(BASE, network=NetworkConfig(["Ring"], [4], [0.0], [500.0])), "bandwidth[0] = 0"),
        (replace(BASE, network=NetworkConfig(["Ring"], [4], [1.0], [-1.0])), "latency[0] = -1"),
        (replace(BASE, network=NetworkConfig(["Ring"], [4], [math.inf], [500.0])), "bandwidth[0] = inf"),
        (replace(BASE, network=NetworkConfig(["Ring"], [4], [50.0], [math.nan])), "latency[0] = nan"),
        (replace(BASE, system=SystemConfig(peak_perf=math.inf)), "peak-perf = inf"),
        (replace(BASE, memory=MemoryConfig("MEMORY_POOL", remote_mem_bw=math.inf)), "remote-mem-bw = inf"),
        (replace(BASE, system=_system_for(2)), "all-reduce-implementation has 2 entries but the network has 1"),
        (replace(BASE, system=SystemConfig(all_gather_implementation=["tree"])), "unknown 'tree'"),
        (replace(BASE, system=SystemConfig(endpoint_delay=0)), "endpoint-delay = 0"),
        (replace(BASE, system=SystemConfig(scheduling_policy="RANDOM")), "scheduling-policy: unknown 'RANDOM'"),
        (replace(BASE, system=SystemConfig(local_mem_bw=0)), "local-mem-bw = 0"),
        (replace(BASE, memory=MemoryConfig("PER_NPU_MEMORY_EXPANSION")), "remote-mem-bw = 0"),
        (replace(BASE, memory=MemoryConfig("DISK")), "memory-type: unknown 'DISK'"),
        (replace(BASE, comm_groups={"0": [0, 1]}), "group '0'"),
        (replace(BASE, comm_groups={"1": [0, 4]}), "rank 4 is outside the network's 4 NPUs"),
        (replace(BASE, comm_groups={"1": [1, 1]}), "a rank appears twice"),
        (replace(BASE, comm_groups={"1": []}), "no ranks"),
    ],
)
def test_what_astra_sim_rejects_is_refused_before_writing(tmp_path: Path, config: AstraConfig, what: str) -> None:
    with pytest.raises(PipesimError) as caught:
        write_astra_files(tmp_path / "out", config)
    assert what in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'out'}: cannot write ASTRA-Sim config files: ")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------
# The seed's claim, end to end on the builtin engine: link_bw / link_latency move a PP send's time
# ------------------------------------------------------------------------------------------------------------

SEND_BYTES = 8 * 2**20


def _finish_of_one_send(doc: dict, src: int, dst: int) -> int:
    from astra_driver.engine import simulate
    from llm_converter.graph import GraphBuilder, Workload

    cluster = cluster_config_from_dict(doc)
    config = astra_config_for_instance(cluster, 0)
    builders = [GraphBuilder(rank) for rank in range(config.network.npus)]
    for rank, builder in enumerate(builders):
        if rank == src:
            builder.send("activations", dst=dst, tag=7, size=SEND_BYTES, deps=[builder.comp("stage", 100)])
        elif rank == dst:
            builder.comp("next_stage", 100, deps=[builder.recv("activations", src=src, tag=7, size=SEND_BYTES)])
        else:
            builder.comp("idle", 1)
    result = simulate(Workload([b.graph for b in builders]), config)
    return result.finish_ns[dst]


def _message_ns(bandwidth_gb: float, latency_ns: float) -> int:
    # ASTRA-Sim's analytical delay, one hop (FullyConnected): floor(latency + size / (bw * 2^30 / 1e9)).
    return int(latency_ns + SEND_BYTES / (bandwidth_gb * 2**30 / 1e9))


def test_link_bw_and_latency_move_a_pipeline_send() -> None:
    base = _finish_of_one_send(SEED, 0, 1)
    faster = _finish_of_one_send(copy.deepcopy(SEED) | {"link_bw": 64}, 0, 1)
    slower = _finish_of_one_send(copy.deepcopy(SEED) | {"link_latency": 30000}, 0, 1)
    assert base - faster == _message_ns(16, 20000) - _message_ns(64, 20000) == 508_281 - 142_070
    assert slower - base == 10_000


def test_two_node_instance_sends_across_nodes_on_the_cluster_link() -> None:
    doc = json.loads((CLUSTER_DIR / "tp8_pp2.json").read_text())
    across = _finish_of_one_send(doc, 0, 8)  # stage 0 -> stage 1: node 0 -> node 1
    across_fast = _finish_of_one_send(doc | {"link_bw": 100}, 0, 8)
    assert across - across_fast == _message_ns(50, 5000) - _message_ns(100, 5000)
    inside = _finish_of_one_send(doc, 0, 1)  # within node 0: NVLink, untouched by link_bw
    assert inside == _finish_of_one_send(doc | {"link_bw": 100}, 0, 1)
    h100 = get_hardware("H100-SXM")
    expected = _message_ns(h100.interconnect_gbps, h100.interconnect_latency_ns)
    assert across - inside == _message_ns(50, 5000) - expected


def test_group_ids_are_written_as_the_integers_astra_sim_reads(tmp_path: Path) -> None:
    cluster = load_cluster_config(CLUSTER_DIR / "tp2_pp2.json")
    config = astra_config_for_instance(cluster, 0, {"01": [0, 1], "2": [2, 3]})
    assert config.comm_groups == {"1": [0, 1], "2": [2, 3]}
    paths = write_astra_files(tmp_path, config)
    assert json.loads(paths["comm_groups"].read_text()) == {"1": [0, 1], "2": [2, 3]}


def test_comm_groups_written_alone_pass_the_same_checks(tmp_path: Path) -> None:
    from astra_driver.astra_files import write_comm_groups

    path = write_comm_groups(tmp_path, {"01": [0, 1], "2": [2, 3]})
    assert json.loads(path.read_text()) == {"1": [0, 1], "2": [2, 3]}
    with pytest.raises(PipesimError, match=r"comm_groups.json: group 1: a rank appears twice"):
        write_comm_groups(tmp_path / "bad", {"1": [0, 0]})
    assert not (tmp_path / "bad").exists()
