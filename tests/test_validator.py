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
