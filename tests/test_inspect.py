"""`pipesim inspect` / `pipesim validate`: summaries, critical path, JSON, DOT, GraphML, exit codes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from astra_driver.cli import main
from llm_converter.chakra import inspect as chakra_inspect
from llm_converter.chakra.writer import write_workload
from llm_converter.graph import CollectiveType, GraphBuilder, Workload


def _two_rank_workload() -> Workload:
    a = GraphBuilder(rank=0)
    x = a.comp("COMP_NODE_x", 10)
    y = a.comp("COMP_NODE_y", 30)
    z = a.comp("COMP_NODE_z", 5, deps=[x, y])
    ar = a.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 4096, deps=[z])
    a.send("COMM_SEND_NODE_s", dst=1, tag=3, size=1000, deps=[ar])
    a.graph.nodes[2].ctrl_deps = [0]
    b = GraphBuilder(rank=1)
    r = b.recv("COMM_RECV_NODE_r", src=0, tag=3, size=1000)
    ar_b = b.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 4096)
    b.comp("COMP_NODE_w", 7, deps=[r, ar_b])
    return Workload([a.graph, b.graph])


def test_summary_counts_bytes_and_critical_path() -> None:
    summary = chakra_inspect.summarize(_two_rank_workload().graphs[0])
    assert summary.nodes == 5
    assert summary.nodes_by_type == {"COMM_COLL_NODE": 1, "COMM_SEND_NODE": 1, "COMP_NODE": 3}
    assert summary.compute_us == 45
    assert summary.collective_bytes == 4096
    assert summary.bytes_sent == {1: 1000}
    assert summary.critical_path_us == 35  # y (30) then z (5)
    assert summary.critical_path == [1, 2, 3, 4]


def test_json_is_protobuf_json_mapping() -> None:
    text = chakra_inspect.to_json(_two_rank_workload().graphs[1])
    decoder = json.JSONDecoder()
    objects, pos = [], 0
    while pos < len(text):
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)
        while pos < len(text) and text[pos].isspace():
            pos += 1
    assert objects[0] == {"version": "0.0.4"}
    recv = objects[1]
    assert recv["type"] == "COMM_RECV_NODE"
    assert {"name": "comm_size", "int64Val": "1000"} in recv["attr"]
    assert {"name": "is_cpu_op", "boolVal": False} in recv["attr"]
    assert objects[3]["dataDeps"] == ["0", "1"]


def test_dot_and_graphml_edges() -> None:
    graph = _two_rank_workload().graphs[0]
    dot = chakra_inspect.to_dot(graph)
    assert "  0 -> 2;" in dot and "  0 -> 2 [arrowhead=tee];" in dot
    root = ET.fromstring(chakra_inspect.to_graphml(graph))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    edges = root.findall(".//g:edge", ns)
    assert len(edges) == 5  # 4 data deps + 1 control dep
    kinds = sorted(e.find("g:data", ns).text for e in edges)
    assert kinds.count("control") == 1


def test_cli_inspect_and_validate(tmp_path, capsys) -> None:
    prefix = tmp_path / "llm"
    write_workload(prefix, _two_rank_workload())
    assert main(["inspect", str(prefix)]) == 0
    out = capsys.readouterr().out
    assert "rank 0: 5 nodes" in out and "sends 1000 B to rank 1" in out and "receives 1000 B from rank 0" in out
    assert main(["inspect", str(tmp_path / "llm.1.et"), "--summary-json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["bytes_received"] == {"0": 1000}
    assert main(["validate", str(prefix)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 2 ranks, 8 nodes"


def test_cli_validate_fails_with_node_ids(tmp_path, capsys) -> None:
    workload = _two_rank_workload()
    workload.graphs[1].nodes[0].comm_size = 999
    write_workload(tmp_path / "llm", workload)
    assert main(["validate", str(tmp_path / "llm")]) == 2
    captured = capsys.readouterr()
    # The problems are the report, on stdout; stderr holds the one error line.
    assert "rank 0 node 4: 1 send(s) 0->1 tag 3 size 1000 but 0 matching recv(s) on rank 1" in captured.out
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("pipesim: error: ")


def test_cli_inspect_missing_prefix(tmp_path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "nothing.0.et: no such file" in capsys.readouterr().err


def test_graphml_of_a_prefix_is_one_document(tmp_path) -> None:
    write_workload(tmp_path / "llm", _two_rank_workload())
    assert main(["inspect", str(tmp_path / "llm"), "--graphml", "-o", str(tmp_path / "g.graphml")]) == 0
    root = ET.parse(tmp_path / "g.graphml").getroot()
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    graphs = root.findall("g:graph", ns)
    assert [g.get("id") for g in graphs] == ["rank0", "rank1"]
    assert len(graphs[1].findall("g:node", ns)) == 3
    assert graphs[1].find("g:edge", ns).get("source") == "r1n0"


def test_graphml_survives_control_characters_in_names() -> None:
    builder = GraphBuilder(rank=0)
    builder.comp("COMP_NODE_a\x01b<c>", 1)
    root = ET.fromstring(chakra_inspect.to_graphml(builder.graph))
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert root.find(".//g:node/g:data", ns).text == "COMP_NODE_a\\x01b<c>"
