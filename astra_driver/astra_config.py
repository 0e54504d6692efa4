"""ASTRA-Sim's own configuration files as data: network.yml, system.json, memory.json, comm groups.

One home for these concepts: the builtin engine reads them from here, and the template renderer writes them
from here. Field names follow the files' keys (see ../shared/astra-sim/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
