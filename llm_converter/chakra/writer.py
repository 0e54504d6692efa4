"""Chakra `.et` writer: length-delimited GlobalMetadata then Node records, canonical attribute kinds.

The encoder is hand-rolled for speed (a serving run writes millions of nodes); its output is byte-identical
to protobuf's own SerializeToString of the same message (tests compare both), field order included.
Attribute order: is_cpu_op, num_ops, tensor_size, comm_type, comm_src, comm_dst, comm_tag, comm_size,
comm_priority, pg_name, involved_dim, then extra attributes verbatim.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_converter.errors import PipesimError
from llm_converter.graph import Graph, Node, Workload
from llm_converter.io import write_all_or_none, write_atomic

_SMALL_VARINTS = [bytes([v]) for v in range(128)]
# Traces repeat the same sizes, ids and op counts a lot: memoise encodings (bounded, so memory stays flat).
_VARINT_CACHE: dict[int, bytes] = {}
_CACHE_LIMIT = 1 << 17


_INT64_MIN, _UINT64_END = -(1 << 63), 1 << 64


def _encode_varint(value: int) -> bytes:
    if not _INT64_MIN <= value < _UINT64_END:
        raise ValueError(f"{value} does not fit 64 bits")
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint(value: int) -> bytes:
    """Unsigned LEB128; negative values are taken as their 64-bit two's complement (protobuf's int32/int64)."""
    cached = _VARINT_CACHE.get(value)
    if cached is None:
        cached = _encode_varint(value)
        if len(_VARINT_CACHE) < _CACHE_LIMIT:
            _VARINT_CACHE[value] = cached
    return cached


for _value in range(1 << 14):
    _VARINT_CACHE[_value] = _encode_varint(_value)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def _attr_prefix(name: str) -> bytes:
    encoded = name.encode()
    return b"\x0a" + varint(len(encoded)) + encoded


# Pre-encoded `name` part of each known attribute, and the value tags of the canonical kinds.
_IS_CPU_OP = _attr_prefix("is_cpu_op")
_NUM_OPS = _attr_prefix("num_ops")
_TENSOR_SIZE = _attr_prefix("tensor_size")
_COMM_TYPE = _attr_prefix("comm_type")
_COMM_SRC = _attr_prefix("comm_src")
_COMM_DST = _attr_prefix("comm_dst")
_COMM_TAG = _attr_prefix("comm_tag")
_COMM_SIZE = _attr_prefix("comm_size")
_COMM_PRIORITY = _attr_prefix("comm_priority")
_PG_NAME = _attr_prefix("pg_name")
_INVOLVED_DIM = _attr_prefix("involved_dim")
_INT32 = b"\x38"
_INT64 = b"\x48"
_UINT64 = b"\x68"
_BOOL = b"\xd8\x01"
_BOOL_LIST = b"\xe2\x01"
_STRING = b"\xea\x01"
_ATTR = b"\x52"

# Whole attribute records for the two is_cpu_op values (nearly every node carries one).
_IS_CPU_OP_RECORD = {
    value: _length_delimited(_ATTR, _IS_CPU_OP + _BOOL + (b"\x01" if value else b"\x00")) for value in (False, True)
}

KNOWN_ATTRIBUTES = frozenset(
    {
        "is_cpu_op",
        "num_ops",
        "tensor_size",
        "comm_type",
        "comm_src",
        "comm_dst",
        "comm_tag",
        "comm_size",
        "comm_priority",
        "pg_name",
        "involved_dim",
    }
)


# Node names repeat across TP ranks and iterations (COMP_NODE_qkv_proj_b3): keep their encoded field.
_NAME_FIELDS: dict[str, bytes] = {}
_TYPE_FIELD = [b"\x18" + bytes([t]) for t in range(8)]


def _packed(values: list[int]) -> bytes:
    """Packed uint64 values (dependency ids)."""
    if len(values) == 1 and values[0] >= 0:  # the common chain: one parent
        return varint(values[0])
    if all(0 <= v < 128 for v in values):
        return bytes(values)
    if min(values) < 0:
        raise ValueError(f"dependency id {min(values)} is negative (ids are uint64)")
    return b"".join(varint(v) for v in values)


# Known integer attributes in canonical order: `name` part + canonical value tag.
_INT_HEADS = {
    "num_ops": _NUM_OPS + _INT64,
    "tensor_size": _TENSOR_SIZE + _UINT64,
    "comm_type": _COMM_TYPE + _INT64,
    "comm_src": _COMM_SRC + _INT32,
    "comm_dst": _COMM_DST + _INT32,
    "comm_tag": _COMM_TAG + _INT32,
    "comm_size": _COMM_SIZE + _INT64,
    "comm_priority": _COMM_PRIORITY + _INT32,
}
_NUM_OPS_HEAD = _INT_HEADS["num_ops"]
_TENSOR_SIZE_HEAD = _INT_HEADS["tensor_size"]
_COMM_TYPE_HEAD = _INT_HEADS["comm_type"]
_COMM_SRC_HEAD = _INT_HEADS["comm_src"]
_COMM_DST_HEAD = _INT_HEADS["comm_dst"]
_COMM_TAG_HEAD = _INT_HEADS["comm_tag"]
_COMM_SIZE_HEAD = _INT_HEADS["comm_size"]
_COMM_PRIORITY_HEAD = _INT_HEADS["comm_priority"]


_ATTR_CACHE: dict[tuple[bytes, int], bytes] = {}
# Range of each integer attribute's canonical kind (int32, int64, uint64), checked once per distinct value.
_INT32_RANGE, _INT64_RANGE, _UINT64_RANGE = (-(1 << 31), 1 << 31), (_INT64_MIN, 1 << 63), (0, _UINT64_END)
_ATTR_RANGE = {
    head: (name, _INT32_RANGE if head.endswith(_INT32) else _UINT64_RANGE if head.endswith(_UINT64) else _INT64_RANGE)
    for name, head in _INT_HEADS.items()
}


def _attr(head: bytes, value: int) -> bytes:
    key = (head, value)
    record = _ATTR_CACHE.get(key)
    if record is None:
        name, (low, end) = _ATTR_RANGE[head]
        if not low <= value < end:
            kind = {_INT32_RANGE: "int32", _INT64_RANGE: "int64", _UINT64_RANGE: "uint64"}[(low, end)]
            raise ValueError(f"{name} {value} does not fit its Chakra kind {kind}_val")
        body = head + varint(value)
        record = b"\x52" + _SMALL_VARINTS[len(body)] + body  # every integer attribute body is < 128 bytes
        if len(_ATTR_CACHE) < _CACHE_LIMIT:
            _ATTR_CACHE[key] = record
    return record


def encode_attributes(node: Node) -> list[bytes]:
    """The node's attribute records (each `52 len AttributeProto`), in canonical order."""
    if node.extra_attrs:
        return _encode_attributes_with_extras(node)
    out: list[bytes] = []
    if node.is_cpu_op is not None:
        out.append(_IS_CPU_OP_RECORD[bool(node.is_cpu_op)])
    if node.num_ops is not None:
        out.append(_attr(_NUM_OPS_HEAD, node.num_ops))
    if node.tensor_size is not None:
        out.append(_attr(_TENSOR_SIZE_HEAD, node.tensor_size))
    if node.comm_type is not None:
        out.append(_attr(_COMM_TYPE_HEAD, node.comm_type))
    if node.comm_src is not None:
        out.append(_attr(_COMM_SRC_HEAD, node.comm_src))
    if node.comm_dst is not None:
        out.append(_attr(_COMM_DST_HEAD, node.comm_dst))
    if node.comm_tag is not None:
        out.append(_attr(_COMM_TAG_HEAD, node.comm_tag))
    if node.comm_size is not None:
        out.append(_attr(_COMM_SIZE_HEAD, node.comm_size))
    if node.comm_priority is not None:
        out.append(_attr(_COMM_PRIORITY_HEAD, node.comm_priority))
    if node.pg_name is not None:
        out.append(_pg_name_record(node.pg_name))
    if node.involved_dim is not None:
        out.append(_involved_dim_record(node.involved_dim))
    return out


def _pg_name_record(pg_name: str) -> bytes:
    return _length_delimited(_ATTR, _PG_NAME + _length_delimited(_STRING, pg_name.encode()))


def _involved_dim_record(flags: list[bool]) -> bytes:
    bools = bytes(1 if flag else 0 for flag in flags)
    wrapper = _length_delimited(b"\x0a", bools) if bools else b""
    return _length_delimited(_ATTR, _INVOLVED_DIM + _length_delimited(_BOOL_LIST, wrapper))


def _encode_attributes_with_extras(node: Node) -> list[bytes]:
    """Slow path: a known name among the extras replaces its typed field (it keeps its original kind)."""
    replaced = {name for name, _ in node.extra_attrs}
    out: list[bytes] = []
    if node.is_cpu_op is not None and "is_cpu_op" not in replaced:
        out.append(_IS_CPU_OP_RECORD[bool(node.is_cpu_op)])
    for name, head in _INT_HEADS.items():
        value = getattr(node, name)
        if value is not None and name not in replaced:
            out.append(_attr(head, value))
    if node.pg_name is not None and "pg_name" not in replaced:
        out.append(_pg_name_record(node.pg_name))
    if node.involved_dim is not None and "involved_dim" not in replaced:
        out.append(_involved_dim_record(node.involved_dim))
    for _, raw in node.extra_attrs:
        out.append(_length_delimited(_ATTR, raw))
    return out


def encode_node(node: Node) -> bytes:
    """The serialized `Node` message (without its length prefix). ValueError when a value does not fit its
    field (encode_graph turns that into a one-line error naming the node)."""
    if node.id < 0 or node.duration_micros < 0 or node.start_time_micros < 0:
        raise ValueError("id, duration_micros and start_time_micros are uint64: they cannot be negative")
    parts: list[bytes] = []
    if node.id:
        parts.append(b"\x08" + varint(node.id))
    if node.name:
        name_field = _NAME_FIELDS.get(node.name)
        if name_field is None:
            name = node.name.encode()
            name_field = b"\x12" + varint(len(name)) + name
            if len(_NAME_FIELDS) < _CACHE_LIMIT:
                _NAME_FIELDS[node.name] = name_field
        parts.append(name_field)
    if node.type:
        parts.append(_TYPE_FIELD[node.type])
    if node.ctrl_deps:
        parts.append(_length_delimited(b"\x22", _packed(node.ctrl_deps)))
    if node.data_deps:
        parts.append(_length_delimited(b"\x2a", _packed(node.data_deps)))
    if node.start_time_micros:
        parts.append(b"\x30" + varint(node.start_time_micros))
    if node.duration_micros:
        parts.append(b"\x38" + varint(node.duration_micros))
    if node.inputs is not None:
        parts.append(_length_delimited(b"\x42", node.inputs))
    if node.outputs is not None:
        parts.append(_length_delimited(b"\x4a", node.outputs))
    parts += encode_attributes(node)
    return b"".join(parts)


def encode_metadata(graph: Graph) -> bytes:
    parts = []
    if graph.version:
        version = graph.version.encode()
        parts.append(b"\x0a" + varint(len(version)) + version)
    for raw in graph.metadata_attrs:
        parts.append(_length_delimited(b"\x12", raw))
    return b"".join(parts)


def encode_graph(graph: Graph) -> bytes:
    """The whole `.et` file of one NPU."""
    metadata = encode_metadata(graph)
    records = [varint(len(metadata)), metadata]
    for node in graph.nodes:
        try:
            body = encode_node(node)
        except ValueError as exc:
            raise PipesimError(f"rank {graph.rank} node {node.id} {node.name!r}: {exc}; fix the value") from None
        if not body:
            raise PipesimError(
                f"rank {graph.rank}: node id 0 has no name, type or attributes; Chakra's reader would stop at it "
                "(give it a name or type)"
            )
        records.append(varint(len(body)))
        records.append(body)
    return b"".join(records)


def et_path(prefix: Path | str, rank: int) -> Path:
    """`<prefix>.<rank>.et`, as ASTRA-Sim opens it (decimal rank, no padding)."""
    return Path(f"{prefix}.{rank}.et")


def write_graph(path: Path | str, graph: Graph) -> int:
    """Write one `.et` file atomically; returns the number of bytes written."""
    data = encode_graph(graph)
    write_atomic(Path(path), data)
    return len(data)


def write_workload(prefix: Path | str, workload: Workload | Iterable[Graph]) -> list[Path]:
    """Write `<prefix>.<rank>.et` for every rank, all or none (llm_converter.io.write_all_or_none); the paths."""
    graphs = workload.graphs if isinstance(workload, Workload) else workload

    def encoded() -> Iterator[tuple[Path, bytes]]:
        for rank, graph in enumerate(graphs):
            if graph.rank != rank:
                raise PipesimError(f"graph {rank} says it is rank {graph.rank}: graphs must be ordered by rank")
            yield et_path(prefix, rank), encode_graph(graph)

    # All ranks or none: an error or Ctrl-C half-way left the first ranks of this run beside an older run's rest.
    return write_all_or_none(encoded())
