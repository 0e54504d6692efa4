"""Loaders of ASTRA-Sim's config files: values read right, and every bad input is a one-line PipesimError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.astra_config import (
    AstraConfig,
    MemoryConfig,
    NetworkConfig,
    SystemConfig,
    check_workload_matches,
    load_astra_config,
    load_comm_groups,
    load_memory,
    load_network,
    load_system,
)
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, GraphBuilder, Workload
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


# ---------------------------------------------------------------------------------------------------------
# Issue 6: one set of checks for loaders and writer; hostile files; group ids as integers
# ---------------------------------------------------------------------------------------------------------

GOOD_NETWORK = "topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50.0 ]\nlatency: [ 500.0 ]\n"


@pytest.mark.parametrize(
    ("network", "system", "memory", "config"),
    [
        ("bandwidth: [ .inf ]", None, None, {"network": NetworkConfig(["Ring"], [4], [float("inf")], [500.0])}),
        ("latency: [ -1 ]", None, None, {"network": NetworkConfig(["Ring"], [4], [50.0], [-1.0])}),
        ("npus_count: [ 1 ]", None, None, {"network": NetworkConfig(["Ring"], [1], [50.0], [500.0])}),
        ("topology: [ Torus ]", None, None, {"network": NetworkConfig(["Torus"], [4], [50.0], [500.0])}),
        (None, {"peak-perf": float("inf")}, None, {"system": SystemConfig(peak_perf=float("inf"))}),
        (None, {"local-mem-bw": float("nan")}, None, {"system": SystemConfig(local_mem_bw=float("nan"))}),
        (None, {"scheduling-policy": "RANDOM"}, None, {"system": SystemConfig(scheduling_policy="RANDOM")}),
        (None, {"endpoint-delay": -1}, None, {"system": SystemConfig(endpoint_delay=-1)}),
        (None, None, {"memory-type": "DISK"}, {"memory": MemoryConfig("DISK")}),
        (
            None,
            None,
            {"memory-type": "MEMORY_POOL", "remote-mem-bw": float("inf"), "remote-mem-latency": 0},
            {"memory": MemoryConfig("MEMORY_POOL", remote_mem_bw=float("inf"))},
        ),
    ],
)
def test_loader_and_writer_refuse_the_same_values_in_the_same_words(
    tmp_path: Path, network: str | None, system: dict | None, memory: dict | None, config: dict
) -> None:
    """The checks have one home: a value the writer refuses, the loader refuses (non-finite ones too), alike."""
    from dataclasses import replace

    from astra_driver.astra_files import write_astra_files

    lines = dict(line.split(": ", 1) for line in GOOD_NETWORK.splitlines())
    if network:
        key, value = network.split(": ", 1)
        lines[key] = value
    one_dim = {key: ["ring"] for key in SYSTEM if key.endswith("-implementation")}
    files = _files(
        tmp_path,
        network="".join(f"{key}: {value}\n" for key, value in lines.items()),
        system={**SYSTEM, **one_dim, **(system or {})},
        memory=memory,
    )
    with pytest.raises(PipesimError) as loading:
        load_astra_config(*files)
    base = AstraConfig(network=NetworkConfig(["Ring"], [4], [50.0], [500.0]))
    with pytest.raises(PipesimError) as writing:
        write_astra_files(tmp_path / "out", replace(base, **config))
    loaded = str(loading.value)
    written = str(writing.value).split("cannot write ASTRA-Sim config files: ", 1)[1]
    name = written.split(":", 1)[0]
    assert loaded.startswith(f"{tmp_path / name}: ")
    assert loaded.split(": ", 1)[1] == written.split(": ", 1)[1]


def _hostile(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


HOSTILE = {
    "invalid UTF-8": (b'{"memory-type": "NO_MEMORY\xff\xfe"}', "memory-type: not valid UTF-8 text (byte 0xff)"),
    "invalid UTF-8 outside text": (b'{"memory-type":\n \xc3 "x"}', "line 2, byte 17: not valid UTF-8 text"),
    "lone UTF-16 surrogate": (b'{"a": ["ok", "\\ud800"]}', "a[1]: a lone UTF-16 surrogate (\\ud800)"),
    "UTF-16": ('{"memory-type": "NO_MEMORY_EXPANSION"}'.encode("utf-16"), "UTF-16 text; save it as UTF-8"),
    "JSON nested 1000 deep": (b'{"a":\n ' + b"[" * 1000 + b"]" * 1000 + b"}", "line 2: nested over 16 levels"),
    "integer of 5000 digits": (b'{"remote-mem-bw": ' + b"9" * 5000 + b"}", "remote-mem-bw: an integer of 5000 digits"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("name", ["system.json", "memory.json", "comm_groups.json"])
def test_hostile_json_files_are_one_line_errors(tmp_path: Path, case: str, name: str) -> None:
    data, fragment = HOSTILE[case]
    path = _hostile(tmp_path, name, data)
    loader = {"system.json": load_system, "memory.json": load_memory, "comm_groups.json": load_comm_groups}[name]
    with pytest.raises(PipesimError) as caught:
        loader(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and len(message) < 300


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"topology: [ Ring\xc3 ]\n", "line 1, byte 16: not valid UTF-8 text"),
        (GOOD_NETWORK.encode("utf-16"), "UTF-16 text"),
        (b"topology: " + b"[" * 600 + b"]" * 600 + b"\n", "line 1: nested over 16 levels of [ ] or { }"),
        (b"npus_count: [ " + b"7" * 4400 + b" ]\n", "npus_count[0]: an integer of 4400 digits"),
    ],
)
def test_hostile_network_files_are_one_line_errors(tmp_path: Path, text: bytes, fragment: str) -> None:
    path = _hostile(tmp_path, "network.yml", text)
    with pytest.raises(PipesimError) as caught:
        load_network(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and len(message) < 300


def test_integers_too_large_for_a_float_or_a_32_bit_int(tmp_path: Path) -> None:
    huge = "1" + "0" * 400  # a JSON integer beyond any double: float() overflows
    path = _hostile(tmp_path, "system.json", f'{{"peak-perf": {huge}}}'.encode())
    with pytest.raises(PipesimError, match=r"peak-perf: an integer of 401 digits; no double holds it"):
        load_system(path)
    network = GOOD_NETWORK.replace("[ 4 ]", "[ 4294967296 ]")
    with pytest.raises(PipesimError, match=r"npus_count: 4294967296 is over 2147483647; ASTRA-Sim reads a 32-bit int"):
        load_network(_write(tmp_path, "network.yml", network))
    # A field holding a huge or nested value is quoted short.
    nested = _hostile(tmp_path, "memory.json", b'{"memory-type": ' + b"[" * 15 + b"]" * 15 + b"}")
    with pytest.raises(PipesimError) as caught:
        load_memory(nested)
    assert str(caught.value) == f"{nested}: memory-type: expected a name (a string), got [[[...]]]"


def test_group_ids_are_integers_as_astra_sim_reads_them(tmp_path: Path) -> None:
    assert load_comm_groups(_write(tmp_path, "g.json", '{"01": [0, 1], "2": [2]}')) == {"1": [0, 1], "2": [2]}
    with pytest.raises(PipesimError, match=r"groups '01' and '1' are both group 1"):
        load_comm_groups(_write(tmp_path, "g.json", '{"01": [0], "1": [1]}'))
    with pytest.raises(PipesimError, match=r"group '1' appears twice"):
        load_comm_groups(_write(tmp_path, "g.json", '{"1": [0], "1": [1]}'))
    for bad in ("²", "١", "1a", "-1", "0", "00", "99999999999"):
        path = _write(tmp_path, "g.json", json.dumps({bad: [0]}))
        with pytest.raises(PipesimError, match="ids must be positive decimal integers up to 2147483647"):
            load_comm_groups(path)


def test_engine_finds_group_01_under_its_integer_id() -> None:
    from astra_driver.engine import simulate

    config = AstraConfig(network=NetworkConfig(["Ring"], [2], [50.0], [500.0]), comm_groups={"1": [0, 1]})
    graphs = []
    for rank in range(2):
        builder = GraphBuilder(rank)
        builder.collective("ar", CollectiveType.ALL_REDUCE, 1 << 20, pg_name="01")
        graphs.append(builder.graph)
    by_01 = simulate(Workload(graphs), config).finish_ns
    for graph in graphs:
        graph.nodes[0].pg_name = "0"  # the default group: the same two NPUs
    assert by_01 == simulate(Workload(graphs), config).finish_ns
    assert by_01[0] > 0


def test_utf8_bom_is_read_and_nul_bytes_are_named(tmp_path: Path) -> None:
    bom = _hostile(tmp_path, "memory.json", b'\xef\xbb\xbf{"memory-type": "NO_MEMORY_EXPANSION"}')
    assert load_memory(bom).memory_type == "NO_MEMORY_EXPANSION"  # nlohmann::json skips a UTF-8 BOM too
    utf16le = _hostile(tmp_path, "network.yml", GOOD_NETWORK.encode("utf-16-le"))
    with pytest.raises(PipesimError, match=r"network.yml: line 1: a NUL byte \(UTF-16 text\?\); save the network"):
        load_network(utf16le)
