"""ASTRA-Sim's own configuration files as data: network.yml, system.json, memory.json, comm groups.

One home for these concepts: the builtin engine reads them from here, and the template renderer writes them
from here. Field names follow the files' keys (see ../shared/astra-sim/README.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_converter.errors import PipesimError
from llm_converter.graph import Workload

TOPOLOGIES = ("Ring", "FullyConnected", "Switch")
COLLECTIVE_IMPLEMENTATIONS = (
    "ring",
    "oneRing",
    "direct",
    "oneDirect",
    "halvingDoubling",
    "oneHalvingDoubling",
    "doubleBinaryTree",
)
SCHEDULING_POLICIES = ("LIFO", "FIFO", "EXPLICIT")
COLLECTIVE_OPTIMIZATIONS = ("baseline", "localBWAware")
MEMORY_TYPES = ("NO_MEMORY_EXPANSION", "PER_NODE_MEMORY_EXPANSION", "PER_NPU_MEMORY_EXPANSION", "MEMORY_POOL")


@dataclass(frozen=True)
class NetworkConfig:
    """network.yml of the analytical backend: one entry per dimension, dimension 0 varies fastest."""

    topology: list[str]
    npus_count: list[int]
    bandwidth: list[float]  # GB/s, GB = 2^30 bytes
    latency: list[float]  # ns per hop

    @property
    def npus(self) -> int:
        total = 1
        for count in self.npus_count:
            total *= count
        return total

    @property
    def dims(self) -> int:
        return len(self.npus_count)


@dataclass(frozen=True)
class SystemConfig:
    """system.json. Lists hold one collective implementation per network dimension."""

    scheduling_policy: str = "LIFO"
    endpoint_delay: int = 10
    active_chunks_per_dimension: int = 1
    preferred_dataset_splits: int = 4
    all_reduce_implementation: list[str] = field(default_factory=lambda: ["ring"])
    all_gather_implementation: list[str] = field(default_factory=lambda: ["ring"])
    reduce_scatter_implementation: list[str] = field(default_factory=lambda: ["ring"])
    all_to_all_implementation: list[str] = field(default_factory=lambda: ["ring"])
    collective_optimization: str = "localBWAware"
    local_mem_bw: float = 1600.0  # GB/s, GB = 1e9 bytes
    peak_perf: float = 900.0  # TFLOPS
    roofline_enabled: bool = False
    replay_only: bool = False
    trace_enabled: bool = False
    track_local_mem: bool = False


@dataclass(frozen=True)
class MemoryConfig:
    """memory.json: remote memory for MEM_LOAD/MEM_STORE nodes."""

    memory_type: str = "NO_MEMORY_EXPANSION"
    num_nodes: int = 1
    num_npus_per_node: int = 1
    remote_mem_latency: float = 0.0  # ns
    remote_mem_bw: float = 0.0  # GB/s


@dataclass(frozen=True)
class AstraConfig:
    """Everything one ASTRA-Sim run is configured with, besides the workload."""

    network: NetworkConfig
    system: SystemConfig = field(default_factory=SystemConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    comm_groups: dict[str, list[int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Loaders: read ASTRA-Sim's own files, reject what ASTRA-Sim would reject (or silently mis-simulate).
# ---------------------------------------------------------------------------------------------------------

_IMPLEMENTATION_KEYS = (
    "all-reduce-implementation",
    "all-gather-implementation",
    "reduce-scatter-implementation",
    "all-to-all-implementation",
)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file (give the path of the {what})") from None
    except IsADirectoryError:
        raise PipesimError(f"{path}: is a directory (give the path of the {what} file)") from None
    except OSError as exc:
        raise PipesimError(f"{path}: cannot read the {what} ({exc.strerror})") from None


def _load_json_object(path: Path, what: str) -> dict[str, Any]:
    text = _read_text(path, what)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipesimError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the {what}") from None
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: the {what} must be a JSON object of key: value pairs")
    return data


def _number(path: Path, key: str, value: Any, integer: bool = False) -> float | int:
    # bool is an int in Python; ASTRA-Sim's JSON reader would not take true/false for a number either.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipesimError(f"{path}: {key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        # YAML's .inf/.nan and Python's JSON reader's Infinity/NaN: no simulator time comes out of them.
        raise PipesimError(f"{path}: {key}: expected a finite number, got {value!r}; write a plain number")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise PipesimError(f"{path}: {key}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _flag(path: Path, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise PipesimError(f"{path}: {key}: expected 0 or 1, got {value!r}")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class _NetworkYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (1e-05, 5E+1): yaml-cpp, which ASTRA-Sim reads
    network.yml with, takes them as numbers, while YAML 1.1 (PyYAML) would read them as strings."""


_NetworkYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_network(path: Path | str) -> NetworkConfig:
    """network.yml of the analytical backend: topology, npus_count, bandwidth, latency (one entry per dim)."""
    path = Path(path)
    text = _read_text(path, "network config (network.yml)")
    try:
        data = yaml.load(text, Loader=_NetworkYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise PipesimError(f"{path}: {where}not valid YAML; fix the network config") from None
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: expected keys topology, npus_count, bandwidth, latency (a YAML mapping)")
    for key in ("topology", "npus_count", "bandwidth", "latency"):
        if key not in data:
            raise PipesimError(f"{path}: missing key '{key}' (one entry per network dimension)")
    topology = [str(t) for t in _as_list(data["topology"])]
    npus_count = [_number(path, "npus_count", v, integer=True) for v in _as_list(data["npus_count"])]
    bandwidth = [_number(path, "bandwidth", v) for v in _as_list(data["bandwidth"])]
    latency = [_number(path, "latency", v) for v in _as_list(data["latency"])]
    dims = len(topology)
    if dims == 0:
        raise PipesimError(f"{path}: topology: empty; give one of {', '.join(TOPOLOGIES)} per dimension")
    for name in topology:
        if name not in TOPOLOGIES:
            raise PipesimError(f"{path}: topology: unknown '{name}'; allowed: {', '.join(TOPOLOGIES)}")
    for key, values in (("npus_count", npus_count), ("bandwidth", bandwidth), ("latency", latency)):
        if len(values) != dims:
            raise PipesimError(
                f"{path}: {key} has {len(values)} entries but topology has {dims} dimensions; give one per dimension"
            )
    for dim, count in enumerate(npus_count):
        if count < 2:
            raise PipesimError(f"{path}: npus_count[{dim}] = {count}; every dimension needs at least 2 NPUs")
    for dim, bw in enumerate(bandwidth):
        if not bw > 0:
            raise PipesimError(f"{path}: bandwidth[{dim}] = {bw:g}; bandwidth must be > 0 GB/s")
    for dim, lat in enumerate(latency):
        if lat < 0:
            raise PipesimError(f"{path}: latency[{dim}] = {lat:g}; latency must be >= 0 ns")
    return NetworkConfig(topology=topology, npus_count=npus_count, bandwidth=bandwidth, latency=latency)


def load_system(path: Path | str, dims: int | None = None) -> SystemConfig:
    """system.json. With `dims`, the implementation lists must have one entry per network dimension."""
    path = Path(path)
    data = _load_json_object(path, "system config (system.json)")
    kwargs: dict[str, Any] = {}
    if "scheduling-policy" in data:
        policy = data["scheduling-policy"]
        if policy not in SCHEDULING_POLICIES:
            raise PipesimError(
                f"{path}: scheduling-policy: unknown {policy!r}; allowed: {', '.join(SCHEDULING_POLICIES)}"
            )
        kwargs["scheduling_policy"] = policy
    if "endpoint-delay" in data:
        delay = _number(path, "endpoint-delay", data["endpoint-delay"], integer=True)
        if delay <= 0:
            raise PipesimError(f"{path}: endpoint-delay = {delay}; ASTRA-Sim asserts it is > 0 (use 10)")
        kwargs["endpoint_delay"] = delay
    if "active-chunks-per-dimension" in data:
        chunks = _number(path, "active-chunks-per-dimension", data["active-chunks-per-dimension"], integer=True)
        if chunks < 1:
            raise PipesimError(f"{path}: active-chunks-per-dimension = {chunks}; must be >= 1")
        kwargs["active_chunks_per_dimension"] = chunks
    if "preferred-dataset-splits" in data:
        splits = _number(path, "preferred-dataset-splits", data["preferred-dataset-splits"], integer=True)
        if splits < 1:
            raise PipesimError(f"{path}: preferred-dataset-splits = {splits}; must be >= 1")
        kwargs["preferred_dataset_splits"] = splits
    for key in _IMPLEMENTATION_KEYS:
        if key not in data:
            continue
        raw = data[key]
        names = [str(v) for v in _as_list(raw)]
        if not names:
            raise PipesimError(f"{path}: {key}: empty; give one implementation per network dimension")
        for name in names:
            if name not in COLLECTIVE_IMPLEMENTATIONS:
                raise PipesimError(f"{path}: {key}: unknown '{name}'; allowed: {', '.join(COLLECTIVE_IMPLEMENTATIONS)}")
        if dims is not None and len(names) != dims:
            raise PipesimError(
                f"{path}: {key} has {len(names)} entries but the network has {dims} dimensions; give one per dimension"
            )
        kwargs[key.replace("-", "_")] = names
    if "collective-optimization" in data:
        optimization = data["collective-optimization"]
        if optimization not in COLLECTIVE_OPTIMIZATIONS:
            raise PipesimError(
                f"{path}: collective-optimization: unknown {optimization!r}; "
                f"allowed: {', '.join(COLLECTIVE_OPTIMIZATIONS)}"
            )
        kwargs["collective_optimization"] = optimization
    if "local-mem-bw" in data:
        local_bw = _number(path, "local-mem-bw", data["local-mem-bw"])
        if not local_bw > 0:
            raise PipesimError(f"{path}: local-mem-bw = {local_bw:g}; must be > 0 GB/s")
        kwargs["local_mem_bw"] = local_bw
    if "peak-perf" in data:
        peak = _number(path, "peak-perf", data["peak-perf"])
        if not peak > 0:
            raise PipesimError(f"{path}: peak-perf = {peak:g}; must be > 0 TFLOPS")
        kwargs["peak_perf"] = peak
    for key in ("roofline-enabled", "replay-only", "trace-enabled", "track-local-mem"):
        if key in data:
            kwargs[key.replace("-", "_")] = _flag(path, key, data[key])
    return SystemConfig(**kwargs)


def load_memory(path: Path | str) -> MemoryConfig:
    """memory.json (remote memory for MEM_LOAD/MEM_STORE nodes)."""
    path = Path(path)
    data = _load_json_object(path, "remote memory config (memory.json)")
    memory_type = data.get("memory-type")
    if memory_type is None:
        raise PipesimError(f"{path}: missing key 'memory-type'; allowed: {', '.join(MEMORY_TYPES)}")
    if memory_type not in MEMORY_TYPES:
        raise PipesimError(f"{path}: memory-type: unknown {memory_type!r}; allowed: {', '.join(MEMORY_TYPES)}")
    if memory_type == "NO_MEMORY_EXPANSION":
        return MemoryConfig(memory_type=memory_type)
    for key in ("remote-mem-latency", "remote-mem-bw"):
        if key not in data:
            raise PipesimError(f"{path}: missing key '{key}' (required with memory-type {memory_type})")
    bw = _number(path, "remote-mem-bw", data["remote-mem-bw"])
    if not bw > 0:
        raise PipesimError(f"{path}: remote-mem-bw = {bw:g}; must be > 0 GB/s")
    latency = _number(path, "remote-mem-latency", data["remote-mem-latency"])
    if latency < 0:
        raise PipesimError(f"{path}: remote-mem-latency = {latency:g}; must be >= 0 ns")
    num_nodes = _number(path, "num-nodes", data.get("num-nodes", 1), integer=True)
    per_node = _number(path, "num-npus-per-node", data.get("num-npus-per-node", 1), integer=True)
    if num_nodes < 1 or per_node < 1:
        raise PipesimError(f"{path}: num-nodes and num-npus-per-node must be >= 1")
    return MemoryConfig(
        memory_type=memory_type,
        num_nodes=num_nodes,
        num_npus_per_node=per_node,
        remote_mem_latency=latency,
        remote_mem_bw=bw,
    )


def load_comm_groups(path: Path | str, npus: int | None = None) -> dict[str, list[int]]:
    """groups.json: {"<id>": [ranks]}. With `npus`, every rank must exist in the network."""
    path = Path(path)
    data = _load_json_object(path, "comm group config")
    groups: dict[str, list[int]] = {}
    for name, ranks in data.items():
        if not str(name).isdigit() or name in ("0",):
            raise PipesimError(
                f"{path}: group {name!r}: ids must be positive decimal strings ('0' and '' mean all NPUs)"
            )
        if not isinstance(ranks, list) or not ranks:
            raise PipesimError(f"{path}: group {name}: expected a non-empty list of ranks")
        members: list[int] = []
        for rank in ranks:
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                raise PipesimError(f"{path}: group {name}: rank {rank!r} is not a non-negative integer")
            if npus is not None and rank >= npus:
                raise PipesimError(
                    f"{path}: group {name}: rank {rank} is outside the network's {npus} NPUs (ranks 0..{npus - 1}); "
                    "remove it from the group"
                )
            members.append(rank)
        if len(set(members)) != len(members):
            raise PipesimError(f"{path}: group {name}: a rank appears twice")
        groups[str(name)] = members
    return groups


def load_astra_config(
    system: Path | str,
    network: Path | str,
    memory: Path | str,
    comm_groups: Path | str | None = None,
) -> AstraConfig:
    """The four (or five) files one ASTRA-Sim run takes, checked against each other."""
    network_config = load_network(network)
    system_config = load_system(system, dims=network_config.dims)
    memory_config = load_memory(memory)
    groups = load_comm_groups(comm_groups, npus=network_config.npus) if comm_groups is not None else {}
    return AstraConfig(network=network_config, system=system_config, memory=memory_config, comm_groups=groups)


def check_workload_matches(workload: Workload, config: AstraConfig) -> None:
    """The workload must have one graph per NPU of the network, and its groups must name existing ranks."""
    npus = config.network.npus
    if workload.npus != npus:
        raise PipesimError(
            f"workload has {workload.npus} ranks but network.yml describes {npus} NPUs "
            f"(npus_count {config.network.npus_count}); make the product of npus_count equal {workload.npus} "
            "or write one .et file per NPU"
        )
    for source in (config.comm_groups, workload.comm_groups):
        for name, ranks in source.items():
            for rank in ranks:
                if not 0 <= rank < npus:
                    raise PipesimError(
                        f"comm group {name}: rank {rank} is outside the network's {npus} NPUs (ranks 0..{npus - 1})"
                    )
