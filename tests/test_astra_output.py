"""Parsing and formatting ASTRA-Sim's result and trace lines, checked against every conformance stdout.txt."""

from __future__ import annotations

import json

import pytest

from astra_driver.astra_output import (
    FinishLine,
    NodeTime,
    TraceEvent,
    format_finish_line,
    format_trace_line,
    node_times_from_trace,
    parse_finish_line,
    parse_finish_lines,
    parse_trace_line,
    read_lines,
)
from llm_converter.chakra.reader import read_graph
from llm_converter.chakra.writer import et_path
from llm_converter.errors import PipesimError
from tests.conftest import CONFORMANCE, conformance_cases


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_stdout_parses_to_expected(case: str) -> None:
    folder = CONFORMANCE / case
    expected = json.loads((folder / "expected.json").read_text())
    finished = parse_finish_lines(read_lines(folder / "stdout.txt"))
    npus = expected["npus"]
    assert sorted(finished) == list(range(npus))
    assert [finished[r].finish_ns for r in range(npus)] == expected["finish_ns"]
    assert [finished[r].exposed_comm_ns for r in range(npus)] == expected["exposed_comm_ns"]


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_finish_lines_format_back_exactly(case: str) -> None:
    # Every "finished" line ASTRA-Sim printed is reproduced byte for byte from its parsed values.
    lines = [line for line in read_lines(CONFORMANCE / case / "stdout.txt") if " finished, " in line]
    assert lines
    for line in lines:
        record = parse_finish_line(line)
        assert record is not None
        body = line[line.index("sys[") :]
        assert format_finish_line(record.rank, record.finish_ns, record.exposed_comm_ns) == body


def test_finish_line_with_spdlog_prefix_and_without() -> None:
    bare = "sys[3] finished, 1660451 cycles, exposed communication 160451 cycles."
    prefixed = "[2026-03-01 12:00:00.123] [workload] [info] " + bare
    assert parse_finish_line(bare) == FinishLine(3, 1660451, 160451)
    assert parse_finish_line(prefixed) == FinishLine(3, 1660451, 160451)
    assert format_finish_line(3, 1660451, 160451) == bare


def test_two_finish_records_run_together_on_one_line_both_count() -> None:
    """Output of several writers captured into one file can lose a line end between two messages; both ranks
    finished, and reading only the first would report the second as stalled. Windows line ends are tolerated."""
    line = (
        "[workload] [info] sys[0] finished, 10 cycles, exposed communication 4 cycles."
        "[workload] [info] sys[1] finished, 12 cycles, exposed communication 6 cycles.\r"
    )
    assert parse_finish_lines([line]) == {0: FinishLine(0, 10, 4), 1: FinishLine(1, 12, 6)}


def test_other_lines_are_not_finish_lines() -> None:
    assert parse_finish_line("[statistics] [info] sys[3], Wall time: 1660451") is None
    assert parse_finish_line("[system] [warning] Exiting") is None
    assert parse_finish_line("sys[1] iteration 2 finished, 5 cycles, exposed communication 1 cycles.") is None
    assert parse_finish_lines(["", "garbage", "sys[0] finished, 7 cycles, exposed communication 0 cycles."]) == {
        0: FinishLine(0, 7, 0)
    }


def test_trace_line_parse_and_format() -> None:
    body = "issue,sys->id=0, tick=1000000, node->id=2, node->name=send_to_1, node->type=5"
    event = parse_trace_line("[2026-03-01 12:00:00.123] [workload] [debug] " + body)
    assert event == TraceEvent("issue", 0, 1000000, 2, "send_to_1", 5)
    assert format_trace_line(event) == body
    callback = parse_trace_line("callback,sys->id=7, tick=42, node->id=9, node->name=a, b, node->type=x, node->type=4")
    # Names are free text: everything up to the last ", node->type=".
    assert callback == TraceEvent("callback", 7, 42, 9, "a, b, node->type=x", 4)
    assert parse_trace_line("[workload] [info] sys[0] finished, 1 cycles, exposed communication 0 cycles.") is None


def test_node_times_pair_issue_and_callback() -> None:
    lines = [
        "issue,sys->id=1, tick=0, node->id=0, node->name=recv, node->type=6",
        "issue,sys->id=0, tick=0, node->id=0, node->name=comp, node->type=4",
        "callback,sys->id=0, tick=1000000, node->id=0, node->name=comp, node->type=4",
        "issue,sys->id=0, tick=1000000, node->id=1, node->name=send, node->type=5",
        "callback,sys->id=1, tick=1020031, node->id=0, node->name=recv, node->type=6",
        "callback,sys->id=0, tick=1020031, node->id=1, node->name=send, node->type=5",
        # ASTRA-Sim skips invalid nodes with a callback line only: zero time at that tick.
        "callback,sys->id=1, tick=1020031, node->id=3, node->name=skipped, node->type=0",
    ]
    times = node_times_from_trace(lines, npus=2)
    assert times == [
        [NodeTime(0, "comp", 4, 0, 1000000), NodeTime(1, "send", 5, 1000000, 1020031)],
        [NodeTime(0, "recv", 6, 0, 1020031), NodeTime(3, "skipped", 0, 1020031, 1020031)],
    ]


def test_node_times_errors() -> None:
    with pytest.raises(PipesimError, match="node 4 of rank 1 was issued but never completed"):
        node_times_from_trace(["issue,sys->id=1, tick=5, node->id=4, node->name=x, node->type=4"], npus=2)
    with pytest.raises(PipesimError, match="sys->id=2 but the network has 2 NPUs"):
        node_times_from_trace(["issue,sys->id=2, tick=5, node->id=4, node->name=x, node->type=4"], npus=2)


@pytest.mark.parametrize("case", conformance_cases()[:6])
def test_trace_round_trip_on_conformance_ticks(case: str) -> None:
    # Format expected.json's node ticks as ASTRA-Sim's log.log lines (names and types from the .et files),
    # parse them back: every node's [issue, callback] must survive.
    folder = CONFORMANCE / case
    expected = json.loads((folder / "expected.json").read_text())
    npus = expected["npus"]
    lines = []
    for rank in range(npus):
        nodes = read_graph(et_path(folder / "workload", rank)).by_id()
        for node_id, (issue, end) in expected["node_ticks"][str(rank)].items():
            node = nodes[int(node_id)]
            for kind, tick in (("issue", issue), ("callback", end)):
                event = TraceEvent(kind, rank, tick, node.id, node.name, int(node.type))
                lines.append("[workload] [debug] " + format_trace_line(event))
    times = node_times_from_trace(lines, npus)
    for rank in range(npus):
        got = {entry.node_id: [entry.issue_ns, entry.end_ns] for entry in times[rank]}
        assert got == {int(k): v for k, v in expected["node_ticks"][str(rank)].items()}


def test_read_lines_missing_file(tmp_path) -> None:
    with pytest.raises(PipesimError, match="no such file"):
        read_lines(tmp_path / "log.log")
