"""One training step as per-NPU Chakra graphs: a pipeline schedule's actions, each stage's work, the network.

NPU id: Megatron-LM's default rank order tp-dp-pp (parallel_state's order "tp-cp-ep-dp-pp"):
tp_rank + tp * (dp_rank + dp * pp_rank), so a stage's TP ranks are consecutive and its DP replicas next (the
gradient all-reduce stays inside a node when tp x dp fits one); `tp_pp_dp_mapping` gives Megatron's
--use-tp-pp-dp-mapping order tp-pp-dp, dp_rank * tp * pp + pp_rank * tp + tp_rank (plan.py's serving layout: a
DP replica is one contiguous range). Pipeline rank r holds the virtual stages s with stage_to_rank[s] == r
(one for gpipe/1f1b, v for interleaved, two in a V for zb-v/dualpipev); virtual stage s runs the s-th
contiguous range of decoder blocks, the first also the embedding, the last the final norm, lm_head and loss.

Per NPU, the rank's actions in schedule order, each chained to the one before (so the engine runs them in
that order, whatever becomes ready first):
  F(s, m): recv of the activation from stage s-1's NPU (same tp_rank, dp_rank; none when s-1 is on this rank),
           the stage's forward steps (compute nodes with the TP collectives between them), send to stage s+1;
  B/I(s, m): recv of the gradient from stage s+1, the backward steps (with recomputation), send to stage s-1;
  W(s, m): the weight-gradient steps.
Sends are off the chain (the next action starts while the message travels); recvs have no parents (posted up
front, completed when their message arrives). Tags come from graphs/tags.py's training_tag.

DP gradient reduction (dp > 1): the stage's parameters in buckets (Megatron-LM's DDP: filled in backward
order, at least max(40M, 1M x dp) parameters each); with overlap_grad_reduce a bucket's all-reduce (or
reduce-scatter with the distributed optimizer) starts on the stage's last backward action, right after the
step that completes the bucket's first layer's weight gradient; without it, after the rank's last action.
Then the optimizer step (a compute node) and, with the distributed optimizer, an all-gather of each bucket's
updated bf16 parameters. Communicator groups: TP groups as plan.py names them ("1 + dp_rank * pp + pp_rank"),
DP groups after them ("1 + dp * pp + pp_rank * tp + tp_rank").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Graph, Node, NodeType, Workload
from llm_converter.graphs.tags import training_tag
from llm_converter.perf import paused_gc
from llm_converter.schedules.actions import Action, Computation, PipelineSchedule
from llm_converter.training_ops import Compute, StageSteps

# Megatron-LM's default DDP bucket: max(40M, 1M x dp) parameters (megatron/training/training.py).
MIN_BUCKET_PARAMS = 40_000_000
BUCKET_PARAMS_PER_DP_RANK = 1_000_000

_COMP = NodeType.COMP_NODE
_COLL = NodeType.COMM_COLL_NODE
_NO_DEPS: list[int] = []  # shared, never mutated: most nodes have no control deps


@dataclass(frozen=True)
class TrainingPlan:
    """TP x PP x DP over NPUs, with the block range of every virtual stage and the rank holding it."""

    tp: int
    pp: int
    dp: int
    stage_blocks: tuple[tuple[int, int], ...]  # per virtual stage: [start, end) decoder blocks
    stage_to_rank: tuple[int, ...]
    tp_pp_dp_mapping: bool = False  # Megatron's --use-tp-pp-dp-mapping; default order tp-dp-pp

    @property
    def num_stages(self) -> int:
        return len(self.stage_blocks)

    @property
    def npus(self) -> int:
        return self.tp * self.pp * self.dp

    def rank(self, pp_rank: int, tp_rank: int = 0, dp_rank: int = 0) -> int:
        if self.tp_pp_dp_mapping:
            return dp_rank * self.tp * self.pp + pp_rank * self.tp + tp_rank
        return tp_rank + self.tp * (dp_rank + self.dp * pp_rank)

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(pp_rank, tp_rank, dp_rank) of NPU `rank`."""
        if self.tp_pp_dp_mapping:
            dp_rank, inside = divmod(rank, self.tp * self.pp)
            pp_rank, tp_rank = divmod(inside, self.tp)
            return pp_rank, tp_rank, dp_rank
        outside, tp_rank = divmod(rank, self.tp)
        pp_rank, dp_rank = divmod(outside, self.dp)
        return pp_rank, tp_rank, dp_rank

    def stages_of(self, pp_rank: int) -> tuple[int, ...]:
        return tuple(s for s, r in enumerate(self.stage_to_rank) if r == pp_rank)

    def tp_pg_name(self, pp_rank: int, dp_rank: int) -> str:
        return str(1 + dp_rank * self.pp + pp_rank)

    def dp_pg_name(self, pp_rank: int, tp_rank: int) -> str:
        return str(1 + self.dp * self.pp + pp_rank * self.tp + tp_rank)

    def tp_group(self, pp_rank: int, dp_rank: int) -> list[int]:
        first = self.rank(pp_rank, 0, dp_rank)
        return list(range(first, first + self.tp))

    def dp_group(self, pp_rank: int, tp_rank: int) -> list[int]:
        return [self.rank(pp_rank, tp_rank, d) for d in range(self.dp)]

    def comm_groups(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        if self.tp > 1:
            for d in range(self.dp):
                for r in range(self.pp):
                    groups[self.tp_pg_name(r, d)] = self.tp_group(r, d)
        if self.dp > 1:
            for r in range(self.pp):
                for t in range(self.tp):
                    groups[self.dp_pg_name(r, t)] = self.dp_group(r, t)
        return groups

    def representative_ranks(self) -> list[int]:
        """One NPU per pipeline rank (tp_rank 0 of DP replica 0): the others do identical work."""
        return [self.rank(r) for r in range(self.pp)]


def split_training_stages(num_layers: int, pp: int, chunks: int) -> tuple[tuple[int, int], ...]:
    """Blocks of each of the pp * chunks virtual stages.

    chunks == 1: as even as possible, the larger stages first (ParallelPlan.even). chunks > 1 (Megatron's
    virtual pipeline): every rank's layers split into `chunks` equal model chunks, so the stages must be equal,
    except that the first and last may hold one layer fewer (Llama 3's 126 layers on 16 x 2 stages), the way
    Megatron's --decoder-first/last-pipeline-num-layers trims the stages carrying the embedding and the head."""
    stages = pp * chunks
    if stages > num_layers:
        what = f"--pp {pp}" + (f" x --chunks {chunks}" if chunks > 1 else "")
        raise PipesimError(
            f"{what}: {stages} pipeline stages but the model has {num_layers} decoder layers; every stage needs a "
            f"layer, so use at most {num_layers} stages"
        )
    if chunks == 1:
        base, extra = divmod(num_layers, stages)
        sizes = [base + (1 if s < extra else 0) for s in range(stages)]
    else:
        size = -(-num_layers // stages)
        short = size * stages - num_layers
        if short > 2 or (short and stages < 2):
            per_rank = num_layers / pp
            raise PipesimError(
                f"--chunks {chunks}: {num_layers} layers on {pp} ranks ({per_rank:g} per rank) do not split into "
                f"{chunks} equal model chunks per rank (the first and last stage may hold one fewer); choose --chunks "
                f"dividing the layers per rank, or another --pp"
            )
        sizes = [size] * stages
        if short >= 1:
            sizes[0] -= 1
        if short == 2:
            sizes[-1] -= 1
    bounds = []
    start = 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    return tuple(bounds)


@dataclass(frozen=True, slots=True)
class GradBucket:
    """Parameters (per NPU) of one DP gradient bucket; `first` is the lowest layer position it holds (the
    stage's forward order): it is complete once the backward has passed that layer."""

    first: int
    params: int


def grad_buckets(layer_params: list[int], dp: int) -> tuple[GradBucket, ...]:
    """Buckets of a stage, filled from its last layer backwards (the order the backward produces gradients)."""
    limit = max(MIN_BUCKET_PARAMS, BUCKET_PARAMS_PER_DP_RANK * dp)
    buckets: list[GradBucket] = []
    filled = 0
    for position in range(len(layer_params) - 1, -1, -1):
        filled += layer_params[position]
        if filled >= limit:
            buckets.append(GradBucket(position, filled))
            filled = 0
    if filled:
        buckets.append(GradBucket(0, filled))
    elif buckets and buckets[-1].first != 0:
        last = buckets.pop()
        buckets.append(GradBucket(0, last.params))
    return tuple(buckets)


@dataclass(frozen=True)
class TrainingGraphSpec:
    """Everything the graphs of one step are made of."""

    schedule: PipelineSchedule
    plan: TrainingPlan
    stage_steps: tuple[StageSteps, ...]  # per virtual stage, one TP rank, one microbatch
    boundary_bytes: tuple[int, ...]  # per boundary s -> s+1: activation (and its gradient) per NPU
    buckets: tuple[tuple[GradBucket, ...], ...] = ()  # per virtual stage (dp > 1)
    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = False  # Megatron-LM's default
    optimizer_ns: tuple[int, ...] = ()  # per pipeline rank: the optimizer step of one NPU; () or 0: no node
    # Each TP rank sends 1/tp of a boundary tensor and the receiving stage all-gathers it over its TP group
    # (Megatron's scatter/gather optimisation, used without sequence parallelism).
    gather_boundary: bool = False

    def __post_init__(self) -> None:
        plan, schedule = self.plan, self.schedule
        if schedule.pp != plan.pp or schedule.num_stages != plan.num_stages:
            raise PipesimError(
                f"training graph: schedule '{schedule.name}' has {schedule.pp} ranks and {schedule.num_stages} "
                f"stages but the plan has pp = {plan.pp} and {plan.num_stages} stages; build both from the same flags"
            )
        if tuple(schedule.stage_to_rank) != plan.stage_to_rank:
            raise PipesimError(
                "training graph: the plan's stage_to_rank differs from the schedule's; use the schedule's"
            )
        if len(self.stage_steps) != plan.num_stages or len(self.boundary_bytes) != plan.num_stages - 1:
            raise PipesimError("training graph: give one StageSteps per stage and one size per stage boundary")
        if plan.dp > 1 and len(self.buckets) != plan.num_stages:
            raise PipesimError("training graph: dp > 1 needs the gradient buckets of every stage (grad_buckets)")


def _micros(steps: tuple) -> list[int]:
    """Whole-microsecond durations of an action's compute steps whose running sum is the running ns sum rounded
    (half up): rounding never accumulates along an action."""
    out = []
    elapsed_ns = elapsed_us = 0
    for step in steps:
        if isinstance(step, Compute):
            elapsed_ns += step.ns
            end_us = (elapsed_ns + 500) // 1000
            out.append(end_us - elapsed_us)
            elapsed_us = end_us
        else:
            out.append(0)
    return out


def _template(steps: tuple, with_tp: bool) -> list[tuple[bool, str, int, int, int, int, int]]:
    """(compute?, name, duration_micros, num_ops or comm_type, tensor_size or comm_size, grads_from, 0) per node of
    an action; TP collectives are left out on a one-rank TP group (nothing to do)."""
    out = []
    for step, duration in zip(steps, _micros(steps), strict=True):
        if isinstance(step, Compute):
            out.append((True, step.name, duration, step.flops, step.bytes, step.grads_from, 0))
        elif with_tp:
            out.append((False, step.name, 0, int(step.kind), step.size, -1, 0))
    return out


def _dp_kind(distributed_optimizer: bool) -> CollectiveType:
    return CollectiveType.REDUCE_SCATTER if distributed_optimizer else CollectiveType.ALL_REDUCE


def _last_backward(schedule: PipelineSchedule) -> dict[int, Action]:
    """Per stage, its last action producing weight gradients (B, or W when split) in its rank's order."""
    last: dict[int, Action] = {}
    for actions in schedule.actions:
        for action in actions:
            if action.computation in (Computation.B, Computation.W):
                last[action.stage] = action
    return last


def build_rank_graph(spec: TrainingGraphSpec, rank: int) -> Graph:
    """The graph of NPU `rank` for one step."""
    plan, schedule = spec.plan, spec.schedule
    pp_rank, tp_rank, dp_rank = plan.coords(rank)
    tp_pg = plan.tp_pg_name(pp_rank, dp_rank) if plan.tp > 1 else None
    dp_pg = plan.dp_pg_name(pp_rank, tp_rank) if plan.dp > 1 else None
    dp_kind = _dp_kind(spec.distributed_optimizer)
    last_stage = plan.num_stages - 1
    last_backward = _last_backward(schedule) if dp_pg is not None and spec.overlap_grad_reduce else {}
    # Per (stage, letter): the action's nodes as tuples, built once (the hot loop below only fills in ids).
    templates: dict[tuple[int, str], list[tuple[bool, str, int, int, int, int, int]]] = {}

    nodes: list[Node] = []
    append = nodes.append
    done: dict[tuple[int, int, bool], int] = {}  # (stage, microbatch, gradient?) -> last node id
    dp_nodes: list[int] = []
    pending_buckets: dict[int, list[GradBucket]] = {}
    tail = -1

    def add_dp_collective(stage: int, bucket: GradBucket, deps: list[int]) -> None:
        dp_nodes.append(len(nodes))
        append(
            Node(
                len(nodes),
                f"dp_{dp_kind.name.lower()}_s{stage}_from{bucket.first}",
                _COLL,
                deps,
                _NO_DEPS,
                comm_type=int(dp_kind),
                comm_size=bucket.params * 4,
                pg_name=dp_pg,
            )
        )

    for action in schedule.actions[pp_rank]:
        stage, letter, mb = action.stage, action.computation.value, action.microbatch
        steps = spec.stage_steps[stage].for_letter(letter)
        key = (stage, letter)
        template = templates.get(key)
        if template is None:
            template = templates[key] = _template(steps, tp_pg is not None)
        gradient = action.computation in (Computation.B, Computation.I)
        # The message this action waits for: activation from s-1 (F) or gradient from s+1 (B/I).
        peer_stage = stage - 1 if letter == "F" else stage + 1 if gradient else -1
        deps = [tail] if tail >= 0 else []
        if 0 <= peer_stage <= last_stage:
            boundary = min(stage, peer_stage)
            peer_pp = plan.stage_to_rank[peer_stage]
            if peer_pp == pp_rank:
                produced = done.get((peer_stage, mb, gradient))
                if produced is None:
                    raise PipesimError(
                        f"training graph: rank {pp_rank} runs {action} before the "
                        f"{'gradient' if gradient else 'activation'} it needs from stage {peer_stage} on the same "
                        "rank; fix the schedule's order"
                    )
                deps.append(produced)
            else:
                src = plan.rank(peer_pp, tp_rank, dp_rank)
                direction = "grad" if gradient else "act"
                append(
                    Node(
                        len(nodes),
                        f"recv_{direction}_mb{mb}_s{peer_stage}_to_s{stage}",
                        NodeType.COMM_RECV_NODE,
                        [],
                        _NO_DEPS,
                        comm_src=src,
                        comm_dst=rank,
                        comm_tag=training_tag(mb, boundary, gradient),
                        comm_size=spec.boundary_bytes[boundary],
                    )
                )
                received = len(nodes) - 1
                if spec.gather_boundary and tp_pg is not None:
                    # After the previous action, so every TP rank issues its group's collectives in one order.
                    append(
                        Node(
                            len(nodes),
                            f"{action}.{direction}_ag",
                            _COLL,
                            [*deps, received],
                            _NO_DEPS,
                            comm_type=int(CollectiveType.ALL_GATHER),
                            comm_size=spec.boundary_bytes[boundary],
                            pg_name=tp_pg,
                        )
                    )
                    deps = [len(nodes) - 1]
                else:
                    deps.append(received)
        buckets = None
        if last_backward.get(stage) == action:
            buckets = pending_buckets.setdefault(stage, list(spec.buckets[stage]))
        prefix = f"{action}."
        added = False
        ready_buckets: list[tuple[GradBucket, int]] = []  # (bucket, step node it waits for)
        for compute, name, duration, flops_or_kind, size, grads_from, _ in template:
            node_id = len(nodes)
            if compute:
                # Positional (id, name, type, data_deps, ctrl_deps, duration_micros, start_time_micros, is_cpu_op,
                # num_ops, tensor_size, ..., extra_attrs): most nodes of a step are these.
                append(
                    Node(
                        node_id,
                        prefix + name,
                        _COMP,
                        deps,
                        _NO_DEPS,
                        duration,
                        0,
                        False,
                        flops_or_kind,
                        size,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        _NO_DEPS,
                    )  # fmt: skip
                )
            else:
                append(
                    Node(
                        node_id,
                        prefix + name,
                        _COLL,
                        deps,
                        _NO_DEPS,
                        0,
                        0,
                        False,
                        None,
                        None,
                        flops_or_kind,
                        None,
                        None,
                        None,
                        size,
                        None,
                        tp_pg,
                        None,
                        _NO_DEPS,
                    )  # fmt: skip
                )
            added = True
            deps = [node_id]
            if buckets and grads_from >= 0:
                while buckets and buckets[0].first >= grads_from:
                    ready_buckets.append((buckets.pop(0), node_id))
        if not added:
            raise PipesimError(f"training graph: stage {stage} has no work for {action}; every action needs a step")
        tail = deps[0]
        if letter != "W":
            done[(stage, mb, gradient)] = tail
        if letter == "F" and stage < last_stage or gradient and stage > 0:
            peer_stage = stage + 1 if letter == "F" else stage - 1
            peer_pp = plan.stage_to_rank[peer_stage]
            if peer_pp != pp_rank:
                boundary = min(stage, peer_stage)
                direction = "grad" if gradient else "act"
                append(
                    Node(
                        len(nodes),
                        f"send_{direction}_mb{mb}_s{stage}_to_s{peer_stage}",
                        NodeType.COMM_SEND_NODE,
                        [tail],
                        _NO_DEPS,
                        comm_src=rank,
                        comm_dst=plan.rank(peer_pp, tp_rank, dp_rank),
                        comm_tag=training_tag(mb, boundary, gradient),
                        comm_size=spec.boundary_bytes[boundary],
                    )
                )
        # After the send in id order: the engine issues ready comm nodes lowest id first, and the pipeline's
        # gradient must not queue behind a bucket that became ready at the same tick.
        for bucket, step_id in ready_buckets:
            add_dp_collective(stage, bucket, [step_id])

    if dp_pg is not None:
        # Buckets not reduced during the backward (no overlap, or left over): after the rank's last action.
        for stage in plan.stages_of(pp_rank):
            for bucket in pending_buckets.get(stage, list(spec.buckets[stage])):
                add_dp_collective(stage, bucket, [tail])
    optimizer_ns = spec.optimizer_ns[pp_rank] if spec.optimizer_ns else 0
    if optimizer_ns > 0:
        node_id = len(nodes)
        duration = (optimizer_ns + 500) // 1000
        append(Node(node_id, "optimizer_step", _COMP, [tail, *dp_nodes], _NO_DEPS, duration, 0, False, 1, 1))
        if dp_pg is not None and spec.distributed_optimizer:
            for stage in plan.stages_of(pp_rank):
                for bucket in spec.buckets[stage]:
                    append(
                        Node(
                            len(nodes),
                            f"dp_all_gather_params_s{stage}_from{bucket.first}",
                            _COLL,
                            [node_id],
                            _NO_DEPS,
                            comm_type=int(CollectiveType.ALL_GATHER),
                            comm_size=max(1, -(-bucket.params * 2 // plan.dp)),
                            pg_name=dp_pg,
                        )
                    )
    return Graph(rank=rank, nodes=nodes)


def iter_rank_graphs(spec: TrainingGraphSpec, ranks: list[int] | None = None) -> Iterator[Graph]:
    """Graphs one at a time (a writer can stream 16,384 of them without holding them all)."""
    for rank in range(spec.plan.npus) if ranks is None else ranks:
        with paused_gc():
            graph = build_rank_graph(spec, rank)
        yield graph


def build_training_workload(spec: TrainingGraphSpec) -> Workload:
    """Every NPU's graph of one step, with the TP and DP communicator groups."""
    with paused_gc():
        graphs = [build_rank_graph(spec, rank) for rank in range(spec.plan.npus)]
    return Workload(graphs=graphs, comm_groups=spec.plan.comm_groups())


__all__ = [
    "GradBucket",
    "TrainingGraphSpec",
    "TrainingPlan",
    "build_rank_graph",
    "build_training_workload",
    "grad_buckets",
    "iter_rank_graphs",
    "split_training_stages",
]
