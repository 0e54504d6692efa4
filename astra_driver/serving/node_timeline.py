"""Per-NPU node times of a serving run (or its replay), for `--timeline` / `--timeline-png`.

Every iteration's graphs reuse node ids 0..n-1, and an instance's engine numbers its NPUs 0..n-1, so the
recorder renumbers each graph before it goes onto the engine: node ids become unique per NPU over the whole run
(the graph's own ids plus an offset; the order and so the engine's issue order are unchanged) and every node's
name gets its batch as a prefix ("batch 12: COMP_NODE_..."; KV transfers "kv 7: ..."). After the run the
engines' node times are gathered under the cluster's NPU ids (placed.npu_ids), and `facts(rank, node_id)` finds
the node's bytes, peer (also a cluster NPU id), tag and collective.

Only made when a timeline is asked for: without one the loop adds its graphs as they are, on engines that
record nothing. While recording, an engine keeps every node of the run (it cannot free finished graphs), so
for long runs keep the files usable with --timeline-window / --timeline-npus / --timeline-max-events.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from astra_driver.report.timeline import NodeFacts, TimeWindow
from llm_converter.graph import CollectiveType, Graph, Node, NodeType

LINK_ID_BASE = 1 << 40  # node ids of the cluster link's KV transfers start here, apart from the iterations'

NodeTime = tuple[int, str, int, int, int]  # (node_id, name, type, issue_ns, end_ns), as SimResult.node_times


class NodeTimeline:
    """Renumbers graphs as they go onto the engines and gathers the engines' node times afterwards."""

    def __init__(self, total_npus: int) -> None:
        self.total_npus = total_npus
        self._next_id: dict[tuple[int, int], int] = {}  # (id space, cluster NPU) -> next free node id
        # Per cluster NPU: graphs in id order as (first id, name prefix, facts by original id).
        self._firsts: list[list[int]] = [[] for _ in range(total_npus)]
        self._graphs: list[list[tuple[str, dict[int, NodeFacts]]]] = [[] for _ in range(total_npus)]
        self._engines: list[tuple[Any, tuple[int, ...]]] = []

    def attach(self, engine: Any, npu_ids: Sequence[int]) -> None:
        """An engine (made with record_node_times=True) whose rank r is cluster NPU npu_ids[r]."""
        self._engines.append((engine, tuple(npu_ids)))

    def renumber(self, graphs: Sequence[Graph], npu_ids: Sequence[int], prefix: str, link: bool = False) -> list[Graph]:
        """The graphs (graph.rank local to the engine) with node ids unique per cluster NPU; remembers what the
        timeline needs of their nodes under `prefix` ("batch 12")."""
        space = 1 if link else 0
        renumbered: list[Graph] = []
        for graph in graphs:
            npu = npu_ids[graph.rank]
            key = (space, npu)
            first = self._next_id.get(key, LINK_ID_BASE if link else 0)
            ids = [node.id for node in graph.nodes] or [0]
            offset = first - min(ids)
            self._next_id[key] = max(ids) + offset + 1
            facts: dict[int, NodeFacts] = {}
            nodes: list[Node] = []
            for node in graph.nodes:
                nodes.append(
                    replace(
                        node,
                        id=node.id + offset,
                        data_deps=[d + offset for d in node.data_deps],
                        ctrl_deps=[d + offset for d in node.ctrl_deps],
                    )
                )
                fact = _facts_of(node, npu_ids)
                if fact is not None:
                    facts[node.id + offset] = fact
            # Keep the per-NPU list sorted by first id (link ids sit above every iteration's).
            position = bisect_right(self._firsts[npu], first)
            self._firsts[npu].insert(position, first)
            self._graphs[npu].insert(position, (prefix, facts))
            renumbered.append(Graph(rank=graph.rank, nodes=nodes))
        return renumbered

    def facts(self, rank: int, node_id: int) -> NodeFacts | None:
        position = bisect_right(self._firsts[rank], node_id) - 1
        return self._graphs[rank][position][1].get(node_id) if position >= 0 else None

    def _prefix(self, rank: int, node_id: int) -> str:
        position = bisect_right(self._firsts[rank], node_id) - 1
        return self._graphs[rank][position][0] if position >= 0 else ""

    def node_times(self, window: TimeWindow | None = None) -> list[list[NodeTime]]:
        """Per cluster NPU, every recorded node (batch-prefixed names), instance engines before the link's;
        with `window`, only the nodes overlapping it."""
        per_npu: list[list[NodeTime]] = [[] for _ in range(self.total_npus)]
        for engine, npu_ids in self._engines:
            recorded = engine.result().node_times
            if recorded is None:
                raise RuntimeError("NodeTimeline: an attached engine was made without record_node_times")
            for rank, times in enumerate(recorded):
                npu = npu_ids[rank]
                out = per_npu[npu]
                for node_id, name, node_type, issue, end in times:
                    if window is not None and not window.overlaps(issue, end):
                        continue
                    out.append((node_id, f"{self._prefix(npu, node_id)}: {name}", node_type, issue, end))
        return per_npu


def _facts_of(node: Node, npu_ids: Sequence[int]) -> NodeFacts | None:
    """timeline.node_facts for one node, its peer as a cluster NPU id."""
    kind = node.type
    if kind == NodeType.COMM_SEND_NODE:
        return NodeFacts(node.comm_size, _global(node.comm_dst, npu_ids), tag=node.comm_tag)
    if kind == NodeType.COMM_RECV_NODE:
        return NodeFacts(node.comm_size, _global(node.comm_src, npu_ids), tag=node.comm_tag)
    if kind == NodeType.COMM_COLL_NODE:
        return NodeFacts(node.comm_size, None, _collective(node.comm_type), node.pg_name or None)
    if node.tensor_size is not None:
        return NodeFacts(node.tensor_size)
    return None


def _collective(comm_type: int | None) -> str | None:
    if comm_type is None:
        return None
    try:
        return CollectiveType(comm_type).name
    except ValueError:
        return str(comm_type)


def _global(rank: int | None, npu_ids: Sequence[int]) -> int | None:
    return npu_ids[rank] if rank is not None and 0 <= rank < len(npu_ids) else rank
