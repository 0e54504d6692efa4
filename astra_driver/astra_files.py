"""ASTRA-Sim's config files from pipesim's config: the cluster config -> AstraConfig -> network.yml, system.json,
memory.json and comm_groups.json, rendered from the jinja2 templates in astra_driver/templates/.

How a cluster instance maps onto ASTRA-Sim (each instance is simulated alone, ranks 0..num_npus-1):
- One node: a 1-D FullyConnected network of num_npus NPUs with bandwidth = link_bw and latency = link_latency
  from the cluster JSON. FullyConnected charges one hop per message, so a stage-to-stage send pays exactly
  the link latency the JSON states (NVLink-switch-like; a Switch topology would charge two hops), and
  link_bw / link_latency move PP iteration time as the seed says they do.
- Spanning nodes (span_nodes > 1): a 2-D network [npus_per_node, span_nodes], dimension 0 inside a node at
  the hardware's interconnect_gbps / interconnect_latency_ns, dimension 1 across nodes at link_bw /
  link_latency, both FullyConnected. Rank r sits at (r % npus_per_node, r // npus_per_node): TP groups (the
  consecutive ranks of a stage) stay in a node, PP sends cross nodes. A dimension of one NPU is dropped,
  because ASTRA-Sim needs more than one NPU per dimension.
- A 1-NPU instance gets npus_count [1]: pipesim's builtin engine runs it (there is no communication), but
  ASTRA-Sim rejects a dimension of one NPU, so write_astra_files refuses it with a one-line error instead
  of inventing an idle second NPU.
- system.json: ring collectives on every dimension (the implementation the conformance cases check to the
  ns), LIFO, endpoint-delay 10, one active chunk, 4 dataset splits, localBWAware (ASTRA-Sim's example
  defaults); local-mem-bw = npu_mem.mem_bw, peak-perf = the hardware's peak TFLOPS.
- memory.json: NO_MEMORY_EXPANSION, or with remote_memory=True PER_NODE_MEMORY_EXPANSION backed by the node's
  cpu_mem (bandwidth and latency).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2
import yaml

from astra_driver.astra_config import (
    COLLECTIVE_IMPLEMENTATIONS,
    COLLECTIVE_OPTIMIZATIONS,
    MEMORY_TYPES,
    SCHEDULING_POLICIES,
    TOPOLOGIES,
    AstraConfig,
    MemoryConfig,
    NetworkConfig,
    SystemConfig,
)
from astra_driver.cluster_config import ClusterConfig, InstanceConfig, PlacedInstance
from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic

NETWORK_FILE = "network.yml"
SYSTEM_FILE = "system.json"
MEMORY_FILE = "memory.json"
COMM_GROUPS_FILE = "comm_groups.json"

# Topology of every dimension pipesim generates (see the module docstring for why).
INSTANCE_TOPOLOGY = "FullyConnected"
DEFAULT_COLLECTIVE_IMPLEMENTATION = "ring"


# ---------------------------------------------------------------------------------------------------------
# Cluster config -> AstraConfig
# ---------------------------------------------------------------------------------------------------------


def astra_config_for_instance(
    cluster: ClusterConfig,
    instance: PlacedInstance | InstanceConfig | int,
    comm_groups: dict[str, list[int]] | None = None,
    *,
    remote_memory: bool = False,
) -> AstraConfig:
    """The ASTRA-Sim configuration one instance of `cluster` is simulated with; `comm_groups` use the
    instance's local ranks (0..num_npus-1), e.g. ParallelPlan.comm_groups()."""
    placed = _placed(cluster, instance)
    network = instance_network(cluster, placed)
    dims = network.dims
    implementation = [DEFAULT_COLLECTIVE_IMPLEMENTATION] * dims
    system = SystemConfig(
        all_reduce_implementation=list(implementation),
        all_gather_implementation=list(implementation),
        reduce_scatter_implementation=list(implementation),
        all_to_all_implementation=list(implementation),
        local_mem_bw=float(placed.spec.npu_mem.mem_bw),
        peak_perf=float(placed.hardware.peak_tflops),
    )
    memory = MemoryConfig()
    if remote_memory:
        cpu_mem = cluster.node(placed.node_index).cpu_mem
        memory = MemoryConfig(
            memory_type="PER_NODE_MEMORY_EXPANSION",
            num_nodes=placed.span_nodes,
            num_npus_per_node=placed.npus_per_node,
            remote_mem_latency=float(cpu_mem.mem_latency),
            remote_mem_bw=float(cpu_mem.mem_bw),
        )
    groups = {str(name): list(ranks) for name, ranks in (comm_groups or {}).items()}
    return AstraConfig(network=network, system=system, memory=memory, comm_groups=groups)


def instance_network(cluster: ClusterConfig, placed: PlacedInstance) -> NetworkConfig:
    """The analytical network of one instance (see the module docstring)."""
    if placed.span_nodes == 1:
        return NetworkConfig(
            topology=[INSTANCE_TOPOLOGY],
            npus_count=[placed.num_npus],
            bandwidth=[float(cluster.link_bw)],
            latency=[float(cluster.link_latency)],
        )
    intra = (
        placed.npus_per_node,
        float(placed.hardware.interconnect_gbps),
        float(placed.hardware.interconnect_latency_ns),
    )
    inter = (placed.span_nodes, float(cluster.link_bw), float(cluster.link_latency))
    dims = [dim for dim in (intra, inter) if dim[0] > 1]
    return NetworkConfig(
        topology=[INSTANCE_TOPOLOGY] * len(dims),
        npus_count=[count for count, _, _ in dims],
        bandwidth=[bw for _, bw, _ in dims],
        latency=[lat for _, _, lat in dims],
    )


def _placed(cluster: ClusterConfig, instance: PlacedInstance | InstanceConfig | int) -> PlacedInstance:
    if isinstance(instance, PlacedInstance):
        return instance
    if isinstance(instance, int):
        return cluster.instance(instance)
    for placed in cluster.instances():
        if placed.spec is instance:
            return placed
    raise PipesimError(f"{cluster.source}: the instance given is not one of this cluster config's instances")


# ---------------------------------------------------------------------------------------------------------
# AstraConfig -> files
# ---------------------------------------------------------------------------------------------------------


def _yaml_float(value: float) -> str:
    # YAML 1.1 (PyYAML, so pipesim's own loader) reads a float only with a dot in its mantissa: repr's
    # 1e-05 or 1e+16 would load back as strings. 1.0e-05 reads as the same number there and in yaml-cpp.
    text = repr(float(value))
    mantissa, exponent, rest = text.partition("e")
    if exponent and "." not in mantissa:
        text = f"{mantissa}.0e{rest}"
    return text


def _yaml_number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else _yaml_float(value)


def _json(value: Any) -> str:
    # Integral floats as integers (1597, not 1597.0): ASTRA-Sim's own examples write them so.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("astra_driver", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["json"] = _json
    env.filters["flag"] = _flag
    env.filters["yaml_float"] = _yaml_float
    env.filters["yaml_number"] = _yaml_number
    return env


_ENV = _environment()


def render_astra_files(config: AstraConfig) -> dict[str, str]:
    """{file name: text} of network.yml, system.json, memory.json and (when groups exist) comm_groups.json."""
    check_astra_config(config)
    texts = {
        NETWORK_FILE: _ENV.get_template("network.yml.j2").render(network=config.network),
        SYSTEM_FILE: _ENV.get_template("system.json.j2").render(system=config.system),
        MEMORY_FILE: _ENV.get_template("memory.json.j2").render(memory=config.memory),
    }
    if config.comm_groups:
        texts[COMM_GROUPS_FILE] = _ENV.get_template("comm_groups.json.j2").render(comm_groups=config.comm_groups)
    # The templates are ours; a syntax slip in them is a bug, caught here rather than by ASTRA-Sim.
    for name, text in texts.items():
        yaml.safe_load(text) if name.endswith(".yml") else json.loads(text)
    return texts


def write_astra_files(out_dir: Path | str, config: AstraConfig) -> dict[str, Path]:
    """Write the files ASTRA-Sim is run with into `out_dir`, each atomically. Returns {"network": path,
    "system": path, "memory": path, "comm_groups": path (only when there are groups)}."""
    out_dir = Path(out_dir)
    try:
        texts = render_astra_files(config)
    except PipesimError as exc:
        raise PipesimError(f"{out_dir}: cannot write ASTRA-Sim config files: {exc}") from None
    keys = {NETWORK_FILE: "network", SYSTEM_FILE: "system", MEMORY_FILE: "memory", COMM_GROUPS_FILE: "comm_groups"}
    paths: dict[str, Path] = {}
    for name, text in texts.items():
        path = out_dir / name
        write_atomic(path, text.encode())
        paths[keys[name]] = path
    return paths


def check_astra_config(config: AstraConfig) -> None:
    """Reject what ASTRA-Sim would reject (or silently mis-simulate), before anything is written."""
    _check_network(config.network)
    _check_system(config.system, config.network.dims)
    _check_memory(config.memory)
    _check_comm_groups(config.comm_groups, config.network.npus)


def _check_network(network: NetworkConfig) -> None:
    dims = len(network.topology)
    if dims == 0:
        raise PipesimError(f"{NETWORK_FILE}: topology is empty; give one of {', '.join(TOPOLOGIES)} per dimension")
    for name in network.topology:
        if name not in TOPOLOGIES:
            raise PipesimError(f"{NETWORK_FILE}: topology: unknown {name!r}; allowed: {', '.join(TOPOLOGIES)}")
    for key in ("npus_count", "bandwidth", "latency"):
        values = getattr(network, key)
        if len(values) != dims:
            raise PipesimError(
                f"{NETWORK_FILE}: {key} has {len(values)} entries but topology has {dims}; give one per dimension"
            )
    for dim, count in enumerate(network.npus_count):
        if count < 2:
            raise PipesimError(
                f"{NETWORK_FILE}: npus_count[{dim}] = {count}; ASTRA-Sim needs at least 2 NPUs per dimension, "
                "so simulate a 1-NPU instance with pipesim's builtin engine, or give it num_npus >= 2"
            )
    for dim, bandwidth in enumerate(network.bandwidth):
        if not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise PipesimError(f"{NETWORK_FILE}: bandwidth[{dim}] = {bandwidth:g}; it must be a finite number > 0 GB/s")
    for dim, latency in enumerate(network.latency):
        if not (latency >= 0 and math.isfinite(latency)):
            raise PipesimError(f"{NETWORK_FILE}: latency[{dim}] = {latency:g}; it must be a finite number >= 0 ns")


def _check_system(system: SystemConfig, dims: int) -> None:
    if system.scheduling_policy not in SCHEDULING_POLICIES:
        raise PipesimError(
            f"{SYSTEM_FILE}: scheduling-policy {system.scheduling_policy!r}; allowed: {', '.join(SCHEDULING_POLICIES)}"
        )
    if system.endpoint_delay <= 0:
        raise PipesimError(f"{SYSTEM_FILE}: endpoint-delay = {system.endpoint_delay}; ASTRA-Sim asserts > 0 (use 10)")
    for key in ("active_chunks_per_dimension", "preferred_dataset_splits"):
        if getattr(system, key) < 1:
            raise PipesimError(f"{SYSTEM_FILE}: {key.replace('_', '-')} = {getattr(system, key)}; it must be >= 1")
    for key in (
        "all_reduce_implementation",
        "all_gather_implementation",
        "reduce_scatter_implementation",
        "all_to_all_implementation",
    ):
        names = getattr(system, key)
        label = key.replace("_", "-")
        if len(names) != dims:
            raise PipesimError(
                f"{SYSTEM_FILE}: {label} has {len(names)} entries but the network has {dims} dimensions; "
                "give one per dimension"
            )
        for name in names:
            if name not in COLLECTIVE_IMPLEMENTATIONS:
                raise PipesimError(
                    f"{SYSTEM_FILE}: {label}: unknown {name!r}; allowed: {', '.join(COLLECTIVE_IMPLEMENTATIONS)}"
                )
    if system.collective_optimization not in COLLECTIVE_OPTIMIZATIONS:
        raise PipesimError(
            f"{SYSTEM_FILE}: collective-optimization {system.collective_optimization!r}; "
            f"allowed: {', '.join(COLLECTIVE_OPTIMIZATIONS)}"
        )
    # Infinity/NaN would render as JSON ASTRA-Sim's parser rejects (and pipesim's loader refuses).
    if not (system.local_mem_bw > 0 and math.isfinite(system.local_mem_bw)):
        raise PipesimError(
            f"{SYSTEM_FILE}: local-mem-bw = {system.local_mem_bw:g}; it must be a finite number > 0 GB/s"
        )
    if not (system.peak_perf > 0 and math.isfinite(system.peak_perf)):
        raise PipesimError(f"{SYSTEM_FILE}: peak-perf = {system.peak_perf:g}; it must be a finite number > 0 TFLOPS")


def _check_memory(memory: MemoryConfig) -> None:
    if memory.memory_type not in MEMORY_TYPES:
        raise PipesimError(f"{MEMORY_FILE}: memory-type {memory.memory_type!r}; allowed: {', '.join(MEMORY_TYPES)}")
    if memory.memory_type == "NO_MEMORY_EXPANSION":
        return
    if not (memory.remote_mem_bw > 0 and math.isfinite(memory.remote_mem_bw)):
        raise PipesimError(
            f"{MEMORY_FILE}: remote-mem-bw = {memory.remote_mem_bw:g}; it must be a finite number > 0 GB/s"
        )
    if not (memory.remote_mem_latency >= 0 and math.isfinite(memory.remote_mem_latency)):
        raise PipesimError(
            f"{MEMORY_FILE}: remote-mem-latency = {memory.remote_mem_latency:g}; it must be a finite number >= 0 ns"
        )
    if memory.num_nodes < 1 or memory.num_npus_per_node < 1:
        raise PipesimError(f"{MEMORY_FILE}: num-nodes and num-npus-per-node must be >= 1")


def _check_comm_groups(groups: dict[str, list[int]], npus: int) -> None:
    for name, ranks in groups.items():
        if not name.isdigit() or int(name) == 0:
            raise PipesimError(
                f"{COMM_GROUPS_FILE}: group {name!r}: ids must be positive decimal strings ('0' means all NPUs)"
            )
        if not ranks:
            raise PipesimError(f"{COMM_GROUPS_FILE}: group {name}: no ranks; give at least one")
        if len(set(ranks)) != len(ranks):
            raise PipesimError(f"{COMM_GROUPS_FILE}: group {name}: a rank appears twice")
        for rank in ranks:
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < npus:
                raise PipesimError(
                    f"{COMM_GROUPS_FILE}: group {name}: rank {rank!r} is outside the network's {npus} NPUs "
                    f"(ranks 0..{npus - 1})"
                )
