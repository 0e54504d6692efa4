"""Loaders of ASTRA-Sim's config files: values read right, and every bad input is a one-line PipesimError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.astra_config import (
    AstraConfig,
    NetworkConfig,
    check_workload_matches,
    load_astra_config,
    load_comm_groups,
    load_memory,
    load_network,
    load_system,
)
from llm_converter.errors import PipesimError
from llm_converter.graph import GraphBuilder, Workload
from tests.conftest import CONFORMANCE

NETWORK = "topology: [ Ring, Switch ]\nnpus_count: [ 2, 4 ]\nbandwidth: [ 400.0, 50.0 ]\nlatency: [ 936.25, 500.0 ]\n"
SYSTEM = {
    "scheduling-policy": "LIFO",
    "endpoint-delay": 10,
    "active-chunks-per-dimension": 1,
    "preferred-dataset-splits": 4,
    "all-reduce-implementation": ["ring", "halvingDoubling"],
    "all-gather-implementation": ["ring", "ring"],
    "reduce-scatter-implementation": ["ring", "direct"],
    "all-to-all-implementation": ["ring", "ring"],
    "collective-optimization": "localBWAware",
    "local-mem-bw": 1600,
    "boost-mode": 0,
    "roofline-enabled": 1,
    "peak-perf": 900,
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _files(tmp_path: Path, network: str = NETWORK, system: dict | None = None, memory: dict | None = None):
    return (
        _write(tmp_path, "system.json", json.dumps(SYSTEM if system is None else system)),
        _write(tmp_path, "network.yml", network),
        _write(tmp_path, "memory.json", json.dumps(memory or {"memory-type": "NO_MEMORY_EXPANSION"})),
    )


def test_load_astra_config_reads_every_field(tmp_path: Path) -> None:
    system, network, memory = _files(tmp_path)
    groups = _write(tmp_path, "groups.json", json.dumps({"1": [0, 1], "2": [2, 3, 4, 5]}))
    config = load_astra_config(system, network, memory, groups)
    assert config.network == NetworkConfig(["Ring", "Switch"], [2, 4], [400.0, 50.0], [936.25, 500.0])
    assert config.network.npus == 8 and config.network.dims == 2
    assert config.system.all_reduce_implementation == ["ring", "halvingDoubling"]
    assert config.system.reduce_scatter_implementation == ["ring", "direct"]
    assert config.system.roofline_enabled is True and config.system.replay_only is False
    assert config.system.local_mem_bw == 1600.0 and config.system.peak_perf == 900.0
    assert config.system.endpoint_delay == 10 and config.system.preferred_dataset_splits == 4
    assert config.memory.memory_type == "NO_MEMORY_EXPANSION"
    assert config.comm_groups == {"1": [0, 1], "2": [2, 3, 4, 5]}


def test_memory_expansion_fields(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "m.json",
        json.dumps(
            {
                "memory-type": "PER_NPU_MEMORY_EXPANSION",
                "num-nodes": 2,
                "num-npus-per-node": 4,
                "remote-mem-latency": 100,
                "remote-mem-bw": 64,
            }
        ),
    )
    memory = load_memory(path)
    assert (memory.memory_type, memory.num_nodes, memory.num_npus_per_node) == ("PER_NPU_MEMORY_EXPANSION", 2, 4)
    assert (memory.remote_mem_latency, memory.remote_mem_bw) == (100.0, 64.0)


def test_network_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    """yaml-cpp (ASTRA-Sim) reads 5e1 and 1e-05 as numbers; YAML 1.1 (PyYAML) would read them as strings."""
    text = "topology: [ Ring, Switch ]\nnpus_count: [ 4, 2 ]\nbandwidth: [ 5e1, 1E+2 ]\nlatency: [ 1e-05, -0e0 ]\n"
    network = load_network(_write(tmp_path, "network.yml", text))
    assert network == NetworkConfig(["Ring", "Switch"], [4, 2], [50.0, 100.0], [1e-05, 0.0])


@pytest.mark.parametrize(
    ("network", "fragment"),
    [
        ("topology: [ Torus ]\nnpus_count: [ 4 ]\nbandwidth: [ 50 ]\nlatency: [ 500 ]\n", "unknown 'Torus'"),
        ("topology: [ Ring, Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50, 50 ]\nlatency: [ 5, 5 ]\n", "npus_count has 1"),
        ("topology: [ Ring ]\nnpus_count: [ 1 ]\nbandwidth: [ 50 ]\nlatency: [ 500 ]\n", "at least 2 NPUs"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 0 ]\nlatency: [ 500 ]\n", "bandwidth must be > 0"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ -5 ]\nlatency: [ 500 ]\n", "bandwidth must be > 0"),
        ("topology: [ Ring ]\nnpus_count: [ 4 ]\nlatency: [ 500 ]\n", "missing key 'bandwidth'"),
        ("topology: [ Ring\nnpus_count: [", "not valid YAML"),
    ],
)
def test_bad_network(tmp_path: Path, network: str, fragment: str) -> None:
    path = _write(tmp_path, "network.yml", network)
    with pytest.raises(PipesimError) as info:
        load_network(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"endpoint-delay": -1}, "endpoint-delay = -1"),  # 0 loads: refused where a collective runs (backends)
        ({"local-mem-bw": 0}, "local-mem-bw = 0"),
        ({"all-reduce-implementation": ["ring", "tree"]}, "unknown 'tree'; allowed: ring, oneRing"),
        ({"all-gather-implementation": ["ring"]}, "has 1 entries but the network has 2 dimensions"),
        ({"scheduling-policy": "RANDOM"}, "scheduling-policy"),
        ({"roofline-enabled": 2}, "roofline-enabled: expected 0 or 1"),
    ],
)
def test_bad_system(tmp_path: Path, change: dict, fragment: str) -> None:
    system, network, memory = _files(tmp_path, system={**SYSTEM, **change})
    with pytest.raises(PipesimError) as info:
        load_astra_config(system, network, memory)
    assert fragment in str(info.value) and "system.json" in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match="no such file"):
        load_system(tmp_path / "absent.json")
    broken = _write(tmp_path, "broken.json", "{ not json")
    with pytest.raises(PipesimError, match="not valid JSON"):
        load_system(broken)
    with pytest.raises(PipesimError, match="unknown 'HBM'"):
        load_memory(_write(tmp_path, "m.json", json.dumps({"memory-type": "HBM"})))
    with pytest.raises(PipesimError, match="rank 9 is outside the network's 8 NPUs"):
        load_comm_groups(_write(tmp_path, "g.json", json.dumps({"1": [0, 9]})), npus=8)


def test_check_workload_matches() -> None:
    config = AstraConfig(network=NetworkConfig(["Ring"], [4], [50.0], [500.0]))
    graphs = [GraphBuilder(rank).graph for rank in range(2)]
    with pytest.raises(PipesimError, match="workload has 2 ranks but network.yml describes 4 NPUs"):
        check_workload_matches(Workload(graphs), config)
    check_workload_matches(Workload([GraphBuilder(rank).graph for rank in range(4)]), config)


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared not found")
def test_every_conformance_config_loads() -> None:
    for case in sorted(CONFORMANCE.iterdir()):
        groups = case / "comm_groups.json"
        config = load_astra_config(
            case / "system.json", case / "network.yml", case / "memory.json", groups if groups.exists() else None
        )
        assert config.network.npus >= 2
