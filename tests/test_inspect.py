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
    assert capsys.readouterr().out.strip() == (
        "ok: 2 ranks, 8 nodes; a structural dry run finishes it (give ASTRA-Sim's config for the engine's dry run)"
    )


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


# ---------------------------------------------------------------------------------------------------------
# Issue 6: inspect --json is JSON Lines; validate checks what replay refuses and that the workload finishes
# ---------------------------------------------------------------------------------------------------------


def test_inspect_json_is_json_lines_and_every_node_has_its_id(tmp_path, capsys) -> None:
    from google.protobuf.json_format import MessageToDict

    from llm_converter.chakra import schema
    from llm_converter.chakra.writer import encode_node

    workload = _two_rank_workload()
    write_workload(tmp_path / "llm", workload)
    assert main(["inspect", str(tmp_path / "llm"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    documents = [json.loads(line) for line in lines]  # every line one JSON document
    assert len(documents) == 2 + 8  # per rank: its GlobalMetadata, then its nodes
    assert documents[0] == documents[6] == {"version": "0.0.4"}
    nodes = documents[1:6] + documents[7:]
    assert [n["id"] for n in nodes] == ["0", "1", "2", "3", "4", "0", "1", "2"]  # node 0 keeps its id
    # Otherwise exactly protobuf's JSON mapping (Chakra's jsonizer), field for field.
    for document, node in zip(nodes, workload.graphs[0].nodes + workload.graphs[1].nodes, strict=True):
        message = schema.Node()
        message.ParseFromString(encode_node(node))
        assert document == {"id": str(node.id), **MessageToDict(message)}


def _two_computes() -> Workload:
    graphs = []
    for rank in range(2):
        builder = GraphBuilder(rank)
        builder.comp("work", 5)
        graphs.append(builder.graph)
    return Workload(graphs)


def _write_configs(folder, npus: int = 2) -> None:
    from astra_driver.astra_config import AstraConfig, NetworkConfig
    from astra_driver.astra_files import write_astra_files

    write_astra_files(folder, AstraConfig(network=NetworkConfig(["Ring"], [npus], [50.0], [500.0])))


def test_validate_a_single_et_file(tmp_path, capsys) -> None:
    write_workload(tmp_path / "llm", _two_rank_workload())
    assert main(["validate", str(tmp_path / "llm.1.et")]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "ok: 1 rank, 3 nodes; rank 1 alone; pairings between ranks need the workload prefix"
    flag = ["--comm-group-configuration", str(tmp_path / "g.json")]
    assert main(["validate", str(tmp_path / "llm.1.et"), *flag]) == 2
    assert "--comm-group-configuration: checks a whole workload" in capsys.readouterr().err


def test_a_folder_or_a_missing_et_file_is_named_as_the_user_gave_it(tmp_path, capsys) -> None:
    """`pipesim inspect traces/x` (the folder) said "traces/x.0.et: no such file"; `inspect llm.5.et` (absent)
    said "llm.5.et.0.et: no such file". Now the folder gets the prefix inside it, the file its own name."""
    write_workload(tmp_path / "x" / "llm", _two_rank_workload())
    folder = tmp_path / "x"
    for verb in ("inspect", "validate"):
        assert main([verb, str(folder)]) == 2
        assert capsys.readouterr().err == (
            f"pipesim: error: {folder}.0.et: no such file (the workload prefix names no .et files); {folder} is a "
            f"folder: give the prefix of its files, {folder / 'llm'}\n"
        )
        assert main([verb, str(folder / "llm.5.et")]) == 2
        assert capsys.readouterr().err == (
            f"pipesim: error: {folder / 'llm.5.et'}: no such file (give an .et file, or the prefix of a workload's "
            "files)\n"
        )


def test_validate_runs_the_engine_with_the_config_beside_the_traces(tmp_path, capsys) -> None:
    write_workload(tmp_path / "llm", _two_computes())
    _write_configs(tmp_path)
    assert main(["validate", str(tmp_path / "llm")]) == 0
    out = capsys.readouterr().out.strip()
    # 5 us of compute on each rank: the dry run's finish is 5000 ns.
    assert out == (
        "ok: 2 ranks, 2 nodes; runs to completion on the builtin engine with the ASTRA-Sim config beside the "
        "traces (5000 ns)"
    )


def _comm_slot_deadlock() -> Workload:
    """Rank 0's all-reduce (lowest id, issued first) holds its one communication slot while it waits for rank 1,
    whose all-reduce waits for the send queued behind it. Every structural rule holds."""
    a, b = GraphBuilder(0), GraphBuilder(1)
    a.collective("ar", CollectiveType.ALL_REDUCE, 4096)
    a.send("send", dst=1, tag=1, size=64)
    b.collective("ar", CollectiveType.ALL_REDUCE, 4096, deps=[b.recv("recv", src=0, tag=1, size=64)])
    return Workload([a.graph, b.graph])


def test_validate_engine_dry_run_finds_what_the_structure_cannot(tmp_path, capsys) -> None:
    from llm_converter.chakra.validator import validate_workload

    assert validate_workload(_comm_slot_deadlock()).ok  # the structural dry run does not model the slot
    write_workload(tmp_path / "w" / "llm", _comm_slot_deadlock())
    assert main(["validate", str(tmp_path / "w" / "llm")]) == 0  # no config beside: structural only
    capsys.readouterr()
    _write_configs(tmp_path / "cfg")
    flags = [
        f"--{name}-configuration={tmp_path / 'cfg' / file}"
        for name, file in (("system", "system.json"), ("network", "network.yml"), ("remote-memory", "memory.json"))
    ]
    assert main(["validate", str(tmp_path / "w" / "llm"), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("workload: replay would stall (builtin engine dry run): simulation stalled")
    assert "rank 1 node 0 recv waits for a send 0->1 tag 1 size 64" in captured.out
    assert len(captured.err.splitlines()) == 1
    # One flag given, the others neither given nor beside the traces: say which.
    assert main(["validate", str(tmp_path / "w" / "llm"), flags[1]]) == 2
    assert "--system-configuration: not given and no system.json beside the traces" in capsys.readouterr().err


def test_validate_pg_name_needs_the_groups_file(tmp_path, capsys) -> None:
    graphs = []
    for rank in range(2):
        builder = GraphBuilder(rank)
        builder.collective("ar", CollectiveType.ALL_REDUCE, 4096, pg_name="1")
        graphs.append(builder.graph)
    write_workload(tmp_path / "llm", Workload(graphs))
    _write_configs(tmp_path)
    assert main(["validate", str(tmp_path / "llm")]) == 2  # as `convert` wrote TP traces: no groups file
    assert "pg_name '1' names no communicator group" in capsys.readouterr().err
    groups = tmp_path / "elsewhere.json"
    groups.write_text('{"01": [0, 1]}')  # "01" is group 1, as ASTRA-Sim's stoi reads it
    assert main(["validate", str(tmp_path / "llm"), "--comm-group-configuration", str(groups)]) == 0
    assert "runs to completion on the builtin engine" in capsys.readouterr().out
    (tmp_path / "comm_groups.json").write_text('{"1": [0, 1]}')
    assert main(["validate", str(tmp_path / "llm")]) == 0
    capsys.readouterr()


def test_validate_refuses_an_invalid_node_with_dependents(tmp_path, capsys) -> None:
    from llm_converter.graph import Graph, Node, NodeType

    graph = Graph(0, [Node(0, "skipped", NodeType.INVALID_NODE), Node(1, "after", NodeType.COMP_NODE, [0])])
    write_workload(tmp_path / "llm", Workload([graph, _two_computes().graphs[1]]))
    _write_configs(tmp_path)
    assert main(["validate", str(tmp_path / "llm")]) == 2
    assert "INVALID_NODE (type 0) with dependents" in capsys.readouterr().err


def test_validate_refuses_what_replay_refuses_for_the_config(tmp_path, capsys) -> None:
    """endpoint-delay 0 loads, but replay refuses it once a collective runs: so does validate."""
    graphs = []
    for rank in range(2):
        builder = GraphBuilder(rank)
        builder.collective("ar", CollectiveType.ALL_REDUCE, 4096)
        graphs.append(builder.graph)
    write_workload(tmp_path / "llm", Workload(graphs))
    _write_configs(tmp_path)
    system = json.loads((tmp_path / "system.json").read_text())
    (tmp_path / "system.json").write_text(json.dumps({**system, "endpoint-delay": 0}))
    assert main(["validate", str(tmp_path / "llm")]) == 2
    err = capsys.readouterr().err
    assert "replay would refuse it" in err and "endpoint-delay = 0" in err and str(tmp_path / "system.json") in err
