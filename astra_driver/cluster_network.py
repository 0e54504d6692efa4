"""The network of a cluster built from flags (`pipesim trace --model ...`, `pipesim train`): nodes of
gpus_per_node NPUs joined by NVLink (or PCIe) inside a node and by one NIC per GPU across nodes.

ASTRA-Sim's analytical network is one FullyConnected dimension per level, dimension 0 varying fastest: up to
gpus_per_node NPUs are one dimension at the intra-node link; more are [gpus_per_node, npus / gpus_per_node],
dimension 1 at the inter-node link. Rank r sits in node r // gpus_per_node, so consecutive ranks (a TP group)
share a node and pipeline stages cross nodes.

Defaults (docs/cluster_config.md, "Clusters from flags"): 8 GPUs per node (DGX/HGX H100, H200, A100 boards);
intra-node bandwidth and latency from the hardware catalog (interconnect_gbps: NVLink per direction, or PCIe
for RTXPRO6000/RTX4090); inter-node a 400 Gb/s NIC per GPU (ConnectX-7 / NDR InfiniBand) = 50 GB/s, 5 us per
message (order of magnitude of an RDMA message through one switch, software included; not measured).
Bandwidths are written to network.yml unchanged, as the cluster JSON's link_bw is.
"""

from __future__ import annotations

import math

from astra_driver.astra_config import NetworkConfig
from llm_converter.errors import PipesimError
from llm_converter.hardware import HardwareSpec

DEFAULT_GPUS_PER_NODE = 8
DEFAULT_INTER_NODE_BW_GBPS = 400 / 8  # one 400 Gb/s NIC per GPU = 50 GB/s
DEFAULT_INTER_NODE_LATENCY_NS = 5000.0
DEFAULT_INTRA_NODE_LATENCY_NS = 1000.0  # NVLink/NVSwitch one-way (the hardware catalog gives each GPU's own)
TOPOLOGY = "FullyConnected"  # one hop per message in every dimension (see astra_files' module docstring)


def node_network(
    npus: int,
    gpus_per_node: int,
    intra_node_bw_gbps: float,
    inter_node_bw_gbps: float,
    intra_node_latency_ns: float = DEFAULT_INTRA_NODE_LATENCY_NS,
    inter_node_latency_ns: float = DEFAULT_INTER_NODE_LATENCY_NS,
) -> NetworkConfig:
    """1 dimension of `npus` when they fit in one node, else [gpus_per_node, npus // gpus_per_node] (just the
    inter-node dimension when gpus_per_node is 1)."""
    for name, value in (("npus", npus), ("--gpus-per-node", gpus_per_node)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PipesimError(f"{name} {value!r}: must be an integer >= 1")
    for name, value, zero_allowed in (
        ("--link-bw", intra_node_bw_gbps, False),
        ("--inter-node-bw", inter_node_bw_gbps, False),
        ("--link-latency", intra_node_latency_ns, True),
        ("--inter-node-latency", inter_node_latency_ns, True),
    ):
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            bound = ">= 0 ns" if zero_allowed else "> 0 GB/s"
            raise PipesimError(f"{name} {value:g}: must be {bound}")
    if npus <= gpus_per_node:
        return NetworkConfig(
            topology=[TOPOLOGY],
            npus_count=[npus],
            bandwidth=[float(intra_node_bw_gbps)],
            latency=[float(intra_node_latency_ns)],
        )
    if gpus_per_node == 1:
        # ASTRA-Sim needs more than one NPU in every dimension: one GPU per node is the inter-node dimension alone.
        return NetworkConfig(
            topology=[TOPOLOGY],
            npus_count=[npus],
            bandwidth=[float(inter_node_bw_gbps)],
            latency=[float(inter_node_latency_ns)],
        )
    if npus % gpus_per_node:
        raise PipesimError(
            f"--gpus-per-node {gpus_per_node}: {npus} NPUs do not fill whole nodes of {gpus_per_node}; use a "
            f"--gpus-per-node that divides {npus}"
        )
    return NetworkConfig(
        topology=[TOPOLOGY, TOPOLOGY],
        npus_count=[gpus_per_node, npus // gpus_per_node],
        bandwidth=[float(intra_node_bw_gbps), float(inter_node_bw_gbps)],
        latency=[float(intra_node_latency_ns), float(inter_node_latency_ns)],
    )


def hardware_node_network(
    hardware: HardwareSpec,
    npus: int,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    intra_node_bw_gbps: float | None = None,
    inter_node_bw_gbps: float | None = None,
    intra_node_latency_ns: float | None = None,
    inter_node_latency_ns: float | None = None,
) -> NetworkConfig:
    """node_network with every link not given taken from the defaults above (intra-node: the hardware's)."""
    return node_network(
        npus,
        gpus_per_node,
        hardware.interconnect_gbps if intra_node_bw_gbps is None else intra_node_bw_gbps,
        DEFAULT_INTER_NODE_BW_GBPS if inter_node_bw_gbps is None else inter_node_bw_gbps,
        hardware.interconnect_latency_ns if intra_node_latency_ns is None else intra_node_latency_ns,
        DEFAULT_INTER_NODE_LATENCY_NS if inter_node_latency_ns is None else inter_node_latency_ns,
    )
