"""The descriptors built in code (schema.py) are exactly what chakra_et.proto compiles to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from llm_converter.chakra import schema

PROTO = Path(schema.__file__).with_name("chakra_et.proto")


def _strip_json_names(file: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    for message in file.message_type:
        for field in message.field:
            field.ClearField("json_name")
    return file


def test_built_schema_matches_proto_file(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev extra) compiles the .proto for comparison")
    out = tmp_path / "descriptor.pb"
    result = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    assert _strip_json_names(compiled) == _strip_json_names(schema.build_file_descriptor())


def test_field_numbers_of_the_spec() -> None:
    node = schema.Node.DESCRIPTOR
    assert {f.name: f.number for f in node.fields} == {
        "id": 1,
        "name": 2,
        "type": 3,
        "ctrl_deps": 4,
        "data_deps": 5,
        "start_time_micros": 6,
        "duration_micros": 7,
        "inputs": 8,
        "outputs": 9,
        "attr": 10,
    }
    attr = schema.AttributeProto.DESCRIPTOR
    assert attr.fields_by_name["bool_val"].number == 27
    assert attr.fields_by_name["string_val"].number == 29
    assert attr.fields_by_name["bytes_list"].number == 32
    assert {f.name for f in attr.oneofs_by_name["value"].fields} == {
        f"{kind}_{suffix}" for kind, _, _ in schema.ATTRIBUTE_KINDS for suffix in ("val", "list")
    }
    assert schema.Node.DESCRIPTOR.full_name == "ChakraProtoMsg.Node"
