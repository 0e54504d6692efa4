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
from llm_converter.perf import paused_gc

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


_NODE_TYPES = list(NodeType)

# Attribute records repeat across nodes (same sizes, tags, groups): decode each distinct one once.
_ATTRS_CACHE_LIMIT = 1 << 16
_NO_ATTRS: tuple = ((None,) * 10, None, ())


def node_from_message(message, path: Path | str = "", offset: int = 0) -> Node:
    """Convert a parsed ChakraProtoMsg.Node into a pipesim Node."""
    node_type = message.type
    if not 0 <= node_type <= 7:  # proto3 enums are open: a negative type parses too
        raise PipesimError(f"{path}: byte {offset}: node {message.id} has unknown type {node_type} (valid: 0..7)")
    node = Node(
        message.id,
        message.name,
        _NODE_TYPES[node_type],
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
    _apply_attributes(node, _decode_attributes(message.attr))
    return node


_ATTRIBUTE_INDEX = {name: index for index, name in enumerate(CANONICAL_KINDS)}
_ATTRIBUTE_CACHE: dict[bytes, tuple[int, object, tuple[str, bytes] | None]] = {}


def _decode_attribute(attr) -> tuple[int, object, tuple[str, bytes], bool]:
    """(index in CANONICAL_KINDS or -1, value read, (name, raw record), whether to keep the record verbatim)."""
    name = attr.name
    canonical = CANONICAL_KINDS.get(name)
    kind = attr.WhichOneof("value")
    raw = (name, attr.SerializeToString())
    if canonical is None:
        return -1, None, raw, True
    index = _ATTRIBUTE_INDEX[name]
    if kind != canonical:
        # Keep the record as written; still read its value where ASTRA-Sim would.
        if name == "pg_name" and kind == "bytes_val":
            return index, attr.bytes_val.decode(errors="replace"), raw, True
        if canonical not in ("string_val", "bool_list") and kind in _INTEGER_KINDS:
            return index, _coerce(name, getattr(attr, kind)), raw, True
        return -1, None, raw, True
    if name == "involved_dim":
        return index, tuple(attr.bool_list.values), raw, False
    return index, getattr(attr, kind), raw, False


def _combine(items) -> tuple:
    """(is_cpu_op, num_ops, ..., pg_name, involved_dim, extras): the first occurrence of a name wins, as in
    ASTRA-Sim's feeder_v3. A known name given more than once keeps every occurrence verbatim in the extras,
    so a rewrite loses none of them (the validator reports the duplicate)."""
    values: list[object] = [None] * len(CANONICAL_KINDS)
    extras = []
    known = [raw[0] for _, _, raw, _ in items if raw[0] in CANONICAL_KINDS]
    repeated = {name for name in known if known.count(name) > 1} if len(known) > len(set(known)) else ()
    for index, value, raw, keep in items:
        if index >= 0 and values[index] is None:
            values[index] = value
        if keep or raw[0] in repeated:
            extras.append(raw)
    # Node's fields after start_time_micros follow CANONICAL_KINDS' order up to pg_name: pass them positionally.
    return tuple(values[:-1]), values[-1], tuple(extras)


def _decode_attributes(attrs) -> tuple:
    return _combine([_decode_attribute(attr) for attr in attrs])


_SECTION_CACHE: dict[bytes, tuple] = {}


def _decode_attribute_section(section: bytes) -> tuple | None:
    """Decode the trailing `attr` records of a node. Whole sections repeat (compute and collective nodes) and
    single records repeat (sizes, tags, groups): both are memoised."""
    decoded = _SECTION_CACHE.get(section)
    if decoded is not None:
        return decoded
    items = []
    pos = 0
    size = len(section)
    while pos < size:
        if section[pos] != 0x52:
            return None
        length, body = _varint_at(section, pos + 1)
        end = body + length
        if end > size:
            return None
        record = section[pos:end]
        item = _ATTRIBUTE_CACHE.get(record)
        if item is None:
            attr = schema.AttributeProto()
            try:
                attr.ParseFromString(section[body:end])
            except DecodeError:
                return None
            item = _decode_attribute(attr)
            if len(_ATTRIBUTE_CACHE) < _ATTRS_CACHE_LIMIT:
                _ATTRIBUTE_CACHE[record] = item
        items.append(item)
        pos = end
    decoded = _combine(items)
    if len(_SECTION_CACHE) < _ATTRS_CACHE_LIMIT:
        _SECTION_CACHE[section] = decoded
    return decoded


def _apply_attributes(node: Node, decoded: tuple) -> None:
    values, involved_dim, extras = decoded
    (
        node.is_cpu_op,
        node.num_ops,
        node.tensor_size,
        node.comm_type,
        node.comm_src,
        node.comm_dst,
        node.comm_tag,
        node.comm_size,
        node.comm_priority,
        node.pg_name,
    ) = values
    if involved_dim is not None:
        node.involved_dim = list(involved_dim)  # cached as a tuple: each node gets its own list
    if extras:
        node.extra_attrs = list(extras)


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _packed_values(buf: bytes, pos: int, end: int) -> list[int]:
    if end > len(buf):
        raise IndexError("packed field overruns")
    chunk = buf[pos:end]
    if chunk.isascii():  # every byte < 0x80: each value is one byte
        return list(chunk)
    values = []
    while pos < end:
        value, pos = _varint_at(buf, pos)
        values.append(value)
    if pos != end:
        raise IndexError("packed field overruns")
    return values


def decode_node_fast(payload: bytes) -> Node | None:
    """Decode a node written in canonical field order (id, name, type, deps, times, then attributes);
    None when the record has anything else (inputs/outputs, odd order, unknown fields) or is malformed,
    and the caller falls back to protobuf's parser, which also gives the error."""
    node_id = node_type = duration = start = 0
    name = ""
    data_deps: list[int] = []
    ctrl_deps: list[int] = []
    pos = 0
    size = len(payload)
    try:
        while pos < size:
            tag = payload[pos]
            if tag == 0x52:
                break
            # Every field here starts with a varint; most are one or two bytes, so decode those inline.
            byte = payload[pos + 1]
            if byte < 0x80:
                value = byte
                pos += 2
            else:
                second = payload[pos + 2]
                if second < 0x80:
                    value = (byte & 0x7F) | (second << 7)
                    pos += 3
                else:
                    value, pos = _varint_at(payload, pos + 1)
            if tag == 0x08:
                node_id = value
            elif tag == 0x12:
                name = payload[pos : pos + value].decode()
                pos += value
            elif tag == 0x18:
                node_type = value
            elif tag == 0x2A:
                end = pos + value
                if value == 1 and payload[pos] < 0x80:
                    data_deps.append(payload[pos])
                else:
                    data_deps += _packed_values(payload, pos, end)
                pos = end
            elif tag == 0x38:
                duration = value
            elif tag == 0x22:
                end = pos + value
                ctrl_deps += _packed_values(payload, pos, end)
                pos = end
            elif tag == 0x30:
                start = value
            else:
                return None
    except (IndexError, UnicodeDecodeError):
        return None
    if pos > size or node_type > 7:
        return None
    decoded = _decode_attribute_section(payload[pos:]) if pos < size else _NO_ATTRS
    if decoded is None:
        return None
    values, involved_dim, extras = decoded
    node = Node(node_id, name, _NODE_TYPES[node_type], data_deps, ctrl_deps, duration, start, *values)
    if involved_dim is not None:
        node.involved_dim = list(involved_dim)
    if extras:
        node.extra_attrs = list(extras)
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
        node = decode_node_fast(payload)
        if node is not None:
            graph.nodes.append(node)
            continue
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


def prefix_hint(prefix: Path | str) -> str:
    """For a prefix that is a folder of traces (`traces/x` instead of `traces/x/llm`): "; give the prefix ..."."""
    folder = Path(prefix)
    if not folder.is_dir():
        return ""
    prefixes = sorted(str(path)[: -len(".0.et")] for path in folder.glob("*.0.et") if path.is_file())
    if not prefixes:
        return f"; {folder} is a folder holding no <prefix>.0.et file"
    return f"; {folder} is a folder: give the prefix of its files, {' or '.join(prefixes[:3])}"


def read_workload(prefix: Path | str, npus: int | None = None) -> Workload:
    """Read `<prefix>.0.et` .. `<prefix>.<npus-1>.et` (npus defaults to the files present)."""
    if npus is None:
        npus = count_ranks(prefix)
        if npus == 0:
            raise PipesimError(
                f"{et_path(prefix, 0)}: no such file (the workload prefix names no .et files){prefix_hint(prefix)}"
            )
    with paused_gc():
        return Workload([read_graph(et_path(prefix, rank), rank) for rank in range(npus)])
