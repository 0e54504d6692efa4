"""The workload validator: each rule fires on a hand-made broken case, and real traces pass."""

from __future__ import annotations

import pytest

from llm_converter.chakra.reader import read_workload
from llm_converter.chakra.validator import find_cycle_nodes, validate_workload
from llm_converter.graph import CollectiveType, Graph, GraphBuilder, Node, NodeType, Workload
from tests.conftest import CONFORMANCE, conformance_cases


def _pipe(tag_recv: int = 7, size_recv: int = 1024) -> Workload:
    a = GraphBuilder(rank=0)
    a.send("COMM_SEND_NODE_s", dst=1, tag=7, size=1024, deps=[a.comp("COMP_NODE_f", 5)])
    b = GraphBuilder(rank=1)
    b.comp("COMP_NODE_g", 5, deps=[b.recv("COMM_RECV_NODE_r", src=0, tag=tag_recv, size=size_recv)])
    return Workload([a.graph, b.graph])


def _messages(workload: Workload) -> list[str]:
    return [str(p) for p in validate_workload(workload).problems]


def test_matched_pipeline_is_ok() -> None:
    report = validate_workload(_pipe())
    assert report.ok, report.problems
    assert report.summary() == "ok: 2 ranks, 4 nodes"


def test_send_without_matching_recv() -> None:
    messages = _messages(_pipe(size_recv=2048))
    assert messages == [
        "rank 0 node 1: 1 send(s) 0->1 tag 7 size 1024 but 0 matching recv(s) on rank 1",
        "rank 1 node 0: 1 recv(s) 0->1 tag 7 size 2048 but 0 matching send(s) on rank 0",
    ]


def test_tags_compare_modulo_5e8() -> None:
    assert validate_workload(_pipe(tag_recv=7 + 500_000_000)).ok


def test_duplicate_ids_dangling_deps_cycle_and_no_root() -> None:
    graph = Graph(
        rank=0,
        nodes=[
            Node(0, "COMP_NODE_a", NodeType.COMP_NODE, [2]),
            Node(1, "COMP_NODE_b", NodeType.COMP_NODE, [0]),
            Node(2, "COMP_NODE_c", NodeType.COMP_NODE, [1]),
            Node(2, "COMP_NODE_d", NodeType.COMP_NODE, [9]),
        ],
    )
    messages = _messages(Workload([graph]))
    assert "rank 0 node 2: duplicate node ids; ids must be unique within a file" in messages
    assert "rank 0 node 2: depends on missing node id(s) [9]; ASTRA-Sim aborts at load" in messages
    assert any(m.startswith("rank 0: no node without dependencies") for m in messages)
    assert find_cycle_nodes(Graph(0, graph.nodes[:3])) == [0, 1, 2]


def test_missing_and_wrong_attributes() -> None:
    graph = Graph(
        rank=0,
        nodes=[
            Node(0, "COMM_SEND_NODE_x", NodeType.COMM_SEND_NODE, comm_dst=1, comm_size=8),
            Node(1, "COMM_COLL_NODE_y", NodeType.COMM_COLL_NODE, comm_type=int(CollectiveType.GATHER), comm_size=8),
            Node(2, "COMM_RECV_NODE_z", NodeType.COMM_RECV_NODE, comm_src=1, comm_tag=1, comm_size=0),
        ],
    )
    messages = _messages(Workload([graph, Graph(1, [Node(0, "COMP_NODE", NodeType.COMP_NODE)])]))
    assert "rank 0 node 0: COMM_SEND_NODE 'COMM_SEND_NODE_x' lacks required attribute comm_tag" in messages
    assert "rank 0 node 1: collective GATHER is not supported by ASTRA-Sim" in messages
    assert "rank 0 node 2: comm_size 0 must be > 0" in messages


def _collective_ranks(sizes: list[list[int]], groups: dict[str, list[int]], pg: str | None) -> Workload:
    graphs = []
    for rank, per_rank in enumerate(sizes):
        builder = GraphBuilder(rank=rank)
        for size in per_rank:
            builder.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, size, pg_name=pg)
        graphs.append(builder.graph)
    return Workload(graphs, groups)


def test_collective_sequences_must_agree_within_a_group() -> None:
    ok = _collective_ranks([[8, 16], [8, 16]], {}, None)
    assert validate_workload(ok).ok
    bad = _collective_ranks([[8, 16], [8]], {}, None)
    assert _messages(bad) == [
        "rank 1: collective #1 in the default group (all ranks) differs from rank 0: "
        "nothing vs ALL_REDUCE 16 B (1 vs 2 collectives)"
    ]
    grouped = _collective_ranks([[8], [8], [4], [4]], {}, None)
    assert not validate_workload(grouped).ok  # all four ranks form the default group


def test_collective_in_unknown_group_and_non_member() -> None:
    workload = _collective_ranks([[8], [8]], {"1": [0, 1]}, "2")
    assert "pg_name '2' is not a group of the comm-group file" in _messages(workload)[0]
    workload = _collective_ranks([[8], [8], []], {"1": [0, 2]}, "1")
    messages = _messages(workload)
    assert "rank 1 node 0: collective in group '1' [0, 2], which excludes this rank" in messages


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_workloads_validate(case: str) -> None:
    from astra_driver.astra_config import load_comm_groups

    workload = read_workload(CONFORMANCE / case / "workload")
    groups = CONFORMANCE / case / "comm_groups.json"
    if groups.is_file():
        workload.comm_groups = load_comm_groups(groups)
    report = validate_workload(workload)
    assert report.ok, [str(p) for p in report.problems]


def test_duplicate_known_attribute_is_reported_as_such() -> None:
    from llm_converter.chakra import schema

    records = [schema.AttributeProto(name="num_ops", int64_val=v).SerializeToString() for v in (5, 7)]
    node = Node(0, "COMP_NODE_x", NodeType.COMP_NODE, num_ops=5, extra_attrs=[("num_ops", r) for r in records])
    assert _messages(Workload([Graph(rank=0, nodes=[node])])) == [
        "rank 0 node 0: attribute num_ops appears 2 times; ASTRA-Sim's feeder_v3 reads the first, the legacy "
        "feeder the last: keep one"
    ]


def test_noncanonical_kind_is_still_reported() -> None:
    from llm_converter.chakra import schema

    raw = schema.AttributeProto(name="comm_size", uint64_val=64).SerializeToString()
    node = Node(0, "COMM_COLL_NODE_x", NodeType.COMM_COLL_NODE, comm_type=0, comm_size=64)
    node.extra_attrs = [("comm_size", raw)]
    assert _messages(Workload([Graph(rank=0, nodes=[node])])) == [
        "rank 0 node 0: attribute comm_size has a non-canonical kind; write it as int64_val"
    ]


# ---------------------------------------------------------------------------------------------------------
# Issue 6: short lines, group ids as integers, pg_name without groups, and "ok" meaning it runs to completion
# ---------------------------------------------------------------------------------------------------------


def test_a_node_with_100000_missing_dependencies_gives_a_short_line() -> None:
    graph = Graph(0, [Node(0, "root", NodeType.COMP_NODE), Node(1, "x", NodeType.COMP_NODE, list(range(10, 100_010)))])
    messages = _messages(Workload([graph]))
    assert messages == [
        "rank 0 node 1: depends on missing node id(s) [10, 11, 12, 13, 14 and 99995 more]; ASTRA-Sim aborts at load"
    ]


def _one_collective_per_rank(pg_names: list[str | None], groups: dict[str, list[int]]) -> Workload:
    graphs = []
    for rank, pg in enumerate(pg_names):
        builder = GraphBuilder(rank=rank)
        builder.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 64, pg_name=pg)
        graphs.append(builder.graph)
    return Workload(graphs, groups)


def test_group_ids_compare_as_integers_as_astra_sim_reads_them() -> None:
    # stoi("01") == 1: both spellings name group 1, on the pg_name side and on the groups side.
    assert validate_workload(_one_collective_per_rank(["01", "1"], {"1": [0, 1]})).ok
    assert validate_workload(_one_collective_per_rank(["1", "1"], {"001": [0, 1]})).ok
    for bad in ("²", "١", "1a", " 1", "99999999999"):
        messages = _messages(_one_collective_per_rank([bad, bad], {"1": [0, 1]}))
        assert messages[0] == (
            f"rank 0 node 0: pg_name {bad!r} must be a decimal integer (ASCII digits, at most 2147483647): a group id"
        )
        assert len(messages) == 2  # one per rank, not repeated as an unknown group
    assert "is group 0 to ASTRA-Sim" in _messages(_one_collective_per_rank(["00", "00"], {"1": [0, 1]}))[0]


def test_pg_name_without_any_groups_file_is_a_problem() -> None:
    """convert wrote TP collectives with pg_name but no groups file: replay refuses it, so validate must."""
    messages = _messages(_one_collective_per_rank(["1", "1", "2", "2"], {}))
    assert messages == [
        "rank 0 node 0: pg_name '1' names no communicator group: no comm-group file was given, or it defines no "
        "groups (--comm-group-configuration, or comm_groups.json beside the traces); 2 pg_name(s) ('1', '2') on 4 "
        "rank(s) need one"
    ]
    with_file = _messages(_one_collective_per_rank(["1", "1", "2", "3"], {"1": [0, 1]}))
    assert with_file == [
        "rank 2 node 0: pg_name '2' is not a group of the comm-group file (used on ranks 2)",
        "rank 3 node 0: pg_name '3' is not a group of the comm-group file (used on ranks 3)",
    ]
    assert validate_workload(_one_collective_per_rank(["0", ""], {})).ok  # the default group needs no file


def test_invalid_node_with_dependents_never_releases_them() -> None:
    graph = Graph(0, [Node(0, "skipped", NodeType.INVALID_NODE), Node(1, "after", NodeType.COMP_NODE, [0])])
    assert _messages(Workload([graph])) == [
        "rank 0 node 0: INVALID_NODE (type 0) with dependents: ASTRA-Sim skips it and never issues them; give it a type"
    ]
    leaf = Graph(0, [Node(0, "work", NodeType.COMP_NODE), Node(1, "skipped", NodeType.INVALID_NODE, [0])])
    assert validate_workload(Workload([leaf])).ok  # nothing waits on it


def _recv_then_send(rank: int, peer: int) -> Graph:
    builder = GraphBuilder(rank)
    builder.send("send", dst=peer, tag=5, size=64, deps=[builder.recv("recv", src=peer, tag=5, size=64)])
    return builder.graph


def test_cross_rank_wait_cycle_through_send_recv_matching() -> None:
    """Each rank receives before it sends to the other: every pairing matches, yet nothing ever runs."""
    report = validate_workload(Workload([_recv_then_send(0, 1), _recv_then_send(1, 0)]))
    assert [str(p) for p in report.problems] == [
        f"rank {rank} nodes 0,1: 2 node(s) never run, so replay stalls: a wait cycle across ranks through send/recv "
        f"or collectives; first: node 0 'recv' recv {1 - rank}->{rank} tag 5 size 64 waits for a send rank "
        f"{1 - rank} issues only after something that waits itself"
        for rank in (0, 1)
    ]
    # The same pairs with one rank sending first run to completion.
    first = GraphBuilder(0)
    first.recv("recv", src=1, tag=5, size=64, deps=[first.send("send", dst=1, tag=5, size=64)])
    assert validate_workload(Workload([first.graph, _recv_then_send(1, 0)])).ok


def test_collective_waiting_on_a_recv_behind_the_other_collective() -> None:
    """Rank 0's all-reduce waits for a recv whose send rank 1 issues only after its own all-reduce."""
    a, b = GraphBuilder(0), GraphBuilder(1)
    a.collective("ar", CollectiveType.ALL_REDUCE, 64, deps=[a.recv("recv", src=1, tag=1, size=8)])
    b.send("send", dst=0, tag=1, size=8, deps=[b.collective("ar", CollectiveType.ALL_REDUCE, 64)])
    messages = _messages(Workload([a.graph, b.graph]))
    assert len(messages) == 2
    assert "first: node 0 'recv' recv 1->0 tag 1 size 8 waits for a send rank 1" in messages[0]
    assert (
        "first: node 0 'ar' collective #0 of the default group waits for ranks [0], which never reach it"
        in (messages[1])
    )


def test_send_to_its_own_rank_is_refused_as_replay_refuses_it() -> None:
    builder = GraphBuilder(0)
    builder.recv("recv", src=0, tag=1, size=8, deps=[builder.send("send", dst=0, tag=1, size=8)])
    assert _messages(Workload([builder.graph, GraphBuilder(1).graph])) == [
        "rank 1: the file has no nodes; ASTRA-Sim aborts at load",
        "rank 0 node 0: send to its own rank; replay refuses it (a peer must be another NPU)",
        "rank 0 node 1: recv from its own rank; replay refuses it (a peer must be another NPU)",
    ]


def test_collectives_match_in_the_order_they_become_ready_as_the_engine_issues_them() -> None:
    """Rank 0's first all-reduce in the file waits for its second one: ASTRA-Sim (and the engine) match by issue
    order, so rank 0's second pairs with rank 1's first and both ranks finish. Not a wait cycle."""
    from astra_driver.astra_config import AstraConfig, NetworkConfig
    from astra_driver.engine import simulate

    a = Graph(0, [Node(0, "ar_late", NodeType.COMM_COLL_NODE, [2], comm_type=0, comm_size=64)])
    a.nodes.append(Node(1, "ar_early", NodeType.COMM_COLL_NODE, comm_type=0, comm_size=64))
    a.nodes.append(Node(2, "between", NodeType.COMP_NODE, [1], duration_micros=1))
    b = GraphBuilder(1)
    b.collective("ar", CollectiveType.ALL_REDUCE, 64, deps=[b.collective("ar", CollectiveType.ALL_REDUCE, 64)])
    workload = Workload([a, b.graph])
    assert validate_workload(workload).ok
    config = AstraConfig(network=NetworkConfig(["Ring"], [2], [50.0], [500.0]))
    assert min(simulate(workload, config).finish_ns) > 1000  # every rank finishes, after the 1 us compute
