"""Chakra execution traces: schema, writer, reader, validator."""

from llm_converter.chakra.reader import read_graph, read_workload
from llm_converter.chakra.writer import encode_graph, et_path, write_graph, write_workload

__all__ = ["encode_graph", "et_path", "read_graph", "read_workload", "write_graph", "write_workload"]
