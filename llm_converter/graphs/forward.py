"""One serving iteration as per-NPU Chakra graphs: the layer list cut by the parallel plan.

Per NPU of stage s (all in one dependency chain, lowest id first):
  recv of the activation from the same tp_rank of stage s-1 (s > 0),
  one COMP_NODE per layer of the stage, each followed by a TP collective (pg_name of the stage's TP group)
  when the layer says so and tp > 1: an all-reduce (o_proj, down_proj, the vocab-parallel embedding) or an
  all-gather (lm_head's logits shards),
  send of the activation to the same tp_rank of stage s+1 (s < pp-1).
With dp > 1 every DP replica runs the same iteration on its own NPUs (no traffic between replicas).
Pure and in memory: a serving loop builds one of these per scheduled iteration.

Two granularities, timed identically by a duration-replaying backend:
- `build_serving_workload(layers, ...)`: one compute node per layer row (what `pipesim trace` writes);
- `build_fused_workload(ops, ...)`: the serving loop's form, built straight from the iteration's timed ops: the
  compute rows between two collectives become one node. Every duration is the running sum of the stage's layer
  ns rounded to whole microseconds minus the previous one (`micros_durations`), so the fused chain ends on the
  same microsecond as the per-layer chain, node for node at every collective.
"""

from __future__ import annotations

from typing import NamedTuple

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Graph, Node, NodeType, Workload
from llm_converter.graphs.tags import TAG_ITERATION_PERIOD, TAG_STAGE_STRIDE, activation_tag
from llm_converter.layers import LayerList, LayerRow, TimedOps, tp_comm
from llm_converter.perf import paused_gc
from llm_converter.plan import ParallelPlan

__all__ = [
    "TAG_ITERATION_PERIOD",
    "TAG_STAGE_STRIDE",
    "Step",
    "activation_tag",
    "build_fused_workload",
    "build_serving_workload",
    "fused_steps",
]

_COLLECTIVE_OF = {"all_reduce": int(CollectiveType.ALL_REDUCE), "all_gather": int(CollectiveType.ALL_GATHER)}
_COLLECTIVE_SUFFIX = {"all_reduce": "_ar", "all_gather": "_ag"}
_COMP = NodeType.COMP_NODE
_COLL = NodeType.COMM_COLL_NODE

# Node names are the same for every iteration: cache them rather than format thousands per iteration.
_node_names: dict[tuple[str, str, str, int], str] = {}
_fused_names: dict[tuple[str, int, str, int], str] = {}


def _node_name(kind: str, name: str, block: int, suffix: str = "") -> str:
    """`<kind>_<layer><suffix>_b<block>` (no block part outside the blocks), cached: names repeat every iteration."""
    key = (kind, name, suffix, block)
    text = _node_names.get(key)
    if text is None:
        text = f"{kind}_{name}{suffix}" + (f"_b{block}" if block >= 0 else "")
        _node_names[key] = text
    return text


def comp_name(row: LayerRow) -> str:
    return _node_name("COMP_NODE", row.name, row.block)


def all_reduce_name(row: LayerRow) -> str:
    return _node_name("COMM_COLL_NODE", row.name, row.block, "_ar")


def collective_name(comm: str, name: str, block: int) -> str:
    return _node_name("COMM_COLL_NODE", name, block, _COLLECTIVE_SUFFIX[comm])


def _fused_name(first: str, first_block: int, last: str, last_block: int) -> str:
    key = (first, first_block, last, last_block)
    text = _fused_names.get(key)
    if text is None:
        start = first + (f"_b{first_block}" if first_block >= 0 else "")
        end = last + (f"_b{last_block}" if last_block >= 0 else "")
        text = f"COMP_NODE_{start}" if key[:2] == key[2:] else f"COMP_NODE_{start}_to_{end}"
        _fused_names[key] = text
    return text


def micros_durations(rows: list[LayerRow]) -> list[int]:
    """Whole-microsecond durations whose running sum is the running sum of ns rounded to us (half up).

    Each duration is round(end) - round(start), so per-layer rounding error never accumulates along an NPU.
    """
    durations = []
    elapsed_ns = 0
    elapsed_us = 0
    for row in rows:
        elapsed_ns += row.ns
        end_us = (elapsed_ns + 500) // 1000
        durations.append(end_us - elapsed_us)
        elapsed_us = end_us
    return durations


class Step(NamedTuple):
    """One compute node of a stage and the TP collective after it (comm "none": no collective). A NamedTuple:
    the serving loop builds ~130 per iteration under TP, and a frozen dataclass costs several times more."""

    name: str
    duration_us: int
    flops: int
    bytes: int
    comm: str = "none"
    comm_bytes: int = 0
    comm_name: str = ""


def build_serving_workload(layers: LayerList, plan: ParallelPlan, iteration_id: int = 0) -> Workload:
    """Per-NPU graphs of one iteration; graph k is NPU k, comm_groups are the plan's TP groups."""
    if layers.num_stages != plan.pp:
        raise PipesimError(
            f"serving graph: the layer list has {layers.num_stages} stages but the plan has pp = {plan.pp}; "
            "build the layer list with this plan"
        )
    with paused_gc():
        collect = plan.tp > 1
        stages = []
        for stage in range(plan.pp):
            rows = layers.stage_rows(stage)
            steps = []
            for row, duration in zip(rows, micros_durations(rows), strict=True):
                comm = row.comm if collect else "none"
                # At least 1 op and 1 byte: ASTRA-Sim's roofline mode divides num_ops by a performance that is 0
                # when num_ops is 0 (0/0), and skips nodes whose tensor_size is 0. With num_ops 1 the roofline
                # time is tensor_size / bandwidth: the memory time of a gather such as the embedding.
                steps.append(
                    Step(
                        comp_name(row),
                        duration,
                        max(row.flops, 1),
                        max(row.bytes, 1),
                        comm,
                        row.comm_bytes if comm != "none" else 0,
                        collective_name(comm, row.name, row.block) if comm != "none" else "",
                    )
                )
            stages.append(steps)
        boundary_bytes = [layers.activation_bytes(stage) for stage in range(plan.pp - 1)]
        return _emit(stages, plan, iteration_id, boundary_bytes)


def _chunks(timed: list, comms: list[tuple[str, int]]) -> list[tuple[int, int, int, str, int, str, str]]:
    """Consecutive ops of one scope cut after each collective: (ns, flops, bytes, comm, comm bytes, first op name,
    last op name); the last chunk has comm "none" when the scope does not end in a collective."""
    chunks = []
    ns = flops = size = 0
    first = ""
    for (op, op_ns), (comm, comm_bytes) in zip(timed, comms, strict=True):
        if not first:
            first = op.name
        ns += op_ns
        flops += op.flops
        size += op.bytes
        if comm != "none":
            chunks.append((ns, flops, size, comm, comm_bytes, first, op.name))
            ns = flops = size = 0
            first = ""
    if first:
        chunks.append((ns, flops, size, "none", 0, first, timed[-1][0].name))
    return chunks


def fused_steps(ops: TimedOps, plan: ParallelPlan, hidden: int, element_bytes: int) -> list[list[Step]]:
    """Per stage, the compute between collectives as one Step each (see the module docstring)."""
    tp = plan.tp
    pre = _chunks(ops.pre, [tp_comm(op, tp, hidden, element_bytes) for op, _ in ops.pre])
    block = _chunks(ops.block, [tp_comm(op, tp, hidden, element_bytes) for op, _ in ops.block])
    post = _chunks(ops.post, [tp_comm(op, tp, hidden, element_bytes) for op, _ in ops.post])
    open_block = len(block) == 1 and block[0][3] == "none"  # no collective inside a block (tp 1)
    scopes = (pre, block, post)
    block_sig = tuple((c[3], c[5], c[6]) for c in block)
    stages: list[list[Step]] = []
    last_stage = plan.pp - 1
    for stage in range(plan.pp):
        blocks = plan.blocks_of(stage)
        # Which chunks make each step, and the step's names, depend on the op names and the plan only: cached.
        key = (
            tuple((c[3], c[5], c[6]) for c in pre) if stage == 0 else None,
            block_sig,
            tuple((c[3], c[5], c[6]) for c in post) if stage == last_stage else None,
            blocks.start,
            blocks.stop,
            open_block,
        )
        layout = _layouts.get(key)
        if layout is None:
            layout = _layout(*key)
            if len(_layouts) >= 4096:
                _layouts.clear()
            _layouts[key] = layout
        steps: list[Step] = []
        elapsed_ns = elapsed_us = 0
        for name, comm, comm_name, refs in layout:
            flops = size = 0
            for scope, index, times in refs:
                chunk = scopes[scope][index]
                elapsed_ns += chunk[0] * times
                flops += chunk[1] * times
                size += chunk[2] * times
            end_us = (elapsed_ns + 500) // 1000
            if comm == "none":
                steps.append(Step(name, end_us - elapsed_us, max(flops, 1), max(size, 1)))
            else:
                steps.append(Step(name, end_us - elapsed_us, max(flops, 1), max(size, 1), comm, chunk[4], comm_name))
            elapsed_us = end_us
        stages.append(steps)
    return stages


# (pre, block, post chunk signatures, first block, end block, open block) -> steps: (name, comm, collective name,
# ((scope, chunk index, repeat), ...)).
_layouts: dict[tuple, list[tuple[str, str, str, tuple[tuple[int, int, int], ...]]]] = {}


def _layout(pre, block, post, start: int, stop: int, open_block: bool) -> list:
    """The steps of one stage: chunks (pre on stage 0, then every block's, then post on the last stage) are cut
    after each collective; with no collective inside a block (tp 1) the stage's blocks are one chunk repeated."""
    sequence = []  # (scope, chunk index, repeat, (comm, first op, last op), first block, last block)
    if pre is not None:
        sequence.extend((0, j, 1, sig, -1, -1) for j, sig in enumerate(pre))
    if open_block and stop - start > 1:
        sequence.append((1, 0, stop - start, block[0], start, stop - 1))
    else:
        for index in range(start, stop):
            sequence.extend((1, j, 1, sig, index, index) for j, sig in enumerate(block))
    if post is not None:
        sequence.extend((2, j, 1, sig, -1, -1) for j, sig in enumerate(post))
    layout = []
    refs: list[tuple[int, int, int]] = []
    first = last = None
    for scope, j, times, (comm, first_name, last_name), first_block, last_block in sequence:
        if first is None:
            first = (first_name, first_block)
        refs.append((scope, j, times))
        last = (last_name, last_block)
        if comm == "none":
            continue
        name = _fused_name(first[0], first[1], last[0], last[1])
        layout.append((name, comm, collective_name(comm, last_name, last_block), tuple(refs)))
        refs = []
        first = None
    if first is not None:
        layout.append((_fused_name(first[0], first[1], last[0], last[1]), "none", "", tuple(refs)))
    return layout


def build_fused_workload(
    steps: list[list[Step]], plan: ParallelPlan, iteration_id: int, boundary_bytes: list[int]
) -> Workload:
    """Per-NPU graphs from per-stage steps (fused_steps); boundary_bytes[s]: the activation sent s -> s+1."""
    with paused_gc():
        return _emit(steps, plan, iteration_id, boundary_bytes)


def _emit(stages: list[list[Step]], plan: ParallelPlan, iteration_id: int, boundary_bytes: list[int]) -> Workload:
    tp = plan.tp
    pp = plan.pp
    boundary_tags = [activation_tag(iteration_id, stage) for stage in range(pp - 1)]
    # The compute and collective nodes of a stage are the same on each of its TP (and DP) ranks: built once per
    # (stage, group) and shared by those ranks' graphs (nodes are never modified once built).
    middles: dict[tuple[int, str | None], list[Node]] = {}
    graphs: list[Graph] = []
    for rank in range(plan.npus):
        stage, tp_rank, dp_rank = plan.coords(rank)
        nodes: list[Node] = []
        first_id = 0
        if stage > 0:
            nodes.append(
                Node(
                    0,
                    f"COMM_RECV_NODE_act_s{stage - 1}_to_s{stage}",
                    NodeType.COMM_RECV_NODE,
                    [],
                    comm_src=plan.rank(stage - 1, tp_rank, dp_rank),
                    comm_dst=rank,
                    comm_tag=boundary_tags[stage - 1],
                    comm_size=boundary_bytes[stage - 1],
                )
            )
            first_id = 1
        pg_name = plan.pg_name(stage, dp_rank) if tp > 1 else None
        middle = middles.get((stage, pg_name))
        if middle is None:
            middle = _stage_nodes(stages[stage], first_id, pg_name)
            middles[(stage, pg_name)] = middle
        nodes.extend(middle)
        if stage < pp - 1:
            last = nodes[-1].id if nodes else -1
            nodes.append(
                Node(
                    last + 1,
                    f"COMM_SEND_NODE_act_s{stage}_to_s{stage + 1}",
                    NodeType.COMM_SEND_NODE,
                    [last] if last >= 0 else [],
                    comm_src=rank,
                    comm_dst=plan.rank(stage + 1, tp_rank, dp_rank),
                    comm_tag=boundary_tags[stage],
                    comm_size=boundary_bytes[stage],
                )
            )
        graphs.append(Graph(rank=rank, nodes=nodes))
    return Workload(graphs=graphs, comm_groups=plan.comm_groups())


def _stage_nodes(steps: list[Step], first_id: int, pg_name: str | None) -> list[Node]:
    """A stage's chain of compute nodes, each followed by its TP collective, ids from first_id (after the recv)."""
    nodes: list[Node] = []
    append = nodes.append
    next_id = first_id
    deps: list[int] = [first_id - 1] if first_id else []
    for step in steps:
        # Positional (id, name, type, data_deps, ctrl_deps, duration_micros, start_time_micros, is_cpu_op,
        # num_ops, tensor_size): a third faster than keywords, and compute nodes are most of the graph.
        append(Node(next_id, step.name, _COMP, deps, [], step.duration_us, 0, False, step.flops, step.bytes))
        deps = [next_id]
        next_id += 1
        if step.comm != "none":
            # Collective nodes repeat across iterations (same position, group and bytes): shared, since nodes are
            # never modified once built.
            key = (next_id, step.comm_name, step.comm, step.comm_bytes, pg_name)
            node = _collective_nodes.get(key)
            if node is None:
                node = Node(
                    next_id,
                    step.comm_name,
                    _COLL,
                    deps,
                    comm_type=_COLLECTIVE_OF[step.comm],
                    comm_size=step.comm_bytes,
                    pg_name=pg_name,
                )
                if len(_collective_nodes) >= 1 << 16:
                    _collective_nodes.clear()
                _collective_nodes[key] = node
            append(node)
            deps = [next_id]
            next_id += 1
    return nodes


_collective_nodes: dict[tuple[int, str, str, int, str | None], Node] = {}
