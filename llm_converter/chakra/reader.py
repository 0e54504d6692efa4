"""Chakra `.et` reader: streams records, checks framing, converts them to pipesim graph nodes.

Errors are one line naming the file and the byte offset: empty file, gzip, a truncated record, a record
protobuf cannot parse, an unknown node type, a zero-length node record (Chakra's Python reader stops there).
Attribute kinds are read like ASTRA-Sim's feeder_v3: any integer or bool kind for integer attributes, string
or bytes for pg_name. A known attribute stored with a non-canonical kind keeps its raw record (so writing
the graph back reproduces it) and is reported by the validator.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from llm_converter.chakra import schema
from llm_converter.chakra.writer import et_path
from llm_converter.errors import PipesimError
from llm_converter.graph import Graph, Node, NodeType, Workload

_GZIP_MAGIC = b"\x1f\x8b"
_MAX_RECORD = 1 << 31

_INTEGER_KINDS = frozenset(
    {
        "int32_val",
        "int64_val",
        "uint32_val",
        "uint64_val",
        "sint32_val",
        "sint64_val",
        "fixed32_val",
        "fixed64_val",
        "sfixed32_val",
        "sfixed64_val",
        "bool_val",
    }
)

# Known attribute -> (Node field, canonical oneof kind).
CANONICAL_KINDS: dict[str, str] = {
    "is_cpu_op": "bool_val",
    "num_ops": "int64_val",
    "tensor_size": "uint64_val",
    "comm_type": "int64_val",
    "comm_src": "int32_val",
    "comm_dst": "int32_val",
    "comm_tag": "int32_val",
    "comm_size": "int64_val",
    "comm_priority": "int32_val",
    "pg_name": "string_val",
    "involved_dim": "bool_list",
}


def iter_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield (offset of the length prefix, payload) for every record of a file."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file (check the workload prefix and the rank count)") from None
    except OSError as exc:
        raise PipesimError(f"{path}: cannot open ({exc.strerror})") from None
    with handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise PipesimError(f"{path}: empty file, byte 0: a Chakra trace needs a GlobalMetadata record") from None
        with data:
            if data[:2] == _GZIP_MAGIC:
                raise PipesimError(
                    f"{path}: byte 0: gzip-compressed; ASTRA-Sim reads plain .et files (gunzip it first)"
                )
            size = len(data)
            pos = 0
            while pos < size:
                start = pos
                length = 0
                shift = 0
                while True:
                    if pos >= size:
                        raise PipesimError(f"{path}: byte {start}: truncated length prefix at end of file")
                    byte = data[pos]
                    pos += 1
                    length |= (byte & 0x7F) << shift
                    if byte < 0x80:
                        break
                    shift += 7
                    if shift > 35:
                        raise PipesimError(f"{path}: byte {start}: length prefix over 5 bytes (not a Chakra trace)")
                if length >= _MAX_RECORD:
                    raise PipesimError(f"{path}: byte {start}: record length {length} over 2 GiB (not a Chakra trace)")
                end = pos + length
                if end > size:
                    raise PipesimError(
                        f"{path}: byte {start}: record of {length} bytes runs past the end of the file "
                        f"({size - pos} bytes left): the file is truncated"
                    )
                yield start, data[pos:end]
                pos = end


def _value(attr, kind: str):
    return getattr(attr, kind)


def node_from_message(message, path: Path | str = "", offset: int = 0) -> Node:
    """Convert a parsed ChakraProtoMsg.Node into a pipesim Node."""
    node_type = message.type
    if node_type > 7:
        raise PipesimError(f"{path}: byte {offset}: node {message.id} has unknown type {node_type} (valid: 0..7)")
    node = Node(
        message.id,
        message.name,
        NodeType(node_type),
        list(message.data_deps),
        list(message.ctrl_deps),
        duration_micros=message.duration_micros,
        start_time_micros=message.start_time_micros,
        is_cpu_op=None,
    )
    if message.HasField("inputs"):
        node.inputs = message.inputs.SerializeToString()
    if message.HasField("outputs"):
        node.outputs = message.outputs.SerializeToString()
    for attr in message.attr:
        name = attr.name
        canonical = CANONICAL_KINDS.get(name)
        kind = attr.WhichOneof("value")
        if canonical is None:
            node.extra_attrs.append((name, attr.SerializeToString()))
            continue
        if kind != canonical:
            # Keep the record as written; still read its value where ASTRA-Sim would.
            node.extra_attrs.append((name, attr.SerializeToString()))
            if name == "pg_name" and kind == "bytes_val":
                node.pg_name = attr.bytes_val.decode(errors="replace")
            elif canonical not in ("string_val", "bool_list") and kind in _INTEGER_KINDS:
                setattr(node, name, _coerce(name, getattr(attr, kind)))
            continue
        if name == "involved_dim":
            node.involved_dim = list(attr.bool_list.values)
        else:
            setattr(node, name, getattr(attr, kind))
    return node


def _coerce(name: str, value: int | bool) -> int | bool:
    if name == "is_cpu_op":
        return bool(value)
    return int(value)


def read_graph(path: Path | str, rank: int | None = None) -> Graph:
    """Read one `.et` file into a Graph (rank defaults to the number in `<prefix>.<rank>.et`)."""
    path = Path(path)
    if rank is None:
        rank = _rank_from_name(path)
    records = iter_records(path)
    first = next(records, None)
    if first is None:
        raise PipesimError(f"{path}: empty file, byte 0: a Chakra trace needs a GlobalMetadata record")
    metadata = schema.GlobalMetadata()
    try:
        metadata.ParseFromString(first[1])
    except DecodeError:
        raise PipesimError(f"{path}: byte 0: the GlobalMetadata record does not parse (not a Chakra trace)") from None
    graph = Graph(rank=rank, version=metadata.version)
    graph.metadata_attrs = [attr.SerializeToString() for attr in metadata.attr]
    message = schema.Node()
    for offset, payload in records:
        if not payload:
            raise PipesimError(
                f"{path}: byte {offset}: zero-length node record; Chakra's Python reader stops here and drops "
                "every later node (never write an all-default node)"
            )
        try:
            message.ParseFromString(payload)
        except DecodeError:
            raise PipesimError(f"{path}: byte {offset}: node record does not parse (corrupt, or not Chakra)") from None
        graph.nodes.append(node_from_message(message, path, offset))
    return graph


def _rank_from_name(path: Path) -> int:
    stem = path.name[:-3] if path.name.endswith(".et") else path.name
    tail = stem.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def count_ranks(prefix: Path | str) -> int:
    """How many consecutive `<prefix>.<k>.et` files exist from k = 0."""
    rank = 0
    while et_path(prefix, rank).is_file():
        rank += 1
    return rank


def read_workload(prefix: Path | str, npus: int | None = None) -> Workload:
    """Read `<prefix>.0.et` .. `<prefix>.<npus-1>.et` (npus defaults to the files present)."""
    if npus is None:
        npus = count_ranks(prefix)
        if npus == 0:
            raise PipesimError(f"{prefix}.0.et: no such file (the workload prefix names no .et files)")
    return Workload([read_graph(et_path(prefix, rank), rank) for rank in range(npus)])
