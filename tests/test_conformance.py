"""Every ASTRA-Sim conformance case: finish ticks, exposed communication and every node's issue/end tick."""

from __future__ import annotations

import json

import pytest

from astra_driver.astra_config import load_astra_config
from astra_driver.engine import simulate
from llm_converter.chakra.reader import read_workload
from tests.conftest import CONFORMANCE, conformance_cases


@pytest.mark.parametrize("case", conformance_cases())
def test_conformance_case(case: str) -> None:
    folder = CONFORMANCE / case
    groups = folder / "comm_groups.json"
    config = load_astra_config(
        folder / "system.json",
        folder / "network.yml",
        folder / "memory.json",
        groups if groups.is_file() else None,
    )
    expected = json.loads((folder / "expected.json").read_text())
    workload = read_workload(folder / "workload", expected["npus"])
    result = simulate(workload, config, record_node_times=True)
    assert result.finish_ns == expected["finish_ns"]
    assert result.exposed_comm_ns == expected["exposed_comm_ns"]
    assert result.node_times is not None
    for rank, times in enumerate(result.node_times):
        got = {str(node_id): [issue, end] for node_id, _, _, issue, end in times}
        assert got == expected["node_ticks"][str(rank)], f"rank {rank}"


def test_conformance_cases_present() -> None:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"{CONFORMANCE} not found (set PIPESIM_SHARED)")
    assert len(conformance_cases()) == 29
