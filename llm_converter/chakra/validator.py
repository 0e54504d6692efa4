"""Whole-workload checks that a trace will load and run to completion in ASTRA-Sim.

Per rank: unique ids, every dependency present, no cycle, at least one root, required attributes present
with the kinds ASTRA-Sim reads. Across ranks: each send matched by exactly one recv on (src, dst, tag, size)
and the other way round, peers inside the workload, and the same sequence of collectives (type and size) on
every member of a communicator group. Problems name the rank and node ids so a user can find them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from llm_converter.chakra import schema
from llm_converter.chakra.reader import CANONICAL_KINDS
from llm_converter.graph import SIMULATED_COLLECTIVES, CollectiveType, Graph, Node, NodeType, Workload
from llm_converter.graphs.tags import TAG_MODULUS  # tags compare modulo this, as in ASTRA-Sim's network layer

_REQUIRED: dict[NodeType, tuple[str, ...]] = {
    NodeType.COMM_SEND_NODE: ("comm_dst", "comm_tag", "comm_size"),
    NodeType.COMM_RECV_NODE: ("comm_src", "comm_tag", "comm_size"),
    NodeType.COMM_COLL_NODE: ("comm_type", "comm_size"),
    NodeType.MEM_LOAD_NODE: ("tensor_size",),
    NodeType.MEM_STORE_NODE: ("tensor_size",),
}


@dataclass(frozen=True)
class Problem:
    rank: int | None
    node_ids: tuple[int, ...]
    message: str

    def __str__(self) -> str:
        where = f"rank {self.rank}" if self.rank is not None else "workload"
        if self.node_ids:
            where += " node" + ("s " if len(self.node_ids) > 1 else " ") + ",".join(map(str, self.node_ids[:10]))
            if len(self.node_ids) > 10:
                where += f",... ({len(self.node_ids)} in all)"
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    ranks: int
    nodes: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.ranks} ranks, {self.nodes} nodes"
        return f"{len(self.problems)} problem(s) in {self.ranks} ranks, {self.nodes} nodes"


def validate_workload(workload: Workload, roofline: bool = False) -> ValidationReport:
    """Check every rank and the pairings between them. `roofline` also requires num_ops/tensor_size."""
    report = ValidationReport(ranks=workload.npus, nodes=workload.node_count())
    for rank, graph in enumerate(workload.graphs):
        if graph.rank != rank:
            report.problems.append(Problem(rank, (), f"graph says it is rank {graph.rank}"))
        _check_graph(graph, report, roofline)
    _check_send_recv(workload, report)
    _check_collectives(workload, report)
    return report


def _check_graph(graph: Graph, report: ValidationReport, roofline: bool) -> None:
    rank = graph.rank
    problems = report.problems
    if not graph.nodes:
        problems.append(Problem(rank, (), "the file has no nodes; ASTRA-Sim aborts at load"))
        return
    counts = Counter(node.id for node in graph.nodes)
    duplicates = tuple(sorted(i for i, n in counts.items() if n > 1))
    if duplicates:
        problems.append(Problem(rank, duplicates, "duplicate node ids; ids must be unique within a file"))
    ids = set(counts)
    dangling = []
    for node in graph.nodes:
        missing = [d for d in (*node.data_deps, *node.ctrl_deps) if d not in ids]
        if missing:
            dangling.append((node.id, missing))
        _check_attributes(node, rank, problems, roofline)
    for node_id, missing in dangling[:10]:
        problems.append(Problem(rank, (node_id,), f"depends on missing node id(s) {missing}; ASTRA-Sim aborts at load"))
    if not any(not node.data_deps and not node.ctrl_deps for node in graph.nodes):
        problems.append(Problem(rank, (), "no node without dependencies (no root); ASTRA-Sim finds nothing to issue"))
    cyclic = find_cycle_nodes(graph)
    if cyclic:
        problems.append(Problem(rank, tuple(cyclic), "dependency cycle: these nodes never run"))
    metadata = tuple(node.id for node in graph.nodes if node.type == NodeType.METADATA_NODE)
    if metadata:
        problems.append(Problem(rank, metadata, "METADATA_NODE: ASTRA-Sim's statistics abort on it; use comm groups"))


def _check_attributes(node: Node, rank: int, problems: list[Problem], roofline: bool) -> None:
    wrong_kinds: set[str] = set()
    in_extras: set[str] = set()  # known attributes kept as raw records: present, though not as typed fields
    if node.extra_attrs:
        known = Counter(name for name, _ in node.extra_attrs if name in CANONICAL_KINDS)
        for name, count in sorted(known.items()):
            if count > 1:
                message = (
                    f"attribute {name} appears {count} times; ASTRA-Sim's feeder_v3 reads the first, the legacy "
                    "feeder the last: keep one"
                )
                problems.append(Problem(rank, (node.id,), message))
        for name, raw in node.extra_attrs:
            if name in CANONICAL_KINDS and name not in wrong_kinds and _kind_of(raw) != CANONICAL_KINDS[name]:
                wrong_kinds.add(name)
                message = f"attribute {name} has a non-canonical kind; write it as {CANONICAL_KINDS[name]}"
                problems.append(Problem(rank, (node.id,), message))
        in_extras = set(known)
    required = _REQUIRED.get(node.type, ())
    if node.type == NodeType.COMP_NODE and roofline and not node.is_cpu_op:
        required = ("num_ops", "tensor_size")
    for name in required:
        if getattr(node, name) is None and name not in in_extras:
            message = f"{node.type.name} {node.name!r} lacks required attribute {name}"
            problems.append(Problem(rank, (node.id,), message))
    if node.type in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE, NodeType.COMM_COLL_NODE):
        if node.is_cpu_op:
            problems.append(Problem(rank, (node.id,), "communication node has is_cpu_op=true; ASTRA-Sim rejects it"))
        if node.comm_size is not None and node.comm_size <= 0:
            problems.append(Problem(rank, (node.id,), f"comm_size {node.comm_size} must be > 0"))
    if node.type == NodeType.COMM_SEND_NODE and node.comm_src is not None and node.comm_src != rank:
        problems.append(Problem(rank, (node.id,), f"send has comm_src {node.comm_src} but is on rank {rank}"))
    if node.type == NodeType.COMM_RECV_NODE and node.comm_dst is not None and node.comm_dst != rank:
        problems.append(Problem(rank, (node.id,), f"recv has comm_dst {node.comm_dst} but is on rank {rank}"))
    if node.type == NodeType.COMM_COLL_NODE and node.comm_type is not None:
        if node.comm_type not in SIMULATED_COLLECTIVES and node.comm_type != CollectiveType.BROADCAST:
            kind = CollectiveType(node.comm_type).name if 0 <= node.comm_type <= 9 else str(node.comm_type)
            problems.append(Problem(rank, (node.id,), f"collective {kind} is not supported by ASTRA-Sim"))
        if node.pg_name not in (None, "") and not node.pg_name.isdigit():
            problems.append(Problem(rank, (node.id,), f"pg_name {node.pg_name!r} must be a decimal string"))


def _kind_of(raw: bytes) -> str | None:
    """The value kind of a serialized AttributeProto (None when it does not parse or has no value)."""
    attr = schema.AttributeProto()
    try:
        attr.ParseFromString(raw)
    except DecodeError:
        return None
    return attr.WhichOneof("value")


def find_cycle_nodes(graph: Graph) -> list[int]:
    """Ids of nodes on or behind a dependency cycle (Kahn's algorithm leaves them unvisited)."""
    ids = {node.id for node in graph.nodes}
    indegree: dict[int, int] = {}
    children: dict[int, list[int]] = defaultdict(list)
    for node in graph.nodes:
        parents = {d for d in (*node.data_deps, *node.ctrl_deps) if d in ids}
        indegree[node.id] = len(parents)
        for parent in parents:
            children[parent].append(node.id)
    queue = [node_id for node_id, degree in indegree.items() if degree == 0]
    seen = 0
    while queue:
        node_id = queue.pop()
        seen += 1
        for child in children.get(node_id, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                queue.append(child)
    if seen == len(indegree):
        return []
    return sorted(node_id for node_id, degree in indegree.items() if degree > 0)


def _check_send_recv(workload: Workload, report: ValidationReport) -> None:
    npus = workload.npus
    sends: dict[tuple[int, int, int, int], list[tuple[int, int]]] = defaultdict(list)
    recvs: dict[tuple[int, int, int, int], list[tuple[int, int]]] = defaultdict(list)
    for graph in workload.graphs:
        rank = graph.rank
        for node in graph.nodes:
            if node.type == NodeType.COMM_SEND_NODE and None not in (node.comm_dst, node.comm_tag, node.comm_size):
                if not 0 <= node.comm_dst < npus:
                    message = f"send to rank {node.comm_dst}, outside 0..{npus - 1}"
                    report.problems.append(Problem(rank, (node.id,), message))
                key = (rank, node.comm_dst, node.comm_tag % TAG_MODULUS, node.comm_size)
                sends[key].append((rank, node.id))
            elif node.type == NodeType.COMM_RECV_NODE and None not in (node.comm_src, node.comm_tag, node.comm_size):
                if not 0 <= node.comm_src < npus:
                    message = f"recv from rank {node.comm_src}, outside 0..{npus - 1}"
                    report.problems.append(Problem(rank, (node.id,), message))
                key = (node.comm_src, rank, node.comm_tag % TAG_MODULUS, node.comm_size)
                recvs[key].append((rank, node.id))
    for key in sorted(set(sends) | set(recvs)):
        n_send, n_recv = len(sends.get(key, ())), len(recvs.get(key, ()))
        if n_send == n_recv:
            continue
        src, dst, tag, size = key
        if n_send > n_recv:
            extra = sends[key][n_recv:]
            report.problems.append(
                Problem(
                    src,
                    tuple(node_id for _, node_id in extra),
                    f"{n_send} send(s) {src}->{dst} tag {tag} size {size} but {n_recv} matching recv(s) on rank {dst}",
                )
            )
        else:
            extra = recvs[key][n_send:]
            report.problems.append(
                Problem(
                    dst,
                    tuple(node_id for _, node_id in extra),
                    f"{n_recv} recv(s) {src}->{dst} tag {tag} size {size} but {n_send} matching send(s) on rank {src}",
                )
            )


def _group_key(node: Node) -> str:
    """ "" for the default group of all ranks ("", "0" or no pg_name), else the pg_name."""
    if node.pg_name in (None, "", "0"):
        return ""
    return node.pg_name


def _check_collectives(workload: Workload, report: ValidationReport) -> None:
    """Every member of a group must issue the same collectives in the same order (matched by order)."""
    npus = workload.npus
    groups = {"": list(range(npus))}
    groups.update({name: list(ranks) for name, ranks in workload.comm_groups.items()})
    sequences: dict[str, dict[int, list[tuple[int, int, int]]]] = defaultdict(dict)
    for graph in workload.graphs:
        per_group: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for node in graph.nodes:
            if node.type == NodeType.COMM_COLL_NODE and node.comm_type in SIMULATED_COLLECTIVES:
                per_group[_group_key(node)].append((node.comm_type, node.comm_size or 0, node.id))
        for name, sequence in per_group.items():
            sequences[name][graph.rank] = sequence
            members = groups.get(name)
            if members is None:
                if workload.comm_groups:
                    message = f"pg_name {name!r} is not a group of the comm-group file"
                    report.problems.append(Problem(graph.rank, (sequence[0][2],), message))
                continue
            if graph.rank not in members:
                message = f"collective in group {name!r} {members}, which excludes this rank"
                report.problems.append(Problem(graph.rank, (sequence[0][2],), message))
    for name, by_rank in sequences.items():
        members = groups.get(name) if name in groups or not workload.comm_groups else None
        if members is None:
            # Group file unknown: compare the ranks that use this pg_name with each other.
            members = sorted(by_rank)
        reference_rank = next((r for r in members if r in by_rank), None)
        if reference_rank is None:
            continue
        reference = [(t, s) for t, s, _ in by_rank[reference_rank]]
        for rank in members:
            sequence = by_rank.get(rank, [])
            mine = [(t, s) for t, s, _ in sequence]
            if mine == reference:
                continue
            pairs = zip(mine, reference, strict=False)
            index = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(mine), len(reference)))
            node_ids = (sequence[index][2],) if index < len(sequence) else ()
            label = f"group {name!r}" if name else "the default group (all ranks)"
            report.problems.append(
                Problem(
                    rank,
                    node_ids,
                    f"collective #{index} in {label} differs from rank {reference_rank}: "
                    f"{_describe(mine, index)} vs {_describe(reference, index)} "
                    f"({len(mine)} vs {len(reference)} collectives)",
                )
            )


def _describe(sequence: list[tuple[int, int]], index: int) -> str:
    if index >= len(sequence):
        return "nothing"
    comm_type, size = sequence[index]
    return f"{CollectiveType(comm_type).name} {size} B"
