"""What `pipesim trace` and `pipesim convert` do, as library calls the tests use directly.

trace:   cluster instance (or model/hardware/tp/pp flags) + one iteration's batch -> latency per layer ->
         balanced stage split -> layer list -> per-NPU graphs -> traces/<name>/llm.<npu>.et, layers.csv and
         ASTRA-Sim's network.yml, system.json, memory.json (+ comm_groups.json when TP groups exist).
convert: a researcher's layer CSV + tp/pp -> <prefix>.<npu>.et (+ the config files when a cluster is given).

trace writes everything into a hidden temporary folder beside the destination and renames it into place,
so traces/<name>/ is either the previous complete output or the new complete output, never a mix.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from astra_driver.astra_config import COMM_GROUPS_FILE, MEMORY_FILE, NETWORK_FILE, SYSTEM_FILE, NetworkConfig
from astra_driver.astra_files import astra_config_for_instance, write_astra_files, write_comm_groups
from astra_driver.cluster_config import ClusterConfig, PlacedInstance, cluster_config_from_dict, load_cluster_config
from astra_driver.cluster_network import (
    DEFAULT_GPUS_PER_NODE,
    DEFAULT_INTER_NODE_BW_GBPS,
    DEFAULT_INTER_NODE_LATENCY_NS,
    hardware_node_network,
)
from astra_driver.paths import check_output_path, check_replaceable_folder
from llm_converter.chakra.reader import count_ranks
from llm_converter.chakra.writer import et_path, write_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import Workload
from llm_converter.graphs.forward import build_serving_workload
from llm_converter.hardware import get_hardware
from llm_converter.io import write_folder_atomically
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.layers import LayerList, balanced_plan, build_layer_list, plan_of_layers, read_layer_csv, timed_ops
from llm_converter.memory import MEM_GB, check_batch_fits, stage_params, weight_bytes_per_npu
from llm_converter.models import DTYPE_BYTES, ModelSpec, dtype_bytes, get_model
from llm_converter.perf import paused_gc
from llm_converter.plan import ParallelPlan

WORKLOAD_PREFIX = "llm"
LAYERS_FILE = "layers.csv"
DEFAULT_DTYPE = "float16"
# CPU memory of the one node made up for --model/--hardware runs (the seed's cluster config values).
FLAG_CPU_MEM = {"mem_size": 512, "mem_bw": 256, "mem_latency": 0}
FLAG_SOURCE = "--model/--hardware/--tp/--pp flags"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
# Decode requests in one iteration: far beyond any serving batch, and the batch is built as one entry per
# request, so a typo like 10000000000x1024 must not exhaust memory.
MAX_DECODE_REQUESTS = 1 << 20


# --- the batch ---------------------------------------------------------------------------------------------


def parse_prefill(text: str) -> PrefillChunk:
    """`TOKENS` or `TOKENS@CONTEXT`: a prefill chunk of TOKENS new tokens after CONTEXT cached ones."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:@\s*(\d+)\s*)?", text)
    if not match or int(match.group(1)) < 1:
        raise PipesimError(f"--prefill {text!r}: expected TOKENS or TOKENS@CONTEXT with TOKENS >= 1, e.g. 512@128")
    return PrefillChunk(tokens=int(match.group(1)), context=int(match.group(2) or 0))


def parse_decode(text: str) -> tuple[int, ...]:
    """`COUNTxKV`: COUNT decode requests, each with KV tokens already cached."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or int(match.group(1)) < 1:
        raise PipesimError(f"--decode {text!r}: expected COUNTxKV with COUNT >= 1, e.g. 32x1024")
    if int(match.group(1)) > MAX_DECODE_REQUESTS:
        raise PipesimError(
            f"--decode {text!r}: {match.group(1)} requests in one iteration; use COUNT <= {MAX_DECODE_REQUESTS}"
        )
    return (int(match.group(2)),) * int(match.group(1))


def iteration_from_flags(prefill: list[str], decode: list[str]) -> Iteration:
    if not prefill and not decode:
        raise PipesimError("trace: the batch is empty; give --prefill TOKENS[@CONTEXT] and/or --decode COUNTxKV")
    decodes: tuple[int, ...] = ()
    for text in decode:
        decodes += parse_decode(text)
        if len(decodes) > MAX_DECODE_REQUESTS:
            raise PipesimError(
                f"--decode: {len(decodes)} requests in one iteration; give at most {MAX_DECODE_REQUESTS} in all"
            )
    return Iteration(prefill=tuple(parse_prefill(text) for text in prefill), decode=decodes)


# --- the instance ------------------------------------------------------------------------------------------


def cluster_from_flags(
    model: str,
    hardware: str,
    tp: int,
    pp: int,
    dtype: str,
    link_bw: float | None = None,
    link_latency: float | None = None,
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE,
    inter_node_bw: float | None = None,
    inter_node_latency: float | None = None,
) -> ClusterConfig:
    """A one-instance cluster config for --model/--hardware runs, checked exactly like a cluster JSON (errors
    name the flags). Up to gpus_per_node NPUs sit in one node; more span npus / gpus_per_node nodes, one pipeline
    stage per node, and the JSON's link_bw / link_latency are then the inter-node link (cluster_network.py)."""
    spec = get_hardware(hardware)
    npus = tp * pp
    nodes = 1 if npus <= gpus_per_node else npus // gpus_per_node
    if nodes == 1:
        bw = link_bw if link_bw is not None else spec.interconnect_gbps
        latency = link_latency if link_latency is not None else spec.interconnect_latency_ns
    else:
        bw = inter_node_bw if inter_node_bw is not None else DEFAULT_INTER_NODE_BW_GBPS
        latency = inter_node_latency if inter_node_latency is not None else DEFAULT_INTER_NODE_LATENCY_NS
    instance = {
        "model_name": model,
        "hardware": hardware,
        "npu_mem": {"mem_size": float(spec.memory_gb), "mem_bw": float(spec.hbm_gbps), "mem_latency": 0},
        "num_npus": npus,
        "tp_size": tp,
        "pp_size": pp,
        "pd_type": None,
        "span_nodes": nodes,
    }
    document = {
        "num_nodes": nodes,
        "link_bw": float(bw),
        "link_latency": float(latency),
        "nodes": [
            {
                "num_instances": int(node == 0),
                "cpu_mem": dict(FLAG_CPU_MEM),
                "instances": [instance] if node == 0 else [],
            }
            for node in range(nodes)
        ],
    }
    try:
        return cluster_config_from_dict(document, source=FLAG_SOURCE, dtype=dtype)
    except PipesimError as exc:
        if ".span_nodes: " in str(exc):
            # As for a cluster JSON's span_nodes: ASTRA-Sim's analytical network times a message on the first
            # dimension where two ranks' coordinates differ, so with several stages (or part of a TP group) per
            # node a send to a stage on the next node would be timed at intra-node speed.
            ways = [f"--gpus-per-node {tp} (one stage per node)"] if tp != npus else []  # pp 1: one stage is all
            ways.append(f"--gpus-per-node {npus} (one node)")
            raise PipesimError(
                f"--gpus-per-node {gpus_per_node}: tp {tp} x pp {pp} = {npus} NPUs span nodes, and across nodes "
                f"each node must hold exactly one pipeline stage (--tp NPUs); use {' or '.join(ways)}"
            ) from None
        raise PipesimError(_flag_message(str(exc))) from None


# The JSON fields a flag-built cluster's checks may name, and the flags they come from.
_FIELD_FLAGS = {
    "tp_size": "--tp",
    "pp_size": "--pp",
    "num_npus": "--tp/--pp",
    "model_name": "--model",
    "hardware": "--hardware",
    "npu_mem.mem_size": "--tp/--pp",
    "npu_mem.mem_util": "--hardware",
    "link_bw": "--link-bw/--inter-node-bw",
    "link_latency": "--link-latency/--inter-node-latency",
}


def _flag_message(message: str) -> str:
    """A cluster-config message about the document cluster_from_flags made, reworded to name the flags."""
    text = message.removeprefix(f"{FLAG_SOURCE}: ")
    match = re.match(r"(?:nodes\[\d+\](?:\.instances\[\d+\])?\.)?([a-z_]+(?:\.[a-z_]+)?): ", text)
    if match and match.group(1) in _FIELD_FLAGS:
        text = f"{_FIELD_FLAGS[match.group(1)]}: {text[match.end() :]}"
    for field_name, flag in (("tp_size", "--tp"), ("pp_size", "--pp"), (" (and num_npus)", "")):
        text = text.replace(field_name, flag)
    return text


# --- trace -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    """Everything `pipesim trace` is asked: the instance (a cluster config, or model flags), the batch, output."""

    name: str
    iteration: Iteration
    out_dir: Path = Path("traces")
    dtype: str = DEFAULT_DTYPE
    profile_dir: Path | None = None
    cluster_config: Path | None = None
    instance: int = 0
    model: str | None = None
    hardware: str | None = None
    tp: int | None = None
    pp: int | None = None
    link_bw: float | None = None
    link_latency: float | None = None
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    inter_node_bw: float | None = None
    inter_node_latency: float | None = None


@dataclass
class TraceResult:
    directory: Path
    prefix: Path
    plan: ParallelPlan
    layers: LayerList
    instance: PlacedInstance
    dtype: str
    latency_source: str
    et_files: list[Path]
    config_files: dict[str, Path]
    nodes_per_npu: list[int]
    stage_params: list[int]
    weight_bytes_per_npu: list[int]
    iteration_text: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        plan = self.plan
        model = self.instance.model
        lines = [
            f"{self.directory}: {model.name} on {self.instance.hardware.name}, tp {plan.tp} x pp {plan.pp} "
            f"({plan.npus} NPU{'s' if plan.npus > 1 else ''}), {self.dtype}, {self.latency_source} latency",
            f"  batch: {self.iteration_text}",
        ]
        stage_ns = self.layers.stage_ns()
        for stage in range(plan.pp):
            start, end = plan.stage_blocks[stage]
            nodes = self.nodes_per_npu[plan.rank(stage, 0)]
            lines.append(
                f"  stage {stage}: blocks {start}-{end - 1} ({end - start}), {nodes} nodes/NPU, "
                f"compute {stage_ns[stage] / 1e6:.3f} ms, params {self.stage_params[stage] / 1e9:.3f} B, "
                f"weights {self.weight_bytes_per_npu[stage] / MEM_GB:.2f} GB/NPU"
            )
        total_nodes = sum(self.nodes_per_npu)
        written = (
            f"{self.prefix}.{{0..{plan.npus - 1}}}.et ({total_nodes} nodes)"
            if plan.npus > 1
            else (f"{self.et_files[0]} ({total_nodes} nodes)")
        )
        names = [LAYERS_FILE] + [path.name for path in self.config_files.values()]
        lines.append(f"  files: {written}, {', '.join(names)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise PipesimError(f"--name {name!r}: use letters, digits, '_', '.', '-' (it becomes a folder under --out-dir)")


def resolve_instance(request: TraceRequest) -> tuple[ClusterConfig, PlacedInstance]:
    explicit = [flag for flag, value in (("--model", request.model), ("--hardware", request.hardware)) if value]
    if request.cluster_config is not None:
        if explicit or request.tp is not None or request.pp is not None:
            raise PipesimError(
                "trace: --cluster-config already names the model, hardware, tp and pp; drop --model/--hardware/"
                "--tp/--pp, or drop --cluster-config"
            )
        cluster = load_cluster_config(request.cluster_config, dtype=request.dtype)
        return cluster, cluster.instance(request.instance)
    if not request.model or not request.hardware:
        raise PipesimError("trace: give --cluster-config PATH, or --model NAME --hardware NAME [--tp N --pp N]")
    _check_flag_values(request)
    # Resolved once here so that their own messages (the catalog, or the config.json and its field) name the flag.
    for flag, lookup, value in (("--model", get_model, request.model), ("--hardware", get_hardware, request.hardware)):
        try:
            lookup(value)
        except PipesimError as exc:
            raise PipesimError(f"{flag}: {exc}") from None
    cluster = cluster_from_flags(
        request.model,
        request.hardware,
        request.tp or 1,
        request.pp or 1,
        request.dtype,
        request.link_bw,
        request.link_latency,
        request.gpus_per_node,
        request.inter_node_bw,
        request.inter_node_latency,
    )
    return cluster, cluster.instance(0)


def flag_network(request: TraceRequest, placed: PlacedInstance) -> NetworkConfig:
    """The network of a flag-built instance: nodes of --gpus-per-node NPUs (cluster_network.node_network)."""
    return hardware_node_network(
        placed.hardware,
        placed.num_npus,
        request.gpus_per_node,
        request.link_bw,
        request.inter_node_bw,
        request.link_latency,
        request.inter_node_latency,
    )


def _check_flag_values(request: TraceRequest) -> None:
    """--tp/--pp/--gpus-per-node and the link flags, named as the user typed them."""
    for flag, value in (("--tp", request.tp), ("--pp", request.pp), ("--gpus-per-node", request.gpus_per_node)):
        if value is not None and value < 1:
            raise PipesimError(f"{flag} {value}: must be >= 1")
    for flag, value in (("--link-bw", request.link_bw), ("--inter-node-bw", request.inter_node_bw)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PipesimError(f"{flag} {value:g}: must be a bandwidth > 0 GB/s")
    for flag, value in (("--link-latency", request.link_latency), ("--inter-node-latency", request.inter_node_latency)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise PipesimError(f"{flag} {value:g}: must be a latency >= 0 ns")


def _check_dtype(dtype: str) -> int:
    try:
        return dtype_bytes(dtype)
    except PipesimError:
        raise PipesimError(f"--dtype {dtype!r}: unknown; use one of {', '.join(DTYPE_BYTES)}") from None


def _check_batch_fits_model(model: ModelSpec, iteration: Iteration) -> None:
    """No request may be longer than the model's context window (max_position_embeddings, when known)."""
    limit = model.max_position_embeddings
    if limit <= 0:
        return
    for chunk in iteration.prefill:
        if chunk.kv_after > limit:
            raise PipesimError(
                f"--prefill {chunk.tokens}@{chunk.context}: {chunk.kv_after} tokens of context but {model.name} "
                f"holds at most {limit} (max_position_embeddings); use TOKENS + CONTEXT <= {limit}"
            )
    if iteration.decode and max(iteration.decode) > limit:
        raise PipesimError(
            f"--decode ...x{max(iteration.decode)}: {max(iteration.decode)} tokens of KV but {model.name} "
            f"holds at most {limit} (max_position_embeddings); use KV <= {limit}"
        )


def build_trace(request: TraceRequest) -> tuple[ClusterConfig, PlacedInstance, LayerList, ParallelPlan, Workload]:
    """Everything `trace` writes, in memory."""
    _check_dtype(request.dtype)
    cluster, placed = resolve_instance(request)
    model, tp, pp = placed.model, placed.tp_size, placed.pp_size
    _check_batch_fits_model(model, request.iteration)
    latency = make_latency_model(model, placed.hardware, tp, request.dtype, request.profile_dir)
    ops = timed_ops(model, request.iteration, tp, latency, request.dtype)
    plan = balanced_plan(ops, model.num_layers, tp, pp)
    # Weights of the time-balanced split (the cluster config checked the even one) plus the batch's KV cache.
    check_batch_fits(
        model, plan, request.iteration, dtype_bytes(request.dtype), placed.usable_mem_bytes, "--prefill/--decode"
    )
    try:
        layers = build_layer_list(model, request.iteration, plan, latency, request.dtype, ops=ops)
        layers = replace(layers, tp=plan.tp)  # layers.csv records the plan it was made for (docs/layer_csv.md)
    except PipesimError as exc:
        if not str(exc).startswith("layer list:"):
            raise
        # The rows come from the batch: name the flags that made them too large.
        raise PipesimError(f"--prefill/--decode: {exc}") from None
    return cluster, placed, layers, plan, build_serving_workload(layers, plan)


def is_trace_output(name: str) -> bool:
    """What `pipesim trace` writes in its folder (and a replay's log/ beside it): the folder may be replaced."""
    if name in (LAYERS_FILE, NETWORK_FILE, SYSTEM_FILE, MEMORY_FILE, COMM_GROUPS_FILE, "log"):
        return True
    rank = name.removeprefix(f"{WORKLOAD_PREFIX}.").removesuffix(".et")
    return name == f"{WORKLOAD_PREFIX}.{rank}.et" and rank.isascii() and rank.isdigit()


def run_trace(request: TraceRequest) -> TraceResult:
    _check_name(request.name)
    check_output_path(Path(request.out_dir) / request.name, "--out-dir/--name", folder=True)
    check_replaceable_folder(Path(request.out_dir) / request.name, "--out-dir/--name", is_trace_output)
    cluster, placed, layers, plan, workload = build_trace(request)
    network = flag_network(request, placed) if request.cluster_config is None else None
    astra = astra_config_for_instance(cluster, placed, plan.comm_groups(), network=network)
    notes = []
    if network is not None and network.dims == 2:
        (per_node, nodes), (intra_bw, inter_bw) = network.npus_count, network.bandwidth
        notes.append(
            f"network: {nodes} nodes of {per_node} NPUs (--gpus-per-node), {intra_bw:g} GB/s and "
            f"{network.latency[0]:g} ns inside a node, {inter_bw:g} GB/s and {network.latency[1]:g} ns across"
        )
    destination = Path(request.out_dir) / request.name

    def write(folder: Path) -> tuple[list[Path], dict[str, Path]]:
        with paused_gc():
            et_files = write_workload(folder / WORKLOAD_PREFIX, workload)
        layers.write_csv(folder / LAYERS_FILE)
        if plan.npus == 1:
            notes.append(
                "1 NPU: no network.yml/system.json/memory.json were written, since ASTRA-Sim needs at least 2 NPUs "
                "in every network dimension; neither `pipesim replay` nor ASTRA-Sim can run this trace (use --tp or "
                "--pp >= 2 for one they can)"
            )
            return et_files, {}
        return et_files, write_astra_files(folder, astra)

    et_files, config_files = write_folder_atomically(destination, write)
    element_bytes = dtype_bytes(request.dtype)
    return TraceResult(
        directory=destination,
        prefix=destination / WORKLOAD_PREFIX,
        plan=plan,
        layers=layers,
        instance=placed,
        dtype=request.dtype,
        latency_source=f"profile bundle {request.profile_dir}" if request.profile_dir else "roofline",
        et_files=[destination / path.name for path in et_files],
        config_files={key: destination / path.name for key, path in config_files.items()},
        nodes_per_npu=[len(graph.nodes) for graph in workload.graphs],
        stage_params=stage_params(placed.model, plan),
        weight_bytes_per_npu=weight_bytes_per_npu(placed.model, plan, element_bytes),
        notes=notes,
        iteration_text=(
            f"{request.iteration.describe()}: {request.iteration.tokens} tokens, "
            f"{request.iteration.sequences} sequences"
        ),
    )


# --- convert -----------------------------------------------------------------------------------------------


@dataclass
class ConvertResult:
    prefix: Path
    plan: ParallelPlan
    layers: LayerList
    et_files: list[Path]
    config_files: dict[str, Path]
    nodes_per_npu: list[int]

    def summary(self) -> str:
        stage_ns = self.layers.stage_ns()
        lines = [
            f"{self.prefix}.{{0..{self.plan.npus - 1}}}.et: tp {self.plan.tp} x pp {self.plan.pp}, "
            f"{sum(self.nodes_per_npu)} nodes"
        ]
        for stage, (start, end) in enumerate(self.plan.stage_blocks):
            lines.append(f"  stage {stage}: blocks {start}-{end - 1}, compute {stage_ns[stage] / 1e6:.3f} ms")
        if self.config_files:
            lines.append("  configs: " + ", ".join(str(path) for path in self.config_files.values()))
        if "network" not in self.config_files:
            lines.append(
                "  note: no network.yml/system.json/memory.json written (pass --cluster-config to get them); "
                "replay needs them"
            )
        return "\n".join(lines)


def run_convert(
    csv_path: Path | str,
    tp: int | None,
    pp: int | None,
    prefix: Path | str,
    dtype: str | None = None,
    hidden: int | None = None,
    cluster_config: Path | str | None = None,
    instance: int = 0,
    iteration_id: int = 0,
) -> ConvertResult:
    """A layer CSV -> `<prefix>.<npu>.et`; with a cluster config, its instance's ASTRA-Sim files beside them.
    tp/pp None: the plan the table records (`# pipesim plan:`), else tp 1 and the table's own stages (or 1)."""
    for flag, value in (("--tp", tp), ("--pp", pp)):
        if value is not None and value < 1:
            raise PipesimError(f"convert: {flag} {value}: must be >= 1")
    check_output_path(et_path(prefix, 0), "-o/--output")
    element_bytes = _check_dtype(dtype) if dtype else None
    layers = read_layer_csv(csv_path, hidden_size=hidden, dtype_bytes=element_bytes, pp=pp, tp=tp)
    tp = tp if tp is not None else layers.tp or 1
    pp = layers.num_stages
    plan = plan_of_layers(layers, tp=tp)
    workload = build_serving_workload(layers, plan, iteration_id=iteration_id)
    astra = None
    if cluster_config is not None:
        cluster = load_cluster_config(cluster_config, dtype=dtype or DEFAULT_DTYPE)
        placed = cluster.instance(instance)
        if (placed.tp_size, placed.pp_size) != (tp, pp):
            raise PipesimError(
                f"{cluster_config}: instance {instance} has tp_size {placed.tp_size}, pp_size {placed.pp_size} but "
                f"--tp {tp} --pp {pp}; make them agree"
            )
        astra = astra_config_for_instance(cluster, placed, plan.comm_groups())
    prefix = Path(prefix)
    with paused_gc():
        et_files = write_workload(prefix, workload)
    # Remove ranks left over from an earlier, larger conversion to the same prefix: readers count files.
    for rank in range(plan.npus, count_ranks(prefix)):
        et_path(prefix, rank).unlink()
    if astra is not None:
        config_files = write_astra_files(prefix.parent, astra)
    elif plan.comm_groups():
        # The TP collectives name their group by pg_name: replay and ASTRA-Sim need the groups file beside them.
        config_files = {"comm_groups": write_comm_groups(prefix.parent, plan.comm_groups())}
    else:
        config_files = {}
    return ConvertResult(
        prefix=prefix,
        plan=plan,
        layers=layers,
        et_files=et_files,
        config_files=config_files,
        nodes_per_npu=[len(graph.nodes) for graph in workload.graphs],
    )
