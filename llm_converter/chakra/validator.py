"""Whole-workload checks that a trace will load and run to completion in ASTRA-Sim.

Per rank: unique ids, every dependency present, no cycle, at least one root, required attributes present
with the kinds ASTRA-Sim reads, no INVALID node (type 0) with dependents. Across ranks: each send matched by
exactly one recv on (src, dst, tag, size) and the other way round, peers inside the workload, every pg_name
naming a group of the comm groups (ids compared as integers, as ASTRA-Sim's stoi reads them), and the same
sequence of collectives (type and size) on every member of a group. When all that holds, a structural dry run
(`check_progress`) plays the workload without time and reports nodes that can never run: a cross-rank wait
cycle through send/recv matching, or collectives whose members wait on each other. (With ASTRA-Sim's config
at hand, astra_driver.validate_job runs the builtin engine instead, which also models the one communication
slot per NPU.) Problems name the rank and node ids so a user can find them; lists in them stay short.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from llm_converter.chakra import schema
from llm_converter.chakra.reader import CANONICAL_KINDS
from llm_converter.comm_groups import DEFAULT_GROUP, group_key, parse_group_id
from llm_converter.errors import name_first
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
            where += " node" + ("s " if len(self.node_ids) > 1 else " ") + name_first(self.node_ids, 10, ",")
        return f"{where}: {self.message}"


@dataclass
class ValidationReport:
    ranks: int
    nodes: int
    problems: list[Problem] = field(default_factory=list)
    # What "ok" rests on beyond the static checks, said after the counts (e.g. the engine's dry run).
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        ranks = f"{self.ranks} rank{'s' if self.ranks != 1 else ''}, {self.nodes} nodes"
        if self.ok:
            return f"ok: {ranks}" + (f"; {self.note}" if self.note else "")
        return f"{len(self.problems)} problem(s) in {ranks}"


def validate_workload(workload: Workload, roofline: bool = False, progress: bool = True) -> ValidationReport:
    """Check every rank and the pairings between them. `roofline` also requires num_ops/tensor_size;
    `progress` runs the structural dry run (check_progress) once every other check passes."""
    report = ValidationReport(ranks=workload.npus, nodes=workload.node_count())
    for rank, graph in enumerate(workload.graphs):
        if graph.rank != rank:
            report.problems.append(Problem(rank, (), f"graph says it is rank {graph.rank}"))
        _check_graph(graph, report, roofline)
    _check_send_recv(workload, report)
    _check_collectives(workload, report)
    if progress and report.ok:
        report.problems.extend(check_progress(workload))
    return report


def validate_graph(graph: Graph, roofline: bool = False) -> ValidationReport:
    """The checks of one rank alone (a single `.et` file): everything but the pairings between ranks."""
    report = ValidationReport(
        ranks=1,
        nodes=len(graph.nodes),
        note=f"rank {graph.rank} alone; pairings between ranks need the workload prefix",
    )
    _check_graph(graph, report, roofline)
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
        message = f"depends on missing node id(s) [{name_first(missing)}]; ASTRA-Sim aborts at load"
        problems.append(Problem(rank, (node_id,), message))
    if len(dangling) > 10:
        problems.append(Problem(rank, (), f"{len(dangling) - 10} more nodes depend on missing node ids"))
    if not any(not node.data_deps and not node.ctrl_deps for node in graph.nodes):
        problems.append(Problem(rank, (), "no node without dependencies (no root); ASTRA-Sim finds nothing to issue"))
    cyclic = find_cycle_nodes(graph)
    if cyclic:
        problems.append(Problem(rank, tuple(cyclic), "dependency cycle: these nodes never run"))
    metadata = tuple(node.id for node in graph.nodes if node.type == NodeType.METADATA_NODE)
    if metadata:
        problems.append(Problem(rank, metadata, "METADATA_NODE: ASTRA-Sim's statistics abort on it; use comm groups"))
    # ASTRA-Sim skips an INVALID node (type 0) without issuing what depends on it (Workload::skip_invalid frees
    # the dependents but does not issue them), so its dependents never run: the builtin engine stalls the same.
    invalid = {node.id for node in graph.nodes if node.type == NodeType.INVALID_NODE}
    if invalid:
        parents = tuple(sorted({d for node in graph.nodes for d in node.deps if d in invalid}))
        if parents:
            message = "INVALID_NODE (type 0) with dependents: ASTRA-Sim skips it and never issues them; give it a type"
            problems.append(Problem(rank, parents, message))


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
        problem = pg_name_problem(node.pg_name)
        if problem:
            problems.append(Problem(rank, (node.id,), problem))


def pg_name_problem(pg_name: str | None) -> str:
    """What is wrong with a pg_name as ASTRA-Sim reads it ("" when nothing is)."""
    if pg_name in (None, "", "0"):
        return ""
    value = parse_group_id(pg_name)
    if value is None:
        return f"pg_name {pg_name!r} must be a decimal integer (ASCII digits, at most 2147483647): a group id"
    if value == 0:
        return f"pg_name {pg_name!r} is group 0 to ASTRA-Sim, which no groups file holds; write '0' for all ranks"
    return ""


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
                elif node.comm_dst == rank:
                    message = "send to its own rank; replay refuses it (a peer must be another NPU)"
                    report.problems.append(Problem(rank, (node.id,), message))
                key = (rank, node.comm_dst, node.comm_tag % TAG_MODULUS, node.comm_size)
                sends[key].append((rank, node.id))
            elif node.type == NodeType.COMM_RECV_NODE and None not in (node.comm_src, node.comm_tag, node.comm_size):
                if not 0 <= node.comm_src < npus:
                    message = f"recv from rank {node.comm_src}, outside 0..{npus - 1}"
                    report.problems.append(Problem(rank, (node.id,), message))
                elif node.comm_src == rank:
                    message = "recv from its own rank; replay refuses it (a peer must be another NPU)"
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


def _check_collectives(workload: Workload, report: ValidationReport) -> None:
    """Every pg_name names a group holding the rank, and every member of a group issues the same collectives in
    the same order (matched by order)."""
    npus = workload.npus
    groups = {DEFAULT_GROUP: list(range(npus))}
    groups.update({group_key(name): list(ranks) for name, ranks in workload.comm_groups.items()})
    sequences: dict[str, dict[int, list[tuple[int, int, int]]]] = defaultdict(dict)
    unknown: dict[str, list[tuple[int, int]]] = defaultdict(list)  # pg_name -> (rank, first node) using it
    for graph in workload.graphs:
        per_group: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for node in graph.nodes:
            if node.type == NodeType.COMM_COLL_NODE and node.comm_type in SIMULATED_COLLECTIVES:
                if pg_name_problem(node.pg_name):
                    continue  # reported with the node's attributes
                per_group[group_key(node.pg_name)].append((node.comm_type, node.comm_size or 0, node.id))
        for name, sequence in per_group.items():
            members = groups.get(name)
            if members is None:
                unknown[name].append((graph.rank, sequence[0][2]))
                continue
            sequences[name][graph.rank] = sequence
            if graph.rank not in members:
                message = f"collective in group {name!r} [{name_first(members, 8)}], which excludes this rank"
                report.problems.append(Problem(graph.rank, (sequence[0][2],), message))
    _report_unknown_groups(unknown, bool(workload.comm_groups), report)
    for name, by_rank in sequences.items():
        members = groups[name]
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


def _report_unknown_groups(
    unknown: dict[str, list[tuple[int, int]]], have_file: bool, report: ValidationReport
) -> None:
    """One problem per pg_name missing from the groups file; one in all when there is no file (a TP trace without
    its groups would otherwise repeat it on every rank)."""
    if not unknown:
        return
    if have_file:
        for name, users in unknown.items():
            ranks = name_first((rank for rank, _ in users), 8)
            message = f"pg_name {name!r} is not a group of the comm-group file (used on ranks {ranks})"
            report.problems.append(Problem(users[0][0], (users[0][1],), message))
        return
    name, users = next(iter(unknown.items()))
    ranks = {rank for users in unknown.values() for rank, _ in users}
    names = name_first((repr(n) for n in unknown), 5)
    message = (
        f"pg_name {name!r} names no communicator group: no comm-group file was given, or it defines no groups "
        f"(--comm-group-configuration, or comm_groups.json beside the traces); {len(unknown)} pg_name(s) ({names}) on "
        f"{len(ranks)} rank(s) need one"
    )
    report.problems.append(Problem(users[0][0], (users[0][1],), message))


def _describe(sequence: list[tuple[int, int]], index: int) -> str:
    if index >= len(sequence):
        return "nothing"
    comm_type, size = sequence[index]
    return f"{CollectiveType(comm_type).name} {size} B"


# ---------------------------------------------------------------------------------------------------------
# Structural dry run: does every node run, whatever the times?
# ---------------------------------------------------------------------------------------------------------


def check_progress(workload: Workload) -> list[Problem]:
    """Play the workload without time, the way ASTRA-Sim releases nodes, and report what never runs.

    A node runs once all its parents ran; a send completes on its own (ASTRA-Sim's sends are eager) and
    leaves a message under (src, dst, tag mod 5e8, size); a recv completes once such a message is there; the
    k-th collective of a group on a rank completes once every member reached its k-th collective of that
    group, counted in the order they become ready (lowest node id first among those ready together, as the
    engine and ASTRA-Sim issue them: collectives match by issue order, not by id); an INVALID or METADATA node
    completes without releasing its dependents. Sends and recvs only ever enable more, so what is left can
    never run: nodes waiting in a cross-rank cycle (rank 0 receives before it sends to rank 1, which receives
    before it sends to rank 0), or behind such nodes. Expects a workload whose other checks pass. What this
    does not model is time and the one communication slot per NPU (a blocked collective holding it); the
    engine's dry run does.
    """
    groups = {DEFAULT_GROUP: tuple(range(workload.npus))}
    groups.update({group_key(name): tuple(ranks) for name, ranks in workload.comm_groups.items()})
    ranks = [_RankPlay(graph) for graph in workload.graphs]
    messages: dict[tuple[int, int, int, int], int] = defaultdict(int)
    waiting: dict[tuple[int, int, int, int], list[tuple[int, int]]] = defaultdict(list)
    arrived: dict[tuple[str, int], set[int]] = defaultdict(set)  # (group, k) -> ranks whose k-th is ready
    blocked: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    # A heap of (node id, rank, node index): on every rank, lower ids are played first among the nodes ready.
    work: list[tuple[int, int, int]] = [(p.nodes[i].id, r, i) for r, p in enumerate(ranks) for i in p.roots()]
    heapq.heapify(work)

    def complete(rank: int, index: int) -> None:
        play = ranks[rank]
        play.done[index] = True
        if play.nodes[index].type in (NodeType.INVALID_NODE, NodeType.METADATA_NODE):
            return
        for child in play.children[index]:
            play.pending[child] -= 1
            if play.pending[child] == 0:
                heapq.heappush(work, (play.nodes[child].id, rank, child))

    while work:
        _, rank, index = heapq.heappop(work)
        node = ranks[rank].nodes[index]
        if node.type == NodeType.COMM_SEND_NODE:
            key = (rank, node.comm_dst, node.comm_tag % TAG_MODULUS, node.comm_size)
            if waiting[key]:
                complete(*waiting[key].pop())
            else:
                messages[key] += 1
            complete(rank, index)
        elif node.type == NodeType.COMM_RECV_NODE:
            key = (node.comm_src, rank, node.comm_tag % TAG_MODULUS, node.comm_size)
            if messages[key]:
                messages[key] -= 1
                complete(rank, index)
            else:
                waiting[key].append((rank, index))
        elif node.type == NodeType.COMM_COLL_NODE and node.comm_type in SIMULATED_COLLECTIVES:
            play = ranks[rank]
            group = group_key(node.pg_name)
            instance = (group, play.collectives_ready[group])
            play.collectives_ready[group] += 1
            play.collective_of[index] = instance
            arrived[instance].add(rank)
            blocked[instance].append((rank, index))
            if len(arrived[instance]) == len(groups[instance[0]]):
                for member, member_index in blocked.pop(instance):
                    complete(member, member_index)
        else:
            complete(rank, index)
    problems = []
    for rank, play in enumerate(ranks):
        stuck = [i for i, done in enumerate(play.done) if not done]
        if not stuck:
            continue
        # Name the first node that is ready but waits on another rank: where the cycle passes through this rank.
        ready = [i for i in stuck if play.pending[i] == 0]
        first = ready[0] if ready else stuck[0]
        node = play.nodes[first]
        if node.type == NodeType.COMM_RECV_NODE:
            why = (
                f"recv {node.comm_src}->{rank} tag {node.comm_tag} size {node.comm_size} waits for a send rank "
                f"{node.comm_src} issues only after something that waits itself"
            )
        elif node.type == NodeType.COMM_COLL_NODE:
            group, k = play.collective_of[first]
            absent = [m for m in groups[group] if m not in arrived[(group, k)]]
            label = f"group {group!r}" if group else "the default group"
            why = f"collective #{k} of {label} waits for ranks [{name_first(absent, 8)}], which never reach it"
        else:
            why = "waits on nodes that never run"
        message = (
            f"{len(stuck)} node(s) never run, so replay stalls: a wait cycle across ranks through send/recv or "
            f"collectives; first: node {node.id} {node.name!r} {why}"
        )
        problems.append(Problem(rank, tuple(play.nodes[i].id for i in stuck), message))
    return problems


class _RankPlay:
    """One rank's nodes as indexes, for check_progress: parents left per node, children, collective ids."""

    def __init__(self, graph: Graph) -> None:
        self.nodes = graph.nodes
        index_of = {node.id: i for i, node in enumerate(graph.nodes)}
        self.pending = [0] * len(graph.nodes)
        self.children: list[list[int]] = [[] for _ in graph.nodes]
        self.done = [False] * len(graph.nodes)
        self.collective_of: dict[int, tuple[str, int]] = {}  # node index -> (group, k), once it is ready
        self.collectives_ready: Counter[str] = Counter()
        for i, node in enumerate(graph.nodes):
            parents = {index_of[d] for d in node.deps if d in index_of}
            self.pending[i] = len(parents)
            for parent in parents:
                self.children[parent].append(i)

    def roots(self) -> list[int]:
        return [i for i, count in enumerate(self.pending) if count == 0]
