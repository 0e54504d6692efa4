"""The library call behind `pipesim train`: schedule -> per-NPU graphs -> engine -> step metrics.

    result = run_training(TrainingConfig(model="gpt2", hardware="A100-80G", pp=4, schedule="1f1b", microbatches=8))
    result.step_time_ns, result.bubble_fraction, result.per_stage[0].params, result.to_json()

Step time is the last NPU's finish. Bubble fraction = 1 - busy compute / (NPUs x step), overall and per
pipeline rank. Model FLOPs are Megatron-LM's count (training_ops.megatron_model_flops), MFU their rate per
GPU over the hardware's dense peak. Memory per NPU: bf16 weights, fp32 gradients, optimizer state
(training_ops.param_memory) and the activations of the microbatches in flight at the rank's peak.

Representative mode (`representative=True`): only one NPU per pipeline rank (tp_rank 0 of DP replica 0) is
simulated; the others run the same graph at the same ticks. Its collectives cannot run without their groups,
so each is timed first on its real group and network (a probe run of that one collective on the full network,
every member issuing at once, as they do in the full step), then replayed as a fixed-time node on the comm
slot. Sends and receives still cross the full network between the real NPU ids. The step time equals the
full simulation's (tests/test_training_graphs.py checks it); the full per-NPU traces are still written with
--out-dir (streamed one NPU at a time).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astra_driver.astra_config import AstraConfig, NetworkConfig, SystemConfig, load_network
from astra_driver.astra_files import COMM_GROUPS_FILE, MEMORY_FILE, NETWORK_FILE, SYSTEM_FILE, write_astra_files
from astra_driver.cluster_network import DEFAULT_GPUS_PER_NODE, DEFAULT_INTER_NODE_BW_GBPS, node_network
from astra_driver.engine import simulate
from astra_driver.engine.core import K_TIMED, S_COMM, Engine
from astra_driver.paths import check_replaceable_folder
from llm_converter.chakra.writer import write_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import Graph, Node, NodeType, Workload
from llm_converter.graphs.training import (
    TrainingGraphSpec,
    TrainingPlan,
    build_rank_graph,
    build_training_workload,
    grad_buckets,
    iter_rank_graphs,
    split_training_stages,
)
from llm_converter.hardware import HardwareSpec, get_hardware
from llm_converter.io import write_folder_atomically
from llm_converter.latency.roofline import RooflineModel
from llm_converter.memory import MEM_GB
from llm_converter.models import ModelSpec, dtype_bytes, get_model
from llm_converter.perf import paused_gc
from llm_converter.schedules import build_schedule, load_schedule
from llm_converter.schedules.actions import Computation, PipelineSchedule
from llm_converter.schedules.dry_run import peak_inflight
from llm_converter.training_ops import (
    RECOMPUTE_MODES,
    ParamMemory,
    StageSteps,
    build_stage_steps,
    fixed_stage_steps,
    megatron_model_flops,
    optimizer_step_ns,
    param_memory,
    stage_activation_bytes,
    stage_layer_list,
    step_ns,
    training_layers,
)

WORKLOAD_PREFIX = "train"
# --p2p-time-us: every message costs exactly C: one hop at latency C and a bandwidth so high that no message up to
# 1 GiB adds a nanosecond (the engine floors hops * latency + size / bandwidth).
FIXED_P2P_BANDWIDTH_GBPS = 1e9


DEFAULT_SCHEDULE = "1f1b"  # --schedule when not given


@dataclass(frozen=True)
class TrainingConfig:
    model: str
    hardware: str
    tp: int = 1
    pp: int = 1
    dp: int = 1
    schedule: str = DEFAULT_SCHEDULE
    microbatches: int = 1
    micro_batch_size: int = 1
    seq_len: int = 1024
    chunks: int | None = None
    schedule_csv: Path | None = None  # a custom schedule (torch's per-rank action CSV) instead of `schedule`
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    intra_node_bw_gbps: float | None = None  # default: the hardware's interconnect
    inter_node_bw_gbps: float | None = None  # default: a 400 Gb/s NIC per GPU
    network_file: Path | None = None  # an ASTRA-Sim network.yml instead of the flags
    recompute: str = "none"
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False  # Megatron-LM default: off (--overlap-grad-reduce turns it on)
    stage_time_us: tuple[float, ...] | None = None  # F,B[,W] per (virtual) stage, replacing layer times
    p2p_time_us: float | None = None  # every activation / gradient transfer takes exactly this long
    # NPU order: Megatron's default tp-dp-pp (False) or its --use-tp-pp-dp-mapping order tp-pp-dp (True)
    tp_pp_dp_mapping: bool = False
    dtype: str = "bfloat16"
    backend: str = "builtin"
    out_dir: Path | None = None
    representative: bool = False
    record_node_times: bool = False  # keep every simulated node's issue/end ticks (timelines)


@dataclass
class StageReport:
    """One pipeline rank (all its virtual stages) on one NPU."""

    pp_rank: int
    stages: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]
    params: int  # the stages' parameters, all TP ranks together (the model's count)
    memory: ParamMemory  # one NPU
    activation_bytes_per_microbatch: tuple[int, ...]  # per virtual stage, one NPU
    peak_inflight_microbatches: tuple[int, ...]  # per virtual stage
    peak_activation_bytes: int  # one NPU, at the rank's peak
    busy_ns: int
    bubble_fraction: float
    capacity_bytes: int = 0  # the NPU's device memory
    action_ns: tuple[dict[str, int], ...] = ()  # per virtual stage: compute ns of one microbatch's F, B, I, W

    @property
    def fits(self) -> bool:
        return self.total_memory_bytes <= self.capacity_bytes

    @property
    def total_memory_bytes(self) -> int:
        return self.memory.total + self.peak_activation_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "pp_rank": self.pp_rank,
            "stages": list(self.stages),
            "blocks": [list(b) for b in self.blocks],
            "params": self.params,
            "peak_inflight_microbatches": max(self.peak_inflight_microbatches),
            "peak_inflight_per_stage": list(self.peak_inflight_microbatches),
            "bubble_fraction": self.bubble_fraction,
            "busy_ns": self.busy_ns,
            "microbatch_compute_ns": [dict(times) for times in self.action_ns],
            "memory": {
                "params_per_npu": self.memory.params,
                "weight_bytes": self.memory.weight_bytes,
                "grad_bytes": self.memory.grad_bytes,
                "optimizer_bytes": self.memory.optimizer_bytes,
                "activation_bytes_per_microbatch": list(self.activation_bytes_per_microbatch),
                "peak_activation_bytes": self.peak_activation_bytes,
                "total_bytes": self.total_memory_bytes,
                "capacity_bytes": self.capacity_bytes,
                "fits": self.fits,
            },
        }


@dataclass
class TrainingResult:
    config: TrainingConfig
    schedule: PipelineSchedule
    plan: TrainingPlan
    step_time_ns: int
    bubble_fraction: float
    tokens_per_s: float
    model_flops: float
    hardware_flops: float
    # None with --stage-time-us: fixed compute times have no FLOPs behind them (an MFU over 100% otherwise).
    tflops_per_gpu: float | None
    hardware_tflops_per_gpu: float | None
    mfu: float | None
    per_stage: list[StageReport]
    nodes: int
    simulated_npus: int
    backend: str
    files: list[Path] = field(default_factory=list)
    peak_tflops: float = 0.0
    # Per NPU (node_id, name, type, issue_ns, end_ns) when recorded; empty for NPUs not simulated.
    node_times: list[list[tuple[int, str, int, int, int]]] | None = None
    workload: Workload | None = None  # the simulated graphs (builtin, full simulation), for timeline facts

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "hardware": self.config.hardware,
            "schedule": self.schedule.name,
            "tp": self.plan.tp,
            "pp": self.plan.pp,
            "dp": self.plan.dp,
            "chunks": self.schedule.chunks,
            "microbatches": self.schedule.microbatches,
            "micro_batch_size": self.config.micro_batch_size,
            "seq_len": self.config.seq_len,
            "step_time_ns": self.step_time_ns,
            "bubble_fraction": self.bubble_fraction,
            "tokens_per_s": self.tokens_per_s,
            "model_flops": self.model_flops,
            "tflops_per_gpu": self.tflops_per_gpu,
            "hardware_tflops_per_gpu": self.hardware_tflops_per_gpu,
            "mfu": self.mfu,
            "nodes": self.nodes,
            "simulated_npus": self.simulated_npus,
            "backend": self.backend,
            "per_stage": [stage.to_json() for stage in self.per_stage],
            "files": [str(path) for path in self.files],
        }

    def summary(self) -> str:
        c, p = self.config, self.plan
        lines = [
            f"{c.model} on {p.npus} x {c.hardware}: tp {p.tp} x pp {p.pp} x dp {p.dp}, schedule {self.schedule.name}"
            f" (chunks {self.schedule.chunks}), {self.schedule.microbatches} microbatches of {c.micro_batch_size} x "
            f"{c.seq_len} tokens, recompute {c.recompute}"
            + (", sequence parallel" if c.sequence_parallel else "")
            + (", distributed optimizer" if c.distributed_optimizer else ""),
            f"step time      {self.step_time_ns / 1e6:.3f} ms",
            f"bubble         {self.bubble_fraction * 100:.2f}% (1 - busy compute / (NPUs x step))",
            f"throughput     {self.tokens_per_s:,.0f} tokens/s",
            (
                f"TFLOPs/GPU     {self.tflops_per_gpu:.1f} model (Megatron count), {self.hardware_tflops_per_gpu:.1f} "
                f"with recompute; MFU {self.mfu * 100:.1f}% of {self.peak_tflops:g} TFLOPS"
                if self.tflops_per_gpu is not None and self.hardware_tflops_per_gpu is not None and self.mfu is not None
                else "TFLOPs/GPU     n/a: --stage-time-us fixes the compute times, so no FLOPs rate or MFU"
            ),
            f"simulated      {self.nodes:,} nodes on {self.simulated_npus} NPUs ({self.backend})",
            "stage  blocks      params      weights    grads      optimizer  activations (peak mb)  bubble",
        ]
        for s in self.per_stage:
            blocks = ",".join(f"{a}-{b - 1}" for a, b in s.blocks)
            inflight = "/".join(str(n) for n in s.peak_inflight_microbatches)
            lines.append(
                f"{s.pp_rank:<6} {blocks:<11} {_count(s.params):<11} {_gb(s.memory.weight_bytes):<10} "
                f"{_gb(s.memory.grad_bytes):<10} {_gb(s.memory.optimizer_bytes):<10} "
                f"{_gb(s.peak_activation_bytes) + f' ({inflight})':<22} {s.bubble_fraction * 100:.2f}%"
            )
        for s in self.per_stage:
            if not s.fits:
                lines.append(
                    f"stage {s.pp_rank} needs {_gb(s.total_memory_bytes)} per NPU but {c.hardware} has "
                    f"{_gb(s.capacity_bytes)}: it does not fit (more --tp/--pp, --recompute, --distributed-optimizer)"
                )
        if self.files:
            lines.append(f"wrote {len(self.files)} files under {self.files[0].parent}")
        return "\n".join(lines)


def _gb(value: int) -> str:
    return f"{value / MEM_GB:.3f} GB"  # GB of 2^30 bytes, as every GB pipesim prints (llm_converter/memory.py)


def _count(value: int) -> str:
    return f"{value / 1e6:.2f}M" if value < 1e9 else f"{value / 1e9:.2f}B"


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainingBuild:
    """Everything a run simulates, before simulating: inspectable by tests and the benchmark."""

    config: TrainingConfig
    model: ModelSpec
    hardware: HardwareSpec
    schedule: PipelineSchedule
    plan: TrainingPlan
    spec: TrainingGraphSpec
    astra: AstraConfig
    stage_params: tuple[int, ...]  # per virtual stage, the model's count
    stage_npu_params: tuple[int, ...]  # per virtual stage, one TP rank
    activation_bytes: tuple[int, ...]  # per virtual stage, one microbatch, one NPU


def _check_config(config: TrainingConfig) -> None:
    for flag, value in (("--tp", config.tp), ("--pp", config.pp), ("--dp", config.dp)):
        if value < 1:
            raise PipesimError(f"{flag}: {value}; give an integer >= 1")
    if config.microbatches < 1:
        raise PipesimError(f"--microbatches: {config.microbatches}; give at least 1 microbatch")
    if config.recompute not in RECOMPUTE_MODES:
        raise PipesimError(f"--recompute: {config.recompute!r}; choose one of {', '.join(RECOMPUTE_MODES)}")
    if config.stage_time_us is not None:
        times = config.stage_time_us
        if len(times) not in (2, 3) or not all(math.isfinite(t) and t > 0 for t in times):
            raise PipesimError(
                f"--stage-time-us: {','.join(f'{t:g}' for t in times)}; give F,B or F,B,W in microseconds, each > 0"
            )
    if config.p2p_time_us is not None and not (math.isfinite(config.p2p_time_us) and config.p2p_time_us >= 0):
        raise PipesimError(f"--p2p-time-us: {config.p2p_time_us:g}; give a time >= 0 microseconds")
    if config.p2p_time_us is not None and config.network_file is not None:
        raise PipesimError("--p2p-time-us and --network: give one (a fixed transfer time replaces the network)")
    if config.representative and config.backend != "builtin":
        raise PipesimError(
            "--representative: only the builtin engine simulates a subset of NPUs; use --backend builtin"
        )


def _network(config: TrainingConfig, hardware: HardwareSpec, npus: int) -> NetworkConfig:
    if config.p2p_time_us is not None:
        # Dimension 0 holds a stage's TP ranks (consecutive ids) on the intra-node link, so TP collectives keep
        # their time; dimension 1 (pipeline ranks and DP replicas) costs exactly C per message.
        fixed = ("FullyConnected", npus // config.tp, FIXED_P2P_BANDWIDTH_GBPS, config.p2p_time_us * 1000.0)
        intra_bw = config.intra_node_bw_gbps if config.intra_node_bw_gbps is not None else hardware.interconnect_gbps
        tp_dim = ("FullyConnected", config.tp, float(intra_bw), float(hardware.interconnect_latency_ns))
        dims = [dim for dim in (tp_dim, fixed) if dim[1] > 1] or [fixed]
        return NetworkConfig(
            topology=[d[0] for d in dims],
            npus_count=[d[1] for d in dims],
            bandwidth=[d[2] for d in dims],
            latency=[d[3] for d in dims],
        )
    if config.network_file is not None:
        network = load_network(config.network_file)
        if network.npus != npus:
            raise PipesimError(
                f"{config.network_file}: describes {network.npus} NPUs but tp x pp x dp = {npus}; make npus_count's "
                f"product {npus}"
            )
        return network
    return node_network(
        npus,
        config.gpus_per_node,
        config.intra_node_bw_gbps if config.intra_node_bw_gbps is not None else hardware.interconnect_gbps,
        config.inter_node_bw_gbps if config.inter_node_bw_gbps is not None else DEFAULT_INTER_NODE_BW_GBPS,
        intra_node_latency_ns=hardware.interconnect_latency_ns,
    )


def _system(network: NetworkConfig, hardware: HardwareSpec, trace_enabled: bool = False) -> SystemConfig:
    ring = ["ring"] * network.dims
    return SystemConfig(
        trace_enabled=trace_enabled,  # ASTRA-Sim logs each node's issue/callback only when set (--timeline)
        all_reduce_implementation=list(ring),
        all_gather_implementation=list(ring),
        reduce_scatter_implementation=list(ring),
        all_to_all_implementation=list(ring),
        local_mem_bw=float(hardware.hbm_gbps),
        peak_perf=float(hardware.peak_tflops),
    )


def build_training(config: TrainingConfig) -> TrainingBuild:
    """Schedule, plan, per-stage steps, graph spec and ASTRA-Sim config of `config` (nothing simulated)."""
    _check_config(config)
    model = get_model(config.model)
    hardware = get_hardware(config.hardware)
    if config.schedule_csv is not None:
        schedule = load_schedule(config.schedule_csv)
        if schedule.pp != config.pp:
            raise PipesimError(
                f"{config.schedule_csv}: {schedule.pp} ranks (rows) but --pp {config.pp}; make them agree"
            )
        # The CSV fixes the microbatches and chunks: a flag saying otherwise would be silently ignored.
        if config.microbatches not in (1, schedule.microbatches):
            raise PipesimError(
                f"{config.schedule_csv}: {schedule.microbatches} microbatches but --microbatches "
                f"{config.microbatches}; drop --microbatches (the CSV gives them) or make them agree"
            )
        if config.chunks is not None and config.chunks != schedule.chunks:
            raise PipesimError(
                f"{config.schedule_csv}: {schedule.chunks} stages per rank but --chunks {config.chunks}; drop "
                "--chunks (the CSV gives them) or make them agree"
            )
        if config.schedule != DEFAULT_SCHEDULE:
            raise PipesimError(
                f"--schedule {config.schedule} and --schedule-csv {config.schedule_csv}: give one of them"
            )
    else:
        schedule = build_schedule(config.schedule, config.pp, config.microbatches, config.chunks)
    chunks = schedule.num_stages // schedule.pp
    try:
        stage_blocks = split_training_stages(model.num_layers, config.pp, chunks)
    except PipesimError as error:
        if config.schedule_csv is None:
            raise
        # The user gave no --chunks: say the stage count comes from the CSV.
        raise PipesimError(
            f"{config.schedule_csv}: its {schedule.num_stages} stages ({chunks} per rank) do not fit the model: {error}"
        ) from None
    plan = TrainingPlan(
        config.tp, config.pp, config.dp, stage_blocks, tuple(schedule.stage_to_rank), config.tp_pp_dp_mapping
    )
    sp = config.sequence_parallel and config.tp > 1
    pre, block, post = training_layers(
        model, config.micro_batch_size, config.seq_len, config.tp, config.dtype, sequence_parallel=sp, sms=hardware.sms
    )
    roofline = RooflineModel(hardware)
    last = plan.num_stages - 1
    steps: list[StageSteps] = []
    stage_params: list[int] = []
    npu_params: list[int] = []
    activations: list[int] = []
    buckets = []
    for stage, (start, end) in enumerate(stage_blocks):
        layers = stage_layer_list(pre, block, post, range(start, end), stage == 0, stage == last)
        if config.stage_time_us is not None:
            times = config.stage_time_us
            steps.append(fixed_stage_steps(times[0], times[1], times[2] if len(times) == 3 else None))
        else:
            steps.append(build_stage_steps(layers, roofline, config.recompute))
        params = (end - start) * model.block_params()
        if stage == 0:
            params += model.embedding_params()
        if stage == last:
            params += model.final_norm_params() + model.lm_head_params()
        stage_params.append(params)
        npu_params.append(sum(layer.params for _, layer in layers))
        activations.append(
            stage_activation_bytes(
                model,
                end - start,
                stage == 0,
                stage == last,
                config.micro_batch_size,
                config.seq_len,
                config.tp,
                sp,
                config.recompute,
            )
        )
        if config.dp > 1:
            buckets.append(grad_buckets([layer.params for _, layer in layers], config.dp))
        else:
            buckets.append(())
    boundary = config.micro_batch_size * config.seq_len * model.hidden_size * dtype_bytes(config.dtype)
    if config.tp > 1:
        # Each TP rank sends its 1/tp slice: the sequence shard with SP, else Megatron's scatter/gather
        # optimisation (Narayanan et al. 2021, section 4.1), the receiving stage all-gathering it over NVLink.
        boundary = -(-boundary // config.tp)
    optimizer_ns: tuple[int, ...] = ()
    if config.stage_time_us is None:
        optimizer_ns = tuple(
            optimizer_step_ns(
                hardware, sum(npu_params[s] for s in plan.stages_of(r)), config.dp, config.distributed_optimizer
            )
            for r in range(plan.pp)
        )
    spec = TrainingGraphSpec(
        schedule=schedule,
        plan=plan,
        stage_steps=tuple(steps),
        boundary_bytes=(boundary,) * (plan.num_stages - 1),
        buckets=tuple(buckets),
        distributed_optimizer=config.distributed_optimizer,
        overlap_grad_reduce=config.overlap_grad_reduce,
        optimizer_ns=optimizer_ns,
        gather_boundary=config.tp > 1 and not sp,
    )
    network = _network(config, hardware, plan.npus)
    astra = AstraConfig(
        network=network,
        system=_system(network, hardware, trace_enabled=config.record_node_times and config.backend != "builtin"),
        comm_groups=plan.comm_groups(),
    )
    return TrainingBuild(
        config, model, hardware, schedule, plan, spec, astra, tuple(stage_params), tuple(npu_params), tuple(activations)
    )


# ---------------------------------------------------------------------------------------------------------
# Simulating
# ---------------------------------------------------------------------------------------------------------


class _FixedCollectiveEngine(Engine):
    """The builtin engine with some collectives replayed from a fixed duration (ns) on the comm slot."""

    def __init__(self, *args: Any, fixed_ns: dict[tuple[str, int, int], int], **kwargs: Any) -> None:
        self._fixed_ns = fixed_ns
        super().__init__(*args, **kwargs)

    def _classify(self, rank: int, node: Node) -> tuple[int, int, int]:
        if node.type == NodeType.COMM_COLL_NODE and node.pg_name:
            ns = self._fixed_ns.get((node.pg_name, int(node.comm_type or 0), int(node.comm_size or 0)))
            if ns is not None:
                return K_TIMED, S_COMM, ns
        return super()._classify(rank, node)


def probe_collective_ns(
    astra: AstraConfig, npus: int, wanted: list[tuple[str, int, int]]
) -> dict[tuple[str, int, int], int]:
    """How long each (pg_name, comm_type, comm_size) collective takes on its group when every member issues it at
    the same tick, on the full network: one at a time in one engine."""
    engine = Engine(astra, npus=npus, comm_groups=astra.comm_groups)
    out: dict[tuple[str, int, int], int] = {}
    for key in dict.fromkeys(wanted):
        pg_name, comm_type, size = key
        members = astra.comm_groups[pg_name]
        start = engine.now
        handles = []
        for member in members:
            node = Node(
                0, f"probe_{pg_name}", NodeType.COMM_COLL_NODE, [], comm_type=comm_type, comm_size=size, pg_name=pg_name
            )
            handles.append(engine.add_graph(member, Graph(rank=member, nodes=[node]), start))
        engine.run()
        out[key] = max(h.finish_ns for h in handles) - start  # type: ignore[operator]
    return out


@dataclass
class _Simulated:
    finish_ns: dict[int, int]  # NPU -> finish
    busy_ns: dict[int, int]  # NPU -> compute
    nodes: int
    npus: int
    node_times: list | None = None
    workload: Workload | None = None


def _simulate_representative(build: TrainingBuild) -> _Simulated:
    plan = build.plan
    ranks = plan.representative_ranks()
    with paused_gc():
        graphs = [build_rank_graph(build.spec, rank) for rank in ranks]
    wanted = [
        (node.pg_name, int(node.comm_type), int(node.comm_size))
        for graph in graphs
        for node in graph.nodes
        if node.type == NodeType.COMM_COLL_NODE and node.pg_name
    ]
    fixed = probe_collective_ns(build.astra, plan.npus, wanted)
    engine = _FixedCollectiveEngine(
        build.astra,
        npus=plan.npus,
        comm_groups=build.astra.comm_groups,
        record_node_times=build.config.record_node_times,
        fixed_ns=fixed,
    )
    with paused_gc():
        for rank, graph in zip(ranks, graphs, strict=True):
            engine.add_graph(rank, graph, 0)
        engine.run()
    result = engine.result()
    finish = {rank: result.finish_ns[rank] for rank in ranks}
    busy = {rank: result.finish_ns[rank] - result.exposed_comm_ns[rank] for rank in ranks}
    return _Simulated(finish, busy, sum(len(g.nodes) for g in graphs), len(ranks), result.node_times)


def _write_traces(build: TrainingBuild, out_dir: Path) -> list[Path]:
    """The step's .et files and ASTRA-Sim files, written to a staging folder swapped into `out_dir` at the end
    (an interrupted or failed write leaves no half-written folder)."""

    def write(folder: Path) -> list[str]:
        with paused_gc():
            et_files = write_workload(folder / WORKLOAD_PREFIX, iter_rank_graphs(build.spec))
        if build.plan.npus == 1:
            return [path.name for path in et_files]
        config_files = write_astra_files(folder, build.astra)
        return [path.name for path in [*et_files, *config_files.values()]]

    check_replaceable_folder(out_dir, "--out-dir", _is_step_output)
    return [out_dir / name for name in write_folder_atomically(out_dir, write)]


def _is_step_output(name: str) -> bool:
    """What a previous step wrote into --out-dir (the folder is replaced whole)."""
    ours = {NETWORK_FILE, SYSTEM_FILE, MEMORY_FILE, COMM_GROUPS_FILE, "log"}
    return name in ours or (name.startswith(f"{WORKLOAD_PREFIX}.") and name.endswith(".et"))


def _simulate_backend(build: TrainingBuild, out_dir: Path | None) -> tuple[_Simulated, list[Path]]:
    from astra_driver.backends import ReplayRun, replay

    folder = out_dir or Path(tempfile.mkdtemp(prefix="pipesim-train-"))
    try:
        files = _write_traces(build, folder)
        if build.plan.npus == 1:
            raise PipesimError(
                f"--backend {build.config.backend}: ASTRA-Sim needs at least 2 NPUs; use --backend builtin"
            )
        groups = folder / COMM_GROUPS_FILE
        run = ReplayRun(
            workload=folder / WORKLOAD_PREFIX,
            system=folder / SYSTEM_FILE,
            network=folder / NETWORK_FILE,
            memory=folder / MEMORY_FILE,
            comm_groups=groups if groups.exists() else None,
            logging_folder=folder / "log",
            record_node_times=build.config.record_node_times,
        )
        result = replay(run, build.config.backend)
    finally:
        if out_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    finish = dict(enumerate(result.finish_ns))
    busy = {rank: f - e for rank, (f, e) in enumerate(zip(result.finish_ns, result.exposed_comm_ns, strict=True))}
    node_times = None
    if result.node_times is not None:
        node_times = [[tuple(entry) for entry in rank] for rank in result.node_times]
    return _Simulated(finish, busy, 0, build.plan.npus, node_times), files if out_dir is not None else []


def simulate_training(build: TrainingBuild) -> tuple[_Simulated, list[Path]]:
    config = build.config
    if config.backend != "builtin":
        return _simulate_backend(build, config.out_dir)
    files: list[Path] = []
    if config.out_dir is not None:
        files = _write_traces(build, Path(config.out_dir))
    if config.representative:
        return _simulate_representative(build), files
    workload = build_training_workload(build.spec)
    result = simulate(workload, build.astra, record_node_times=config.record_node_times)
    finish = dict(enumerate(result.finish_ns))
    busy = {rank: f - e for rank, (f, e) in enumerate(zip(result.finish_ns, result.exposed_comm_ns, strict=True))}
    recorded = workload if config.record_node_times else None
    return _Simulated(finish, busy, workload.node_count(), workload.npus, result.node_times, recorded), files


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------


def peak_activation_bytes(schedule: PipelineSchedule, per_stage: tuple[int, ...]) -> list[int]:
    """Per rank, the most activation bytes held at once: each stage's bytes per microbatch from its forward until
    its last backward (B, or W when split), summed over the rank's stages, along the rank's action order."""
    split = {(a.stage, a.microbatch) for acts in schedule.actions for a in acts if a.computation is Computation.W}
    peaks = []
    for actions in schedule.actions:
        held = peak = 0
        for a in actions:
            if a.computation is Computation.F:
                held += per_stage[a.stage]
                peak = max(peak, held)
            elif a.computation is Computation.W or (
                a.computation is Computation.B and (a.stage, a.microbatch) not in split
            ):
                held -= per_stage[a.stage]
        peaks.append(peak)
    return peaks


def run_training(config: TrainingConfig) -> TrainingResult:
    build = build_training(config)
    simulated, files = simulate_training(build)
    plan, schedule, model, hardware = build.plan, build.schedule, build.model, build.hardware
    step = max(simulated.finish_ns.values())
    if step <= 0:
        raise PipesimError("train: the simulated step took 0 ns; give the stages some work")
    # Ranks not simulated (representative mode) do what their representative does.
    copies = plan.npus / simulated.npus
    busy_total = sum(simulated.busy_ns.values()) * copies
    bubble = 1 - busy_total / (plan.npus * step)
    inflight = peak_inflight(schedule)
    peaks = peak_activation_bytes(schedule, build.activation_bytes)
    action_ns = stage_compute_ns(build)
    per_stage = []
    for r in range(plan.pp):
        stages = plan.stages_of(r)
        rep = plan.rank(r)
        busy = simulated.busy_ns[rep]
        per_stage.append(
            StageReport(
                pp_rank=r,
                stages=stages,
                blocks=tuple(plan.stage_blocks[s] for s in stages),
                params=sum(build.stage_params[s] for s in stages),
                memory=param_memory(
                    sum(build.stage_npu_params[s] for s in stages), plan.dp, config.distributed_optimizer
                ),
                activation_bytes_per_microbatch=tuple(build.activation_bytes[s] for s in stages),
                peak_inflight_microbatches=tuple(inflight[s] for s in stages),
                peak_activation_bytes=peaks[r],
                busy_ns=busy,
                bubble_fraction=1 - busy / step,
                capacity_bytes=hardware.memory_bytes,
                action_ns=tuple(action_ns[s] for s in stages),
            )
        )
    sequences = schedule.microbatches * config.micro_batch_size * plan.dp
    flops = megatron_model_flops(model, sequences, config.seq_len)
    hw_flops = megatron_model_flops(model, sequences, config.seq_len, config.recompute)
    seconds = step / 1e9
    fixed_times = config.stage_time_us is not None
    tflops = None if fixed_times else flops / seconds / plan.npus / 1e12
    return TrainingResult(
        config=config,
        schedule=schedule,
        plan=plan,
        step_time_ns=step,
        bubble_fraction=bubble,
        tokens_per_s=sequences * config.seq_len / seconds,
        model_flops=flops,
        hardware_flops=hw_flops,
        tflops_per_gpu=tflops,
        hardware_tflops_per_gpu=None if fixed_times else hw_flops / seconds / plan.npus / 1e12,
        mfu=None if tflops is None else tflops / hardware.peak_tflops,
        per_stage=per_stage,
        nodes=simulated.nodes,
        simulated_npus=simulated.npus,
        backend=config.backend,
        files=files,
        peak_tflops=hardware.peak_tflops,
        node_times=simulated.node_times,
        workload=simulated.workload,
    )


def stage_compute_ns(build: TrainingBuild) -> list[dict[str, int]]:
    """Per virtual stage, the ns of one microbatch's F, B, I and W on one NPU (compute only)."""
    return [{letter: step_ns(steps.for_letter(letter)) for letter in "FBIW"} for steps in build.spec.stage_steps]
