"""`pipesim replay` through astra_driver.cli.main: ASTRA-Sim's flags in, ASTRA-Sim's lines out, exit 2 on errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from astra_driver.astra_output import NodeTime, parse_finish_line, read_lines
from astra_driver.cli import main
from astra_driver.cli.replay_cmd import node_times_csv
from tests.conftest import CONFORMANCE, conformance_cases
from tests.fixtures.fake_astra import good_binary, heredoc, small_stdout_lines, write_script, write_small_run
from tests.test_backends import needs_engine


def _flags(run) -> list[str]:
    flags = [
        f"--workload-configuration={run.workload}",
        f"--system-configuration={run.system}",
        f"--network-configuration={run.network}",
        f"--remote-memory-configuration={run.memory}",
    ]
    if run.comm_groups is not None:
        flags.append(f"--comm-group-configuration={run.comm_groups}")
    if run.logging_folder is not None:
        flags.append(f"--logging-folder={run.logging_folder}")
    return flags


EXPECTED_LINES = [
    "sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.",
    "sys[1] finished, 2020031 cycles, exposed communication 1020031 cycles.",
]


def test_replay_binary_prints_astra_sims_lines(tmp_path: Path, capsys) -> None:
    run = write_small_run(tmp_path / "run")
    binary = good_binary(tmp_path / "astra")
    code = main(["replay", *_flags(run), "--backend", "astra-sim", f"--astra-sim-bin={binary}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines() == EXPECTED_LINES
    assert captured.err == ""


def test_replay_binary_from_env_json_and_node_times(tmp_path: Path, capsys, monkeypatch) -> None:
    run = write_small_run(tmp_path / "run")
    monkeypatch.setenv("ASTRA_SIM_BIN", str(good_binary(tmp_path / "astra")))
    csv = tmp_path / "out" / "times.csv"
    code = main(["replay", *_flags(run), "--backend=astra-sim", "--json", "--node-times", str(csv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out) == {"finish_ns": [1020031, 2020031], "exposed_comm_ns": [20031, 1020031]}
    assert csv.read_text().splitlines() == [
        "rank,node_id,name,type,issue_ns,end_ns",
        "0,0,compute,4,0,1000000",
        "0,1,send_to_1,5,1000000,1020031",
        "1,0,recv_from_0,6,0,1020031",
        '1,1,"compute, after recv",4,1020031,2020031',
    ]
    assert [p.name for p in csv.parent.iterdir()] == ["times.csv"]  # no temporary file left behind


def test_node_times_csv_quotes_like_the_csv_module() -> None:
    import csv
    import io

    text = node_times_csv([[NodeTime(3, 'say "hi", twice', 7, 10, 20)]])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows == [
        ["rank", "node_id", "name", "type", "issue_ns", "end_ns"],
        ["0", "3", 'say "hi", twice', "7", "10", "20"],
    ]


def _error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) >= 1
    return captured.err.strip()


def test_unknown_backend(tmp_path: Path, capsys) -> None:
    run = write_small_run(tmp_path / "run")
    err = _error(capsys, ["replay", *_flags(run), "--backend", "ns3"])
    assert err == "pipesim: error: --backend: unknown backend 'ns3'; choose one of builtin, astra-sim, docker"


def test_binary_errors_exit_2_on_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ASTRA_SIM_BIN", raising=False)
    run = write_small_run(tmp_path / "run")
    err = _error(capsys, ["replay", *_flags(run), "--backend", "astra-sim"])
    assert err.startswith("pipesim: error: no ASTRA-Sim binary: pass --astra-sim-bin PATH or set ASTRA_SIM_BIN")
    assert "\n" not in err

    stall = write_script(tmp_path / "stall", heredoc(small_stdout_lines(ranks=[0])))
    err = _error(capsys, ["replay", *_flags(run), "--backend", "astra-sim", "--astra-sim-bin", str(stall)])
    assert "rank(s) 1 of 2 never printed 'finished'" in err and "\n" not in err

    abort = write_script(tmp_path / "abort", "echo 'Assertion failed: endpoint_delay > 0' >&2; exit 134")
    err = _error(capsys, ["replay", *_flags(run), "--backend", "astra-sim", "--astra-sim-bin", str(abort)])
    assert "aborted (exit 134)" in err and "\n" not in err

    sleeper = write_script(tmp_path / "sleeper", "sleep 20")
    err = _error(
        capsys, ["replay", *_flags(run), "--backend", "astra-sim", "--astra-sim-bin", str(sleeper), "--timeout", "0.3"]
    )
    assert "still running after the 0.3 s timeout, killed" in err


def test_negative_timeout(tmp_path: Path, capsys) -> None:
    run = write_small_run(tmp_path / "run")
    err = _error(capsys, ["replay", *_flags(run), "--timeout", "-1"])
    assert err == "pipesim: error: --timeout -1: must be >= 0 seconds (0: no limit)"


def test_missing_flag_is_a_usage_error(tmp_path: Path, capsys) -> None:
    run = write_small_run(tmp_path / "run")
    # A missing required flag is a usage error, exit 2 (ASTRA-Sim itself exits 255 there).
    assert main(["replay", *_flags(run)[1:]]) == 2
    assert "--workload-configuration" in capsys.readouterr().err


@needs_engine
@pytest.mark.parametrize("case", conformance_cases())
def test_builtin_prints_what_astra_sim_printed(case: str, capsys, tmp_path: Path) -> None:
    folder = CONFORMANCE / case
    argv = [
        "replay",
        f"--workload-configuration={folder / 'workload'}",
        f"--system-configuration={folder / 'system.json'}",
        f"--network-configuration={folder / 'network.yml'}",
        f"--remote-memory-configuration={folder / 'memory.json'}",
    ]
    if (folder / "comm_groups.json").is_file():
        argv.append(f"--comm-group-configuration={folder / 'comm_groups.json'}")
    csv = tmp_path / "times.csv"
    code = main([*argv, "--node-times", str(csv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = [line[line.index("sys[") :] for line in read_lines(folder / "stdout.txt") if " finished, " in line]
    # ASTRA-Sim prints ranks in the order they finish; pipesim in rank order, with the same text.
    assert captured.out.splitlines() == sorted(printed, key=lambda line: parse_finish_line(line).rank)
    expected = json.loads((folder / "expected.json").read_text())
    rows = csv.read_text().splitlines()[1:]
    assert len(rows) == sum(len(ticks) for ticks in expected["node_ticks"].values())
