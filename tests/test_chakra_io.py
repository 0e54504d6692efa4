"""Chakra .et writer and reader: byte-exact against protobuf and the spec, loss-free on real traces."""

from __future__ import annotations

import gzip
import random

import pytest

from llm_converter.chakra import schema
from llm_converter.chakra.reader import read_graph, read_workload
from llm_converter.chakra.writer import encode_graph, encode_node, et_path, varint, write_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Graph, GraphBuilder, Node, NodeType, Workload
from tests.conftest import CONFORMANCE, conformance_cases

# CHAKRA_ET_SPEC section 7: the 178 bytes of pipe.0.et (NPU 0 computes, then sends 1 MiB to NPU 1).
SPEC_PIPE0 = bytes.fromhex(
    """
    07 0a 05 30 2e 30 2e 34 45 12 0a 73 74 61 67 65 30 5f 66 77 64 18 04 38 64 52 0e 0a 09 69 73 5f
    63 70 75 5f 6f 70 d8 01 00 52 0f 0a 07 6e 75 6d 5f 6f 70 73 48 80 a8 d6 b9 07 52 12 0a 0b 74 65
    6e 73 6f 72 5f 73 69 7a 65 68 80 80 80 02 63 08 01 12 0f 73 74 61 67 65 30 5f 73 65 6e 64 5f 61
    63 74 18 05 2a 01 00 52 0e 0a 09 69 73 5f 63 70 75 5f 6f 70 d8 01 00 52 0c 0a 08 63 6f 6d 6d 5f
    73 72 63 38 00 52 0c 0a 08 63 6f 6d 6d 5f 64 73 74 38 01 52 0c 0a 08 63 6f 6d 6d 5f 74 61 67 38
    07 52 0f 0a 09 63 6f 6d 6d 5f 73 69 7a 65 48 80 80 40
    """
)


def _spec_pipe0() -> Graph:
    builder = GraphBuilder(rank=0)
    fwd = builder.comp("stage0_fwd", 100, num_ops=2_000_000_000, tensor_size=4_194_304)
    builder.send("stage0_send_act", dst=1, tag=7, size=1_048_576, deps=[fwd])
    return builder.graph


def test_spec_worked_example_bytes() -> None:
    assert encode_graph(_spec_pipe0()) == SPEC_PIPE0
    assert len(SPEC_PIPE0) == 178


def _random_node(rng: random.Random, node_id: int) -> Node:
    kind = rng.choice(list(NodeType)[2:])
    node = Node(node_id, f"n{node_id}" * rng.randint(0, 3), kind, is_cpu_op=rng.choice([None, False, True]))
    node.data_deps = rng.sample(range(max(node_id, 1)), min(node_id, rng.randint(0, 3)))
    node.ctrl_deps = [rng.randint(0, 300) for _ in range(rng.randint(0, 2))]
    node.duration_micros = rng.choice([0, 1, 127, 128, 10**12])
    node.start_time_micros = rng.choice([0, 5])
    if kind == NodeType.COMP_NODE:
        node.num_ops = rng.choice([None, 0, 10**15])
        node.tensor_size = rng.choice([None, 1, 2**40])
    if kind in (NodeType.COMM_SEND_NODE, NodeType.COMM_RECV_NODE):
        node.comm_src, node.comm_dst = rng.randint(0, 1000), rng.randint(0, 1000)
        node.comm_tag = rng.choice([0, 7, 2**31 - 1, -1])
        node.comm_size = rng.choice([1, 2**33])
    if kind == NodeType.COMM_COLL_NODE:
        node.comm_type = int(rng.choice(list(CollectiveType)))
        node.comm_size = rng.choice([1, 2**20])
        node.pg_name = rng.choice([None, "", "3"])
        node.involved_dim = rng.choice([None, [], [True, False, True]])
        node.comm_priority = rng.choice([None, -5, 3])
    return node


def _to_message(node: Node):
    """The same node built through protobuf's own API (independent of our encoder)."""
    message = schema.Node(
        id=node.id,
        name=node.name,
        type=int(node.type),
        data_deps=node.data_deps,
        ctrl_deps=node.ctrl_deps,
        duration_micros=node.duration_micros,
        start_time_micros=node.start_time_micros,
    )
    if node.is_cpu_op is not None:
        message.attr.add(name="is_cpu_op", bool_val=bool(node.is_cpu_op))
    for name, kind in (
        ("num_ops", "int64_val"),
        ("tensor_size", "uint64_val"),
        ("comm_type", "int64_val"),
        ("comm_src", "int32_val"),
        ("comm_dst", "int32_val"),
        ("comm_tag", "int32_val"),
        ("comm_size", "int64_val"),
        ("comm_priority", "int32_val"),
    ):
        value = getattr(node, name)
        if value is not None:
            message.attr.add(name=name, **{kind: value})
    if node.pg_name is not None:
        message.attr.add(name="pg_name", string_val=node.pg_name)
    if node.involved_dim is not None:
        attr = message.attr.add(name="involved_dim")
        attr.bool_list.SetInParent()
        attr.bool_list.values.extend(node.involved_dim)
    return message


def test_encoder_matches_protobuf_serializer() -> None:
    rng = random.Random(1)
    for node_id in range(400):
        node = _random_node(rng, node_id)
        assert encode_node(node) == _to_message(node).SerializeToString(), node


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**63, -1, -(2**31)])
def test_varint_matches_protobuf(value: int) -> None:
    message = schema.AttributeProto(int64_val=value) if value < 2**63 else schema.AttributeProto(uint64_val=value)
    assert message.SerializeToString()[1:] == varint(value)


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_traces_round_trip_byte_identical(case: str) -> None:
    paths = sorted((CONFORMANCE / case).glob("workload.*.et"))
    assert paths
    for path in paths:
        graph = read_graph(path)
        assert encode_graph(graph) == path.read_bytes()


def test_unknown_and_noncanonical_attributes_survive(tmp_path) -> None:
    node = schema.Node(id=3, name="COMM_SEND_NODE_x", type=5)
    node.attr.add(name="comm_dst", uint64_val=1)  # non-canonical kind: kept as written, value still read
    node.attr.add(name="comm_tag", int32_val=4)
    node.attr.add(name="comm_size", int64_val=64)
    node.attr.add(name="rf_id", int64_val=99)
    node.inputs.SetInParent()
    metadata = schema.GlobalMetadata(version="1.0.0")
    metadata.attr.add(name="schema", string_val="x")
    data = b""
    for message in (metadata, node):
        body = message.SerializeToString()
        data += varint(len(body)) + body
    path = tmp_path / "t.0.et"
    path.write_bytes(data)
    graph = read_graph(path)
    assert graph.version == "1.0.0"
    (read,) = graph.nodes
    assert (read.comm_dst, read.comm_tag, read.comm_size, read.inputs) == (1, 4, 64, b"")
    assert [name for name, _ in read.extra_attrs] == ["comm_dst", "rf_id"]
    reparsed = schema.Node()
    reparsed.ParseFromString(encode_node(read))
    assert {a.name: a.WhichOneof("value") for a in reparsed.attr} == {
        "comm_dst": "uint64_val",
        "comm_tag": "int32_val",
        "comm_size": "int64_val",
        "rf_id": "int64_val",
    }


def test_write_workload_names_files_by_rank(tmp_path) -> None:
    graphs = [GraphBuilder(rank=r).graph for r in range(3)]
    for graph in graphs:
        graph.nodes.append(Node(0, "COMP_NODE_x", NodeType.COMP_NODE, duration_micros=graph.rank + 1))
    paths = write_workload(tmp_path / "llm", Workload(graphs))
    assert [p.name for p in paths] == ["llm.0.et", "llm.1.et", "llm.2.et"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    back = read_workload(tmp_path / "llm")
    assert [g.nodes[0].duration_micros for g in back.graphs] == [1, 2, 3]


def test_all_default_node_is_refused() -> None:
    with pytest.raises(PipesimError, match="node id 0"):
        encode_graph(Graph(rank=0, nodes=[Node(0, "", NodeType.INVALID_NODE, is_cpu_op=None)]))


def _good_bytes() -> bytes:
    return encode_graph(_spec_pipe0())


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda b: b"", r"empty file, byte 0"),
        (lambda b: gzip.compress(b), r"byte 0: gzip"),
        (lambda b: b[:-5], r"byte 78: record of 99 bytes runs past the end"),
        (lambda b: b + b"\xff", r"byte 178: truncated length prefix"),
        (lambda b: b + b"\x00", r"byte 178: zero-length node record"),
        (lambda b: b + b"\x03\xff\xff\xff", r"byte 178: node record does not parse"),
        (lambda b: b + b"\xff\xff\xff\xff\xff\xff\x01", r"byte 178: length prefix over 5 bytes"),
        (lambda b: b + b"\x02\x18\x09", r"byte 178: node 0 has unknown type 9"),
    ],
)
def test_reader_rejects_bad_files(tmp_path, mutate, pattern) -> None:
    path = tmp_path / "bad.0.et"
    path.write_bytes(mutate(_good_bytes()))
    with pytest.raises(PipesimError, match=pattern) as info:
        read_graph(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_files_are_named(tmp_path) -> None:
    with pytest.raises(PipesimError, match=r"llm\.0\.et: no such file"):
        read_workload(tmp_path / "llm")
    with pytest.raises(PipesimError, match=r"llm\.1\.et: no such file"):
        (tmp_path / "llm.0.et").write_bytes(_good_bytes())
        read_workload(tmp_path / "llm", npus=2)
    assert et_path("a/b", 12).name == "b.12.et"


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("comm_tag", 2**31, r"comm_tag 2147483648 does not fit its Chakra kind int32_val"),
        ("comm_src", -(2**31) - 1, r"comm_src -2147483649 does not fit its Chakra kind int32_val"),
        ("comm_size", 2**63, r"comm_size 9223372036854775808 does not fit its Chakra kind int64_val"),
        ("tensor_size", -1, r"tensor_size -1 does not fit its Chakra kind uint64_val"),
        ("duration_micros", -5, r"cannot be negative"),
        ("id", -1, r"cannot be negative"),
        ("data_deps", [-3, 200], r"dependency id -3 is negative"),
    ],
)
def test_values_outside_their_field_are_refused(field: str, value, pattern: str) -> None:
    node = Node(7, "COMM_SEND_NODE_x", NodeType.COMM_SEND_NODE, comm_dst=1, comm_tag=1, comm_size=8, tensor_size=None)
    setattr(node, field, value)
    with pytest.raises(PipesimError, match=pattern) as info:
        encode_graph(Graph(rank=3, nodes=[node]))
    assert str(info.value).startswith(f"rank 3 node {node.id} 'COMM_SEND_NODE_x': ")


def test_int32_extremes_match_protobuf() -> None:
    for value in (2**31 - 1, -(2**31)):
        node = Node(1, "COMM_RECV_NODE_y", NodeType.COMM_RECV_NODE, comm_src=0, comm_tag=value, comm_size=8)
        assert encode_node(node) == _to_message(node).SerializeToString()


def _ranked(count: int, duration: int) -> Workload:
    graphs = [GraphBuilder(rank=r).graph for r in range(count)]
    for graph in graphs:
        graph.nodes.append(Node(0, "COMP_NODE_x", NodeType.COMP_NODE, duration_micros=duration))
    return Workload(graphs)


@pytest.mark.parametrize("error", [PipesimError("disk trouble"), KeyboardInterrupt()])
def test_write_workload_writes_all_ranks_or_none(tmp_path, monkeypatch, error) -> None:
    """`pipesim convert` of 128 ranks stopped by Ctrl-C half-way left its first 37 ranks beside an older run's
    other 91 (a workload that mixes two runs) and a `.llm.37.et.XXXX` temporary file."""
    import llm_converter.chakra.writer as writer

    write_workload(tmp_path / "llm", _ranked(4, 1))
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    real_encode = writer.encode_graph

    def fail_at_rank_2(graph: Graph) -> bytes:
        if graph.rank == 2:
            raise error
        return real_encode(graph)

    monkeypatch.setattr(writer, "encode_graph", fail_at_rank_2)
    with pytest.raises(type(error)):
        write_workload(tmp_path / "llm", _ranked(4, 7))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # no temporary file either


def test_a_signal_right_after_the_temporary_file_is_made_leaves_none(tmp_path, monkeypatch) -> None:
    """tempfile.mkstemp creates the file before it returns its name: a signal in between leaked `.x.et.XXXX`."""
    import os

    from llm_converter.io import write_atomic

    real_open = os.open

    def open_then_interrupted(*args, **kwargs):
        real_open(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "x.et", b"data")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_reports_an_unwritable_place(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PipesimError, match=r"file/llm\.0\.et: cannot write \(File exists\); choose another path"):
        write_workload(blocker / "llm", Workload([_spec_pipe0()]))


def _one_node_file(tmp_path, node) -> object:
    data = b""
    for message in (schema.GlobalMetadata(version="0.0.4"), node):
        body = message.SerializeToString()
        data += varint(len(body)) + body
    path = tmp_path / "t.0.et"
    path.write_bytes(data)
    return path


def test_negative_node_type_is_refused_not_read_as_a_collective(tmp_path) -> None:
    # proto3 enums are open: type -1 parses (a 10-byte varint), and must not index NodeType from the end.
    path = _one_node_file(tmp_path, schema.Node(id=3, name="x", type=-1))
    with pytest.raises(PipesimError, match=r"node 3 has unknown type -1"):
        read_graph(path)


def test_duplicate_known_attributes_survive_a_rewrite(tmp_path) -> None:
    node = schema.Node(id=1, name="COMP_NODE_y", type=4)
    node.attr.add(name="num_ops", int64_val=5)
    node.attr.add(name="tensor_size", uint64_val=8)
    node.attr.add(name="num_ops", int64_val=7)
    (read,) = read_graph(_one_node_file(tmp_path, node)).nodes
    assert (read.num_ops, read.tensor_size) == (5, 8)  # the first occurrence wins, as in feeder_v3
    reparsed = schema.Node()
    reparsed.ParseFromString(encode_node(read))
    assert sorted((a.name, a.WhichOneof("value"), getattr(a, a.WhichOneof("value"))) for a in reparsed.attr) == [
        ("num_ops", "int64_val", 5),
        ("num_ops", "int64_val", 7),
        ("tensor_size", "uint64_val", 8),
    ]


def test_a_signal_while_the_staging_folder_is_made_leaves_no_folder(tmp_path, monkeypatch) -> None:
    """mkdtemp creates the staging folder before it returns its name: a Ctrl-C in between left `.out.new-XXXX`
    beside the output. Now the signal waits until the name is known, and the folder is removed."""
    import os
    import signal
    import tempfile

    from llm_converter.io import write_folder_atomically

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp_then_signal(*args, **kwargs):
        made = real_mkdtemp(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    previous = signal.signal(signal.SIGINT, stop)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_then_signal)
    try:
        with pytest.raises(Stop):
            write_folder_atomically(tmp_path / "out", lambda folder: (folder / "a").write_text("x"))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []
