"""The serving loop: every instance's scheduler driving its NPUs on a running builtin engine.

Per instance: one Scheduler (vLLM v1 policy, astra_driver.serving.scheduler) and one incremental Engine holding the
instance's NPUs with the ASTRA-Sim configuration `pipesim trace` writes for it (instances share nothing but the
cluster link, so each gets its own engine; all engines step in lock-step on one clock). Under P/D a third kind of
engine, the cluster link (every NPU of the cluster on one FullyConnected dimension at link_bw / link_latency),
carries each finished prefill's KV cache from the prefill instance's NPUs to the decode instance's as send/recv.

One step of the loop, at simulated time `now` (docs/serving.md, "The loop"):
  1. requests that arrived by `now` are routed (astra_driver.serving.router) and queued at their instance;
  2. an instance whose first pipeline stage is free asks its scheduler for a batch (None while pp_size batches
     are in flight or nothing can run); the batch -> Iteration -> timed layer ops (roofline or profile bundle)
     -> per-NPU graphs (llm_converter.graphs.forward, the iteration id in the activation tags) -> added to the
     engine at `now`. Stage s starts it as soon as its recv arrived and it finished the previous batch, so
     consecutive batches overlap across stages;
  3. time jumps to the next engine event or the next arrival, whichever is first;
  4. a batch whose last stage finished has its tokens: scheduler.finish_batch, an IterationRecord, and under P/D
     the KV transfer of each request whose prefill (first token) just finished.
Arrivals during an iteration join the next batch the scheduler builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from astra_driver.astra_config import AstraConfig, NetworkConfig
from astra_driver.astra_files import astra_config_for_instance
from astra_driver.cluster_config import ClusterConfig, PlacedInstance
from astra_driver.engine import Engine
from astra_driver.engine.core import GraphHandle, WorkloadHandle
from astra_driver.report.timeline import TimeWindow
from astra_driver.serving.metrics import IntervalLog, IterationRecord
from astra_driver.serving.node_timeline import NodeTimeline
from astra_driver.serving.request import Request, RequestStatus
from astra_driver.serving.router import make_router
from astra_driver.serving.scheduler import ScheduledBatch, Scheduler, SchedulerConfig, SchedulerStats, defaults_for
from llm_converter.errors import PipesimError
from llm_converter.graph import Graph, Node, NodeType, Workload
from llm_converter.graphs.forward import build_fused_workload, fused_steps
from llm_converter.graphs.tags import kv_transfer_tag
from llm_converter.iteration import Iteration
from llm_converter.latency import LatencyModel, make_latency_model
from llm_converter.layer_ops import LayerOp
from llm_converter.layers import timed_ops
from llm_converter.memory import kv_bytes_per_token, kv_cache_blocks, npu_memory_bytes, weight_bytes_per_npu
from llm_converter.models import dtype_bytes
from llm_converter.perf import paused_gc
from llm_converter.plan import ParallelPlan

_FAR_FUTURE = 1 << 62  # run_until bound when no other engine or arrival limits the next step


@dataclass
class ServingRunConfig:
    """What `pipesim run` is asked. None for max_num_batched_tokens / max_num_seqs: vLLM 0.19's defaults for
    the instance's GPU (scheduler.defaults_for); num_gpu_blocks None: from NPU memory (llm_converter.memory)."""

    cluster: ClusterConfig
    requests: list[Request]
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    block_size: int = 16
    num_gpu_blocks: int | None = None
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    routing: str = "least_loaded"  # LLMServingSim's default (LOAD)
    seed: int = 0
    profile_dir: Path | None = None
    # instance id -> latency model, overriding roofline/profile (tests use fixed latencies)
    latency_models: Mapping[int, LatencyModel] | None = None
    log_interval_ns: int | None = None
    emit: Callable[[str], None] | None = None  # where interval log lines go
    keep_traces_dir: Path | None = None
    progress: Callable[[int, int], None] | None = None  # (finished requests, simulated ns), every iteration
    record_timeline: bool = False  # for --timeline: ServingResult.timeline replays the launches it kept
    timeline_window: TimeWindow | None = None  # what the timeline keeps (node_timeline.py)
    timeline_max_events: int | None = None


@dataclass(frozen=True)
class InstanceSummary:
    instance_id: int
    model_name: str
    pd_type: str | None
    num_npus: int
    tp_size: int
    pp_size: int
    npu_ids: tuple[int, ...]
    num_gpu_blocks: int
    weight_bytes_per_npu: tuple[int, ...]  # per stage
    max_inflight_batches: int
    stats: SchedulerStats
    iterations: int


@dataclass
class ServingResult:
    requests: list[Request]
    iterations: list[IterationRecord]
    instances: list[InstanceSummary]
    sim_end_ns: int
    interval_log: IntervalLog | None = None
    transfers: list[KvTransfer] = field(default_factory=list)
    nodes_simulated: int = 0
    timeline: NodeTimeline | None = None  # with record_timeline: the per-NPU node times (replayed on demand)


@dataclass(frozen=True)
class KvTransfer:
    """One finished prefill's KV moved over the cluster link: (src NPU, dst NPU, bytes) per prefill NPU."""

    request_id: int
    src_instance: int
    dst_instance: int
    start_ns: int
    end_ns: int
    messages: tuple[tuple[int, int, int], ...]
    transfer_id: int = -1  # its number on the cluster link (the messages' tags come from it)


# ---------------------------------------------------------------------------------------------------------
# One instance
# ---------------------------------------------------------------------------------------------------------


class InstanceRun:
    """An instance's scheduler, engine and graph builder, and the batches it has in flight."""

    def __init__(self, placed: PlacedInstance, cluster: ClusterConfig, config: ServingRunConfig) -> None:
        self.placed = placed
        self.instance_id = placed.index
        self.pd_type = placed.spec.pd_type
        self.model = placed.model
        self.dtype = cluster.dtype
        self.element_bytes = dtype_bytes(cluster.dtype)
        self.plan = ParallelPlan.even(placed.tp_size, placed.pp_size, self.model.num_layers)
        self.hidden = self.model.hidden_size
        self.weights = weight_bytes_per_npu(self.model, self.plan, self.element_bytes)
        self.kv_per_token = [
            kv_bytes_per_token(self.model, self.plan, stage, self.element_bytes) for stage in range(self.plan.pp)
        ]
        where = f"{cluster.source}: {placed.path}"
        if config.num_gpu_blocks is not None:
            if config.num_gpu_blocks < 2:
                raise PipesimError(f"--num-gpu-blocks {config.num_gpu_blocks}: must be >= 2 (one is vLLM's null block)")
            self.num_gpu_blocks = config.num_gpu_blocks
        else:
            usable = npu_memory_bytes(placed.spec.npu_mem.mem_size, placed.spec.npu_mem.mem_util)
            try:
                self.num_gpu_blocks = kv_cache_blocks(
                    self.model, self.plan, self.element_bytes, usable, config.block_size
                )
            except PipesimError as exc:
                raise PipesimError(f"{where}.{exc}") from None
        max_len = self.model.max_position_embeddings if self.model.max_position_embeddings > 0 else None
        # vLLM 0.19's budget for the GPU (mem_size is GiB); without chunked prefill it is max_model_len.
        tokens, seqs = defaults_for(
            placed.spec.npu_mem.mem_size,
            placed.hardware.name,
            enable_chunked_prefill=config.enable_chunked_prefill,
            max_model_len=max_len,
        )
        self.scheduler_config = SchedulerConfig(
            max_num_batched_tokens=config.max_num_batched_tokens or tokens,
            max_num_seqs=config.max_num_seqs or seqs,
            block_size=config.block_size,
            enable_chunked_prefill=config.enable_chunked_prefill,
            enable_prefix_caching=config.enable_prefix_caching,
            pp_size=self.plan.pp,
            long_prefill_token_threshold=config.long_prefill_token_threshold,
            max_model_len=max_len,
        )
        self.scheduler = Scheduler(self.scheduler_config, self.num_gpu_blocks)
        if config.latency_models is not None and self.instance_id in config.latency_models:
            latency: LatencyModel = config.latency_models[self.instance_id]
        else:
            latency = make_latency_model(self.model, placed.hardware, self.plan.tp, self.dtype, config.profile_dir)
        self.latency = CachedLatency(latency)
        self.astra: AstraConfig = astra_config_for_instance(cluster, placed, self.plan.comm_groups())
        self.engine = Engine(self.astra, npus=self.plan.npus, comm_groups=self.plan.comm_groups())
        self.stage0_ranks = [self.plan.rank(0, t) for t in range(self.plan.tp)]
        self.stage0: list[GraphHandle] = []
        self.inflight: dict[int, tuple[ScheduledBatch, int, int, WorkloadHandle]] = {}
        self.max_inflight = 0
        self.iterations = 0
        self.nodes = 0
        self.waiting_kv: list[Request] = []  # P/D decode: transferred requests waiting for KV blocks
        self.launch_nodes: dict[int, int] = {}  # --timeline: nodes of each batch in flight

    @property
    def stage0_free(self) -> bool:
        for handle in self.stage0:
            if handle.finish_ns is None:
                return False
        return True

    def build_workload(self, batch: ScheduledBatch, iteration_id: int) -> Workload:
        """The batch's per-NPU graphs: timed layer ops -> fused steps per stage -> graphs."""
        iteration = batch.iteration()
        ops = timed_ops(self.model, iteration, self.plan.tp, self.latency, self.dtype)
        steps = fused_steps(ops, self.plan, self.hidden, self.element_bytes)
        boundary = [iteration.tokens * self.hidden * self.element_bytes] * (self.plan.pp - 1)
        return build_fused_workload(steps, self.plan, iteration_id, boundary)

    def npu_mem_bytes(self, kv_blocks: int) -> int:
        """Weights + KV in use on the fullest NPU (every stage holds each token's KV for its own layers)."""
        tokens = kv_blocks * self.scheduler_config.block_size
        return max(w + kv * tokens for w, kv in zip(self.weights, self.kv_per_token, strict=True))

    def summary(self) -> InstanceSummary:
        placed = self.placed
        return InstanceSummary(
            instance_id=self.instance_id,
            model_name=self.model.name,
            pd_type=self.pd_type,
            num_npus=placed.num_npus,
            tp_size=self.plan.tp,
            pp_size=self.plan.pp,
            npu_ids=tuple(placed.npu_ids),
            num_gpu_blocks=self.num_gpu_blocks,
            weight_bytes_per_npu=tuple(self.weights),
            max_inflight_batches=self.max_inflight,
            stats=self.scheduler.stats,
            iterations=self.iterations,
        )


class CachedLatency:
    """A latency model whose non-attention layer times are memoised per op: those depend on the op alone (its
    name, rows, FLOPs, bytes: roofline and profile bundles alike), and batches of the same size repeat them
    thousands of times. Attention depends on the whole batch (every request's KV length) and is always asked."""

    def __init__(self, model: LatencyModel, limit: int = 1 << 16) -> None:
        self.model = model
        self.limit = limit
        self._ns: dict[LayerOp, int] = {}

    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int:
        if op.name == "attention":
            return self.model.layer_ns(op, iteration)
        ns = self._ns.get(op)
        if ns is None:
            ns = self.model.layer_ns(op, iteration)
            if len(self._ns) >= self.limit:
                self._ns.clear()
            self._ns[op] = ns
        return ns


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


class ServingLoop:
    """One run: the instances, the router, the clock. `run()` returns the ServingResult."""

    def __init__(self, config: ServingRunConfig, trace_writer=None) -> None:
        if not config.requests:
            raise PipesimError("dataset: no requests; give a workload with at least one request")
        self.config = config
        self.cluster = config.cluster
        self.placed = self.cluster.instances()
        self.instances = [InstanceRun(p, self.cluster, config) for p in self.placed]
        self.router = make_router(config.routing, config.seed)
        self.disaggregated = any(inst.pd_type is not None for inst in self.instances)
        self.link: Engine | None = None
        if self.disaggregated:
            npus = self.cluster.total_npus
            network = NetworkConfig(
                ["FullyConnected"], [npus], [float(self.cluster.link_bw)], [float(self.cluster.link_latency)]
            )
            self.link = Engine(AstraConfig(network), npus=npus)
        self.timeline: NodeTimeline | None = None
        if config.record_timeline:
            timeline = NodeTimeline(self.cluster.total_npus, config.timeline_window, config.timeline_max_events)
            for inst in self.instances:
                timeline.add_engine(
                    inst.instance_id, inst.astra, inst.plan.npus, inst.placed.npu_ids, inst.plan.comm_groups()
                )
            if self.link is not None:
                timeline.add_engine("link", self.link.config, npus, range(npus), link=True)
            self.timeline = timeline
        self.requests = sorted(config.requests, key=lambda r: (r.arrival_ns, r.request_id))
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise PipesimError("dataset: request ids repeat; every request needs its own id")
        self.by_id = {r.request_id: r for r in self.requests}
        self._check_requests()
        self.proxies: dict[int, Request] = {}  # P/D: the prefill instance's copy of a request (output_tokens 1)
        self.records: list[IterationRecord] = []
        self.transfers: list[KvTransfer] = []
        self.log = (
            IntervalLog(
                config.log_interval_ns,
                config.emit,
                num_instances=len(self.instances),
                idle_npu_mem_bytes=[max(inst.weights) for inst in self.instances],
            )
            if config.log_interval_ns
            else None
        )
        self.trace_writer = trace_writer
        self.next_iteration_id = 0
        self.next_transfer_id = 0
        self.finished = 0
        self.now = 0
        self._done: list[tuple[InstanceRun, int, int]] = []  # (instance, batch id, tick) completed this step
        self._transfers_done: list[tuple[Request, int, int, int, tuple]] = []

    def _check_requests(self) -> None:
        """Refuse, before simulating anything, a request that some instance it may be routed to could never run
        (longer than the model's context, more KV than the whole cache): one line naming its dataset line."""
        several = len(self.instances) > 1
        for inst in self.instances:
            check = inst.scheduler.check_request
            for request in self.requests:
                # A prefill instance only computes the prompt and its first token (the proxy of _admit).
                seen = request
                if inst.pd_type == "prefill":
                    seen = Request(request.request_id, request.arrival_ns, request.input_tokens, 1)
                    seen.source = request.source
                try:
                    check(seen)
                except PipesimError as exc:
                    if not several:
                        raise
                    raise PipesimError(f"{exc} (on instance {inst.instance_id})") from None

    # -- arrivals and launches -----------------------------------------------------------------------------

    def _admit(self, request: Request) -> None:
        target = self.router.route(request, self.placed) if not self.disaggregated else None
        if target is None:
            proxy = Request(
                request.request_id,
                request.arrival_ns,
                request.input_tokens,
                1,
                request.input_token_ids,
                request.output_token_ids,
                source=request.source,
            )
            target = self.router.route(proxy, self.placed)
            request.instance_id = target
            self.proxies[request.request_id] = proxy
            self.instances[target].scheduler.add_request(proxy)
            return
        self.instances[target].scheduler.add_request(request)

    def _launch(self, inst: InstanceRun, batch: ScheduledBatch) -> None:
        iteration_id = self.next_iteration_id
        self.next_iteration_id += 1
        workload = inst.build_workload(batch, iteration_id)
        inst.nodes += sum(len(graph.nodes) for graph in workload.graphs)
        kv_blocks = inst.scheduler.kv.pool.num_used_blocks
        idle = not inst.inflight  # every earlier batch of the instance has finished
        if self.timeline is not None:
            # The graphs are rebuilt (deterministically) if the timeline replays this launch: nothing held here.
            self.timeline.launched(
                inst.instance_id,
                self.now,
                f"batch {batch.batch_id}",
                lambda: inst.build_workload(batch, iteration_id).graphs,
                workload.node_count(),
                idle,
            )
        handle = inst.engine.add_workload(workload, self.now, label=(inst.instance_id, batch.batch_id))
        batch_id = batch.batch_id

        engine = inst.engine

        def finished(_: WorkloadHandle, tick: int) -> None:
            self._done.append((inst, batch_id, tick))
            engine.request_stop()

        def stage0_done(_: GraphHandle, tick: int) -> None:
            engine.request_stop()  # stage 0 is free: the instance may take its next batch now

        handle.on_done = finished
        inst.stage0 = [handle.graphs[rank] for rank in inst.stage0_ranks]
        if inst.plan.pp > 1:
            for graph in inst.stage0:
                graph.on_done = stage0_done
        inst.inflight[batch_id] = (batch, self.now, kv_blocks, handle)
        if self.timeline is not None:
            inst.launch_nodes[batch_id] = workload.node_count()
        inst.max_inflight = max(inst.max_inflight, len(inst.inflight))
        inst.iterations += 1
        if self.trace_writer is not None:
            self.trace_writer.add_iteration(inst, iteration_id, batch, self.now, workload, idle)

    # -- completions ---------------------------------------------------------------------------------------

    def _complete(self, inst: InstanceRun, batch_id: int, tick: int) -> None:
        batch, start, kv_blocks, _ = inst.inflight.pop(batch_id)
        if self.timeline is not None:
            self.timeline.finished(inst.instance_id, start, inst.launch_nodes.pop(batch_id))
        finished = inst.scheduler.finish_batch(batch, tick)
        record = IterationRecord.for_batch(
            inst.instance_id,
            batch,
            start,
            tick,
            kv_blocks,
            inst.npu_mem_bytes(kv_blocks),
            _RequestView(self, inst),
        )
        self.records.append(record)
        if self.log is not None:
            self.log.observe(record)
        if self.trace_writer is not None:
            # A request got a token from this batch when its last token is from now (one batch holds a request
            # at a time, so no other batch gave it one at this tick).
            tokens = []
            for entry in batch.entries:
                times = self._request(inst, entry.request_id).token_times_ns
                if entry.samples_token and times and times[-1] == tick:
                    tokens.append(entry.request_id)
            self.trace_writer.end_iteration(inst, batch_id, tick, tokens, kv_blocks, record.npu_mem_bytes)
        for request in finished:
            if inst.pd_type == "prefill":
                self._prefill_done(inst, request, tick)
            else:
                self.finished += 1
        if inst.waiting_kv:
            inst.waiting_kv = [r for r in inst.waiting_kv if not inst.scheduler.admit_transferred(r)]

    def _request(self, inst: InstanceRun, request_id: int) -> Request:
        if inst.pd_type == "prefill":
            return self.proxies[request_id]
        return self.by_id[request_id]

    def _prefill_done(self, inst: InstanceRun, proxy: Request, tick: int) -> None:
        """The first token exists at the prefill instance: count it there, then move the KV to a decode one."""
        request = self.by_id[proxy.request_id]
        del self.proxies[proxy.request_id]
        request.first_scheduled_ns = proxy.first_scheduled_ns
        request.num_cached_prompt_tokens = proxy.num_cached_prompt_tokens
        request.num_preemptions += proxy.num_preemptions
        request.num_generated = 1
        request.token_times_ns.append(tick)
        if request.output_tokens == 1:
            request.status = RequestStatus.FINISHED
            request.finish_ns = tick
            self.finished += 1
            return
        target_id = self.router.route_decode(request, self.placed)
        target = self.instances[target_id]
        needed = -(-(request.input_tokens + request.output_tokens - 1) // target.scheduler_config.block_size)
        if needed > target.scheduler.kv.pool.num_usable_blocks:
            raise PipesimError(
                f"{request.describe()}: needs {needed} KV blocks on decode instance {target_id} but it holds "
                f"{target.scheduler.kv.pool.num_usable_blocks}; give it more KV memory or shorten the request"
            )
        messages = []
        decode_npus = target.placed.npu_ids
        for index, src in enumerate(inst.placed.npu_ids):
            stage = inst.plan.coords(index).stage
            size = inst.kv_per_token[stage] * request.input_tokens
            messages.append((src, decode_npus[index % len(decode_npus)], size))
        transfer_id = self.next_transfer_id  # unique, so its messages' tags are too
        self.next_transfer_id += 1
        graphs = _transfer_graphs(self.cluster.total_npus, messages, transfer_id)
        if self.timeline is not None:
            nodes = sum(len(graph.nodes) for graph in graphs)
            prefix = f"kv {request.request_id}"
            self.timeline.launched("link", tick, prefix, lambda: graphs, nodes, idle=False)
        assert self.link is not None
        handle = self.link.add_workload(graphs, tick, label=f"KV transfer of {request.describe()}")
        key = tuple(messages)

        link = self.link

        def arrived(_: WorkloadHandle, end: int) -> None:
            self._transfers_done.append((request, inst.instance_id, target_id, tick, (end, key, transfer_id)))
            link.request_stop()

        handle.on_done = arrived

    def _transfer_arrived(self, request: Request, src: int, dst: int, start: int, info: tuple) -> None:
        end, messages, transfer_id = info
        self.transfers.append(KvTransfer(request.request_id, src, dst, start, end, messages, transfer_id))
        if self.trace_writer is not None:
            self.trace_writer.add_transfer(self.transfers[-1])
        target = self.instances[dst]
        if not target.scheduler.admit_transferred(request):
            target.waiting_kv.append(request)

    # -- the clock -----------------------------------------------------------------------------------------

    def run(self) -> ServingResult:
        requests = self.requests
        count = len(requests)
        position = 0
        engines = [inst.engine for inst in self.instances] + ([self.link] if self.link is not None else [])
        progress = self.config.progress
        with paused_gc():
            while True:
                now = self.now
                while position < count and requests[position].arrival_ns <= now:
                    self._admit(requests[position])
                    position += 1
                for inst in self.instances:
                    if inst.stage0_free:
                        batch = inst.scheduler.schedule(now)
                        if batch is not None:
                            self._launch(inst, batch)
                arrival = requests[position].arrival_ns if position < count else None
                # The engine with the earliest event runs until one of its batches (or stage 0, or a KV transfer)
                # finishes, or up to the next thing another engine or an arrival has: every engine's clock stays
                # at or behind the loop's, so graphs can be added to any of them at `now`.
                first = None
                first_tick = second_tick = None
                for engine in engines:
                    event = engine.next_event_ns()
                    if event is None:
                        continue
                    if first_tick is None or event < first_tick:
                        second_tick = first_tick
                        first, first_tick = engine, event
                    elif second_tick is None or event < second_tick:
                        second_tick = event
                if first is None:
                    if arrival is None:
                        break
                    self.now = arrival
                    continue
                if arrival is not None and arrival < first_tick:
                    self.now = arrival
                    continue
                bound = (
                    second_tick if arrival is None or (second_tick is not None and second_tick < arrival) else arrival
                )
                if bound is None:
                    first.run_until(_FAR_FUTURE, advance_clock=False)
                    self.now = max(self.now, first.now)
                elif first.run_until(bound):
                    self.now = first.now
                else:
                    self.now = bound
                if self._done:
                    done, self._done = self._done, []
                    for inst, batch_id, end in done:
                        self._complete(inst, batch_id, end)
                if self._transfers_done:
                    arrived, self._transfers_done = self._transfers_done, []
                    for request, src, dst, start, info in arrived:
                        self._transfer_arrived(request, src, dst, start, info)
                if progress is not None:
                    progress(self.finished, self.now)
        self._check_all_finished()
        if self.log is not None:
            self.log.close(self.now)
        return ServingResult(
            requests=list(self.config.requests),
            iterations=self.records,
            instances=[inst.summary() for inst in self.instances],
            sim_end_ns=self.now,
            interval_log=self.log,
            transfers=self.transfers,
            nodes_simulated=sum(inst.nodes for inst in self.instances),
            timeline=self.timeline,
        )

    def _check_all_finished(self) -> None:
        stuck = [r for r in self.requests if r.finish_ns is None]
        if not stuck:
            return
        first = stuck[0]
        where = self.instances[first.instance_id] if 0 <= first.instance_id < len(self.instances) else None
        blocks = where.num_gpu_blocks if where is not None else "?"
        raise PipesimError(
            f"{self.cluster.source}: {len(stuck)} request(s) can never be scheduled (first: {first.describe()}, "
            f"{first.input_tokens} + {first.output_tokens} tokens, {blocks} KV blocks on its instance); raise "
            "--max-num-batched-tokens, --max-num-seqs or the KV memory"
        )


class _RequestView(Mapping[int, Request]):
    """request id -> the Request the instance's scheduler saw (the proxy on a prefill instance)."""

    def __init__(self, loop: ServingLoop, inst: InstanceRun) -> None:
        self.loop, self.inst = loop, inst

    def __getitem__(self, request_id: int) -> Request:
        if self.inst.pd_type == "prefill":
            proxy = self.loop.proxies.get(request_id)
            return proxy if proxy is not None else self.loop.by_id[request_id]
        return self.loop.by_id[request_id]

    def __iter__(self):
        return iter(self.loop.by_id)

    def __len__(self) -> int:
        return len(self.loop.by_id)


def _transfer_graphs(npus: int, messages: list[tuple[int, int, int]], transfer_id: int) -> list[Graph]:
    """One graph per NPU that sends or receives: each prefill NPU sends its KV share, its decode peer receives."""
    nodes: dict[int, list[Node]] = {}
    for index, (src, dst, size) in enumerate(messages):
        tag = kv_transfer_tag(transfer_id, index)
        sends = nodes.setdefault(src, [])
        sends.append(
            Node(
                len(sends),
                f"COMM_SEND_NODE_kv_{index}",
                NodeType.COMM_SEND_NODE,
                [],
                comm_src=src,
                comm_dst=dst,
                comm_tag=tag,
                comm_size=size,
            )
        )
        recvs = nodes.setdefault(dst, [])
        recvs.append(
            Node(
                len(recvs),
                f"COMM_RECV_NODE_kv_{index}",
                NodeType.COMM_RECV_NODE,
                [],
                comm_src=src,
                comm_dst=dst,
                comm_tag=tag,
                comm_size=size,
            )
        )
    return [Graph(rank=rank, nodes=graph_nodes) for rank, graph_nodes in sorted(nodes.items())]


def run_serving(config: ServingRunConfig) -> ServingResult:
    """Run every instance of the cluster over the requests; with keep_traces_dir, also write the traces."""
    if config.keep_traces_dir is None:
        return ServingLoop(config).run()
    from astra_driver.serving.traces import TraceWriter

    with TraceWriter(config.keep_traces_dir, config) as writer:
        loop = ServingLoop(config, trace_writer=writer)
        writer.begin(loop)
        result = loop.run()
        writer.finish(loop, result)
    return result
