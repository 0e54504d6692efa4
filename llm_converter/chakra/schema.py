"""The Chakra ET schema as protobuf message classes, built in code at import time.

Why in code: no protoc at install time and no generated-code runtime-version check, so any protobuf >= 4
works. The descriptors are the ones chakra_et.proto declares (tests compare them when grpc_tools is
installed). The classes live in a private DescriptorPool so they never clash with another copy of
Chakra's schema loaded in the same process.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "ChakraProtoMsg"
FILE_NAME = "chakra_et.proto"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _F.LABEL_OPTIONAL
_REPEATED = _F.LABEL_REPEATED

NODE_TYPES: tuple[str, ...] = (
    "INVALID_NODE",
    "METADATA_NODE",
    "MEM_LOAD_NODE",
    "MEM_STORE_NODE",
    "COMP_NODE",
    "COMM_SEND_NODE",
    "COMM_RECV_NODE",
    "COMM_COLL_NODE",
)

COLLECTIVE_COMM_TYPES: tuple[str, ...] = (
    "ALL_REDUCE",
    "REDUCE",
    "ALL_GATHER",
    "GATHER",
    "SCATTER",
    "BROADCAST",
    "ALL_TO_ALL",
    "REDUCE_SCATTER",
    "REDUCE_SCATTER_BLOCK",
    "BARRIER",
)

# The 15 scalar kinds of AttributeProto, in field order: kind i is `<kind>_val` = 3+2i, `<kind>_list` = 4+2i.
ATTRIBUTE_KINDS: tuple[tuple[str, int, str], ...] = (
    ("double", _F.TYPE_DOUBLE, "DoubleList"),
    ("float", _F.TYPE_FLOAT, "FloatList"),
    ("int32", _F.TYPE_INT32, "Int32List"),
    ("int64", _F.TYPE_INT64, "Int64List"),
    ("uint32", _F.TYPE_UINT32, "Uint32List"),
    ("uint64", _F.TYPE_UINT64, "Uint64List"),
    ("sint32", _F.TYPE_SINT32, "Sint32List"),
    ("sint64", _F.TYPE_SINT64, "Sint64List"),
    ("fixed32", _F.TYPE_FIXED32, "Fixed32List"),
    ("fixed64", _F.TYPE_FIXED64, "Fixed64List"),
    ("sfixed32", _F.TYPE_SFIXED32, "Sfixed32List"),
    ("sfixed64", _F.TYPE_SFIXED64, "Sfixed64List"),
    ("bool", _F.TYPE_BOOL, "BoolList"),
    ("string", _F.TYPE_STRING, "StringList"),
    ("bytes", _F.TYPE_BYTES, "BytesList"),
)


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    ftype: int,
    label: int = _OPTIONAL,
    type_name: str | None = None,
    oneof_index: int | None = None,
) -> None:
    field = message.field.add()
    field.name = name
    field.number = number
    field.type = ftype
    field.label = label
    field.json_name = _json_name(name)
    if type_name is not None:
        field.type_name = f".{PACKAGE}.{type_name}"
    if oneof_index is not None:
        field.oneof_index = oneof_index


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _enum(file: descriptor_pb2.FileDescriptorProto, name: str, values: tuple[str, ...]) -> None:
    enum = file.enum_type.add()
    enum.name = name
    for number, value_name in enumerate(values):
        value = enum.value.add()
        value.name = value_name
        value.number = number


def build_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The FileDescriptorProto that chakra_et.proto compiles to."""
    file = descriptor_pb2.FileDescriptorProto()
    file.name = FILE_NAME
    file.package = PACKAGE
    file.syntax = "proto3"
    _enum(file, "NodeType", NODE_TYPES)
    _enum(file, "CollectiveCommType", COLLECTIVE_COMM_TYPES)

    metadata = file.message_type.add()
    metadata.name = "GlobalMetadata"
    _field(metadata, "version", 1, _F.TYPE_STRING)
    _field(metadata, "attr", 2, _F.TYPE_MESSAGE, _REPEATED, "AttributeProto")

    node = file.message_type.add()
    node.name = "Node"
    _field(node, "id", 1, _F.TYPE_UINT64)
    _field(node, "name", 2, _F.TYPE_STRING)
    _field(node, "type", 3, _F.TYPE_ENUM, type_name="NodeType")
    _field(node, "ctrl_deps", 4, _F.TYPE_UINT64, _REPEATED)
    _field(node, "data_deps", 5, _F.TYPE_UINT64, _REPEATED)
    _field(node, "start_time_micros", 6, _F.TYPE_UINT64)
    _field(node, "duration_micros", 7, _F.TYPE_UINT64)
    _field(node, "inputs", 8, _F.TYPE_MESSAGE, type_name="IOInfo")
    _field(node, "outputs", 9, _F.TYPE_MESSAGE, type_name="IOInfo")
    _field(node, "attr", 10, _F.TYPE_MESSAGE, _REPEATED, "AttributeProto")

    io_info = file.message_type.add()
    io_info.name = "IOInfo"
    for number, name in enumerate(("values", "shapes", "types"), start=1):
        _field(io_info, name, number, _F.TYPE_STRING)

    tensor = file.message_type.add()
    tensor.name = "Tensor"
    for number, name in enumerate(("tensor_id", "storage_id", "offset", "num_elem", "elem_bytes"), start=1):
        _field(tensor, name, number, _F.TYPE_UINT64)
    _field(tensor, "device", 6, _F.TYPE_STRING)

    attribute = file.message_type.add()
    attribute.name = "AttributeProto"
    _field(attribute, "name", 1, _F.TYPE_STRING)
    _field(attribute, "doc_string", 2, _F.TYPE_STRING)
    attribute.oneof_decl.add().name = "value"
    for index, (kind, ftype, list_name) in enumerate(ATTRIBUTE_KINDS):
        _field(attribute, f"{kind}_val", 3 + 2 * index, ftype, oneof_index=0)
        _field(attribute, f"{kind}_list", 4 + 2 * index, _F.TYPE_MESSAGE, type_name=list_name, oneof_index=0)

    for _kind, ftype, list_name in ATTRIBUTE_KINDS:
        wrapper = file.message_type.add()
        wrapper.name = list_name
        _field(wrapper, "values", 1, ftype, _REPEATED)
    return file


_POOL = descriptor_pool.DescriptorPool()
FILE_DESCRIPTOR = _POOL.Add(build_file_descriptor())
_file = _POOL.FindFileByName(FILE_NAME)

GlobalMetadata = message_factory.GetMessageClass(_file.message_types_by_name["GlobalMetadata"])
Node = message_factory.GetMessageClass(_file.message_types_by_name["Node"])
AttributeProto = message_factory.GetMessageClass(_file.message_types_by_name["AttributeProto"])
IOInfo = message_factory.GetMessageClass(_file.message_types_by_name["IOInfo"])
