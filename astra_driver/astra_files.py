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
from pathlib import Path
from typing import Any

import jinja2
import yaml

from astra_driver.astra_config import (
    COMM_GROUPS_FILE,
    MEMORY_FILE,
    NETWORK_FILE,
    SYSTEM_FILE,
    AstraConfig,
    MemoryConfig,
    NetworkConfig,
    SystemConfig,
    check_astra_config,
    check_comm_groups,
)
from astra_driver.cluster_config import ClusterConfig, InstanceConfig, PlacedInstance
from llm_converter.comm_groups import parse_group_id
from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic

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
    network: NetworkConfig | None = None,
) -> AstraConfig:
    """The ASTRA-Sim configuration one instance of `cluster` is simulated with; `comm_groups` use the
    instance's local ranks (0..num_npus-1), e.g. ParallelPlan.comm_groups(). `network` replaces the
    instance's own (flag-built clusters pass cluster_network.node_network's)."""
    placed = _placed(cluster, instance)
    network = network if network is not None else instance_network(cluster, placed)
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
    # Group ids as ASTRA-Sim reads them ("01" is group 1); a key that is no id is left for the checks to refuse.
    groups = {_group_id(str(name)): list(ranks) for name, ranks in (comm_groups or {}).items()}
    return AstraConfig(network=network, system=system, memory=memory, comm_groups=groups)


def _group_id(name: str) -> str:
    value = parse_group_id(name)
    return name if value is None else str(value)


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
    """{file name: text} of network.yml, system.json, memory.json and (when groups exist) comm_groups.json.
    The values are checked first by astra_config's checks, the same ones its loaders run on files read."""
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


def write_comm_groups(out_dir: Path | str, comm_groups: dict[str, list[int]]) -> Path:
    """Write comm_groups.json alone into `out_dir` (`convert` without a cluster config: the traces' pg_names need
    it, the network does not exist yet). The groups pass the same checks as in a whole config (ranks unknown)."""
    comm_groups = {_group_id(str(name)): list(ranks) for name, ranks in comm_groups.items()}
    try:
        check_comm_groups(comm_groups, None)
    except PipesimError as exc:
        raise PipesimError(f"{out_dir}: cannot write ASTRA-Sim config files: {exc}") from None
    text = _ENV.get_template("comm_groups.json.j2").render(comm_groups=comm_groups)
    json.loads(text)
    path = Path(out_dir) / COMM_GROUPS_FILE
    write_atomic(path, text.encode())
    return path
