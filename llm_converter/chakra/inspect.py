"""Looking into traces: a per-rank summary, protobuf's JSON mapping, Graphviz DOT and GraphML.

The JSON output keeps Chakra's jsonizer field mapping (protobuf's JSON mapping of GlobalMetadata, then of every
node) but as JSON Lines, one compact document per line, so every JSON tool reads it (the jsonizer concatenates
indented documents, which `json.load` cannot); every node line has `id`, which protobuf's mapping drops
when it is 0 (a proto3 default). DOT and GraphML follow Chakra's visualizer (data edges plain, control edges
with a tee arrowhead / `dependency="control"`).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as _xml_escape

from google.protobuf.json_format import MessageToDict

from llm_converter.chakra import schema
from llm_converter.chakra.writer import encode_metadata, encode_node
from llm_converter.graph import Graph, NodeType


@dataclass
class GraphSummary:
    """What one rank's graph does: node counts, compute time, traffic per peer, critical path."""

    rank: int
    nodes: int
    nodes_by_type: dict[str, int]
    compute_us: int
    collective_bytes: int
    bytes_sent: dict[int, int] = field(default_factory=dict)
    bytes_received: dict[int, int] = field(default_factory=dict)
    critical_path_us: int = 0
    critical_path: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "rank": self.rank,
            "nodes": self.nodes,
            "nodes_by_type": self.nodes_by_type,
            "compute_us": self.compute_us,
            "collective_bytes": self.collective_bytes,
            "bytes_sent": {str(k): v for k, v in sorted(self.bytes_sent.items())},
            "bytes_received": {str(k): v for k, v in sorted(self.bytes_received.items())},
            "critical_path_us": self.critical_path_us,
            "critical_path": self.critical_path,
        }


def summarize(graph: Graph) -> GraphSummary:
    by_type = Counter(node.type.name for node in graph.nodes)
    sent: dict[int, int] = defaultdict(int)
    received: dict[int, int] = defaultdict(int)
    compute = 0
    collective = 0
    for node in graph.nodes:
        if node.type == NodeType.COMP_NODE:
            compute += node.duration_micros
        elif node.type == NodeType.COMM_SEND_NODE and node.comm_dst is not None:
            sent[node.comm_dst] += node.comm_size or 0
        elif node.type == NodeType.COMM_RECV_NODE and node.comm_src is not None:
            received[node.comm_src] += node.comm_size or 0
        elif node.type == NodeType.COMM_COLL_NODE:
            collective += node.comm_size or 0
    length, path = critical_path(graph)
    return GraphSummary(
        rank=graph.rank,
        nodes=len(graph.nodes),
        nodes_by_type=dict(sorted(by_type.items())),
        compute_us=compute,
        collective_bytes=collective,
        bytes_sent=dict(sent),
        bytes_received=dict(received),
        critical_path_us=length,
        critical_path=path,
    )


def critical_path(graph: Graph) -> tuple[int, list[int]]:
    """Longest chain of compute time (duration_micros of COMP nodes) through the rank's dependencies.

    Communication has no duration of its own in a trace (the network decides it), so it weighs 0 here: this
    is the compute lower bound of the rank, and the chain of node ids that sets it. Cycles are ignored.
    """
    nodes = graph.by_id()
    order = _topological_order(graph)
    best: dict[int, int] = {}
    parent: dict[int, int | None] = {}
    for node_id in order:
        node = nodes[node_id]
        weight = node.duration_micros if node.type == NodeType.COMP_NODE else 0
        start, via = 0, None
        for dep in node.deps:
            if dep in best and best[dep] > start:
                start, via = best[dep], dep
            elif dep in best and via is None:
                via = dep
        best[node_id] = start + weight
        parent[node_id] = via
    if not best:
        return 0, []
    end = max(best, key=lambda i: (best[i], i))  # ties: the later node, so trailing comm is shown
    path = []
    cursor: int | None = end
    while cursor is not None:
        path.append(cursor)
        cursor = parent[cursor]
    return best[end], path[::-1]


def _topological_order(graph: Graph) -> list[int]:
    ids = {node.id for node in graph.nodes}
    indegree = {}
    children: dict[int, list[int]] = defaultdict(list)
    for node in graph.nodes:
        parents = {d for d in node.deps if d in ids}
        indegree[node.id] = len(parents)
        for p in parents:
            children[p].append(node.id)
    ready = sorted((i for i, d in indegree.items() if d == 0), reverse=True)
    order = []
    while ready:
        node_id = ready.pop()
        order.append(node_id)
        for child in children.get(node_id, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    return order


def format_summary(summary: GraphSummary) -> str:
    types = ", ".join(f"{name} {count}" for name, count in summary.nodes_by_type.items())
    lines = [
        f"rank {summary.rank}: {summary.nodes} nodes ({types})",
        f"  compute {summary.compute_us} us, critical path {summary.critical_path_us} us over "
        f"{len(summary.critical_path)} nodes, collectives {summary.collective_bytes} B",
    ]
    for peer, size in sorted(summary.bytes_sent.items()):
        lines.append(f"  sends {size} B to rank {peer}")
    for peer, size in sorted(summary.bytes_received.items()):
        lines.append(f"  receives {size} B from rank {peer}")
    return "\n".join(lines)


def to_json(graph: Graph) -> str:
    """JSON Lines: protobuf's JSON mapping of the GlobalMetadata record, then of each node, one per line."""
    metadata = schema.GlobalMetadata()
    metadata.ParseFromString(encode_metadata(graph))
    lines = [json.dumps(MessageToDict(metadata))]
    message = schema.Node()
    for node in graph.nodes:
        message.ParseFromString(encode_node(node))
        document = MessageToDict(message)
        if "id" not in document:
            document = {"id": str(node.id), **document}  # uint64 maps to a JSON string, as the other ids
        lines.append(json.dumps(document))
    return "\n".join(lines) + "\n"


# XML 1.0 cannot hold most control characters, even escaped: show them as \xNN.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


def escape(text: str) -> str:
    return _xml_escape(_XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def _edges(graph: Graph):
    for node in graph.nodes:
        for dep in node.data_deps:
            yield dep, node.id, "data"
        for dep in node.ctrl_deps:
            yield dep, node.id, "control"


def _dot_label(text: str) -> str:
    # Record-shaped labels treat these characters as syntax.
    for char in '\\{}|<>"':
        text = text.replace(char, "\\" + char)
    return text


def to_dot(graph: Graph) -> str:
    lines = [f'digraph "rank{graph.rank}" {{', "  node [shape=record];"]
    for node in graph.nodes:
        lines.append(f'  {node.id} [label="{_dot_label(node.name)}"];')
    for src, dst, kind in _edges(graph):
        lines.append(f"  {src} -> {dst}" + (" [arrowhead=tee];" if kind == "control" else ";"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_graphml(graphs: Graph | list[Graph]) -> str:
    """One GraphML document; each rank is a <graph> of its own (a prefix gives one document, not several)."""
    if isinstance(graphs, Graph):
        graphs = [graphs]
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
        '  <key id="name" for="node" attr.name="name" attr.type="string"/>',
        '  <key id="type" for="node" attr.name="type" attr.type="string"/>',
        '  <key id="dependency" for="edge" attr.name="dependency" attr.type="string"/>',
    ]
    for graph in graphs:
        lines.append(f'  <graph id="rank{graph.rank}" edgedefault="directed">')
        prefix = f"r{graph.rank}n" if len(graphs) > 1 else ""  # node ids are unique per document
        for node in graph.nodes:
            lines.append(
                f'    <node id="{prefix}{node.id}"><data key="name">{escape(node.name)}</data>'
                f'<data key="type">{node.type.name}</data></node>'
            )
        for src, dst, kind in _edges(graph):
            lines.append(
                f'    <edge source="{prefix}{src}" target="{prefix}{dst}"><data key="dependency">{kind}</data></edge>'
            )
        lines.append("  </graph>")
    lines.append("</graphml>")
    return "\n".join(lines) + "\n"


__all__ = ["GraphSummary", "critical_path", "format_summary", "summarize", "to_dot", "to_graphml", "to_json"]
