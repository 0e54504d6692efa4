"""One serving iteration as per-NPU Chakra graphs: the layer list cut by the parallel plan.

Per NPU of stage s (all in one dependency chain, lowest id first):
  recv of the activation from the same tp_rank of stage s-1 (s > 0),
  one COMP_NODE per layer of the stage, each followed by a TP all-reduce (pg_name of the stage's TP group)
  when the layer says so and tp > 1,
  send of the activation to the same tp_rank of stage s+1 (s < pp-1).
With dp > 1 every DP replica runs the same iteration on its own NPUs (no traffic between replicas).
Pure and in memory: a serving loop builds one of these per scheduled iteration.
"""

from __future__ import annotations

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Graph, Node, NodeType, Workload
from llm_converter.graphs.tags import TAG_ITERATION_PERIOD, TAG_STAGE_STRIDE, activation_tag
from llm_converter.layers import LayerList, LayerRow
from llm_converter.perf import paused_gc
from llm_converter.plan import ParallelPlan

__all__ = ["TAG_ITERATION_PERIOD", "TAG_STAGE_STRIDE", "activation_tag", "build_serving_workload"]

_ALL_REDUCE = int(CollectiveType.ALL_REDUCE)
_COMP = NodeType.COMP_NODE
_COLL = NodeType.COMM_COLL_NODE

# Node names are the same for every iteration: cache them rather than format thousands per iteration.
_node_names: dict[tuple[str, str, str, int], str] = {}


def _node_name(kind: str, row: LayerRow, suffix: str = "") -> str:
    """`<kind>_<layer><suffix>_b<block>` (no block part outside the blocks), cached: names repeat every iteration."""
    key = (kind, row.name, suffix, row.block)
    name = _node_names.get(key)
    if name is None:
        name = f"{kind}_{row.name}{suffix}" + (f"_b{row.block}" if row.block >= 0 else "")
        _node_names[key] = name
    return name


def comp_name(row: LayerRow) -> str:
    return _node_name("COMP_NODE", row)


def all_reduce_name(row: LayerRow) -> str:
    return _node_name("COMM_COLL_NODE", row, "_ar")


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


def build_serving_workload(layers: LayerList, plan: ParallelPlan, iteration_id: int = 0) -> Workload:
    """Per-NPU graphs of one iteration; graph k is NPU k, comm_groups are the plan's TP groups."""
    with paused_gc():
        return _build_serving_workload(layers, plan, iteration_id)


def _build_serving_workload(layers: LayerList, plan: ParallelPlan, iteration_id: int) -> Workload:
    if layers.num_stages != plan.pp:
        raise PipesimError(
            f"serving graph: the layer list has {layers.num_stages} stages but the plan has pp = {plan.pp}; "
            "build the layer list with this plan"
        )
    tp = plan.tp
    pp = plan.pp
    reduce_in_tp = tp > 1
    stage_rows = [layers.stage_rows(stage) for stage in range(pp)]
    # Per stage: (name, duration_us, flops, bytes, all-reduce name or None, all-reduce bytes), shared by its ranks.
    stage_steps = []
    for rows in stage_rows:
        steps = []
        for row, duration in zip(rows, micros_durations(rows), strict=True):
            reduce_name = all_reduce_name(row) if reduce_in_tp and row.comm == "all_reduce" else None
            # At least 1 op and 1 byte: ASTRA-Sim's roofline mode divides num_ops by a performance that is 0 when
            # num_ops is 0 (0/0), and skips nodes whose tensor_size is 0. With num_ops 1 the roofline time is
            # tensor_size / bandwidth: the memory time of a gather such as the embedding.
            ops, size = max(row.flops, 1), max(row.bytes, 1)
            steps.append((comp_name(row), duration, ops, size, reduce_name, row.comm_bytes))
        stage_steps.append(steps)
    boundary_bytes = [layers.activation_bytes(stage) for stage in range(pp - 1)]
    boundary_tags = [activation_tag(iteration_id, stage) for stage in range(pp - 1)]

    graphs: list[Graph] = []
    for rank in range(plan.npus):
        stage, tp_rank, dp_rank = plan.coords(rank)
        nodes: list[Node] = []
        append = nodes.append
        next_id = 0
        deps: list[int] = []
        if stage > 0:
            append(
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
            deps = [0]
            next_id = 1
        pg_name = plan.pg_name(stage, dp_rank) if reduce_in_tp else None
        for name, duration, flops, size, reduce_name, reduce_bytes in stage_steps[stage]:
            # Positional (id, name, type, data_deps, ctrl_deps, duration_micros, start_time_micros, is_cpu_op,
            # num_ops, tensor_size): a third faster than keywords, and compute nodes are most of the graph.
            append(Node(next_id, name, _COMP, deps, [], duration, 0, False, flops, size))
            deps = [next_id]
            next_id += 1
            if reduce_name is not None:
                append(
                    Node(
                        next_id,
                        reduce_name,
                        _COLL,
                        deps,
                        comm_type=_ALL_REDUCE,
                        comm_size=reduce_bytes,
                        pg_name=pg_name,
                    )
                )
                deps = [next_id]
                next_id += 1
        if stage < pp - 1:
            append(
                Node(
                    next_id,
                    f"COMM_SEND_NODE_act_s{stage}_to_s{stage + 1}",
                    NodeType.COMM_SEND_NODE,
                    deps,
                    comm_src=rank,
                    comm_dst=plan.rank(stage + 1, tp_rank, dp_rank),
                    comm_tag=boundary_tags[stage],
                    comm_size=boundary_bytes[stage],
                )
            )
        graphs.append(Graph(rank=rank, nodes=nodes))
    return Workload(graphs=graphs, comm_groups=plan.comm_groups())
