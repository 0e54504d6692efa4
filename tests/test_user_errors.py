"""Every mistake a user can make: one line `pipesim: error: ...` on stderr naming the file/flag/field and the
fix, exit code 2, no traceback, nothing half-written, never a hang.

Most cases call `astra_driver.cli.main` in process (fast); `test_real_entry_point` runs a representative set
through `python -m astra_driver.cli` (and the `pipesim` script) in parallel subprocesses, to prove the real
entry point prints no traceback either.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astra_driver.cli import main
from astra_driver.trace_job import TraceRequest, iteration_from_flags, run_trace
from tests.conftest import REPO
from tests.fixtures.fake_astra import fake_docker, write_script, write_small_run

CLUSTER = REPO / "configs" / "cluster" / "tp2.json"
PROFILES = REPO.parent / "shared" / "profiles"
PREFIX = "pipesim: error: "
LLAMA_CONFIG = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _one_line_error(code: int, err: str, names: tuple[str, ...]) -> str:
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(PREFIX), err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def _fails(capsys, argv: list[str], *names: str, stdout_empty: bool = True) -> str:
    """Run the CLI in process; it must fail the way the rule says and name every one of `names`."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    if stdout_empty:
        assert captured.out == "", captured.out
    return _one_line_error(code, captured.err, names)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones included) with its bytes (None for folders)."""
    if not folder.exists():
        return {}
    return {
        str(path.relative_to(folder)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A complete trace folder (tp 2, two .et files and ASTRA-Sim's configs), written once."""
    out = tmp_path_factory.mktemp("good")
    request = TraceRequest(name="good", iteration=iteration_from_flags(["16"], []), out_dir=out, cluster_config=CLUSTER)
    return run_trace(request).directory


def _cluster(tmp_path: Path, name: str, mutate) -> Path:
    document = json.loads(CLUSTER.read_text())
    mutate(document)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def _instance(document: dict) -> dict:
    return document["nodes"][0]["instances"][0]


# ---------------------------------------------------------------------------------------------------------
# trace: every failure leaves the previous output folder whole and no temporary folder behind
# ---------------------------------------------------------------------------------------------------------

TRACE_CASES = {
    # name: (argv after "trace" given tmp_path, names the message must contain)
    "missing cluster file": (lambda t: ["--cluster-config", t / "nope.json", "--prefill", "16"], ["nope.json"]),
    "invalid JSON": (
        lambda t: ["--cluster-config", _text(t / "bad.json", '{"num_nodes": 1,,}'), "--prefill", "16"],
        ["bad.json", "line 1", "not valid JSON"],
    ),
    "cluster is a directory": (lambda t: ["--cluster-config", t, "--prefill", "16"], ["is a directory"]),
    "tp does not divide heads": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "tp3", lambda d: _instance(d).update(tp_size=3, num_npus=3)),
            "--prefill",
            "16",
        ],
        ["tp3.json", "tp_size", "does not divide", "use one of 1, 2, 4, 8"],
    ),
    "num_npus mismatch": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "npus", lambda d: _instance(d).update(num_npus=4)),
            "--prefill",
            "8",
        ],
        ["npus.json", "num_npus", "set num_npus to 2"],
    ),
    "unknown model": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "model", lambda d: _instance(d).update(model_name="foo/Bar")),
            "--prefill",
            "8",
        ],
        ["model.json", "model_name", "'foo/Bar'", "use one of"],
    ),
    "unknown hardware": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "hw", lambda d: _instance(d).update(hardware="TPU")),
            "--prefill",
            "8",
        ],
        ["hw.json", "hardware", "'TPU'", "use one of"],
    ),
    "memory too small": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "mem", lambda d: _instance(d)["npu_mem"].update(mem_size=1)),
            "--prefill",
            "8",
        ],
        ["mem.json", "npu_mem.mem_size", "use a larger tp_size"],
    ),
    "negative link_bw": (
        lambda t: ["--cluster-config", _cluster(t, "bw", lambda d: d.update(link_bw=-5)), "--prefill", "8"],
        ["bw.json", "link_bw", "must be > 0"],
    ),
    "infinite link_bw": (
        lambda t: ["--cluster-config", _cluster(t, "inf", lambda d: d.update(link_bw=float("inf"))), "--prefill", "8"],
        ["inf.json", "link_bw", "finite"],
    ),
    "string where a number goes": (
        lambda t: [
            "--cluster-config",
            _cluster(t, "str", lambda d: _instance(d).update(tp_size="2")),
            "--prefill",
            "8",
        ],
        ["str.json", "tp_size", "expected an integer"],
    ),
    "bad --prefill": (lambda t: ["--cluster-config", CLUSTER, "--prefill", "abc"], ["--prefill", "'abc'", "e.g."]),
    "bad --decode": (lambda t: ["--cluster-config", CLUSTER, "--decode", "32*1024"], ["--decode", "COUNTxKV"]),
    "request longer than the model": (
        lambda t: ["--cluster-config", CLUSTER, "--prefill", "99999999999999999999"],
        ["--prefill", "max_position_embeddings", "131072"],
    ),
    "absurd decode count": (
        lambda t: ["--cluster-config", CLUSTER, "--decode", "10000000000x16"],
        ["--decode", "COUNT <="],
    ),
    "empty batch": (lambda t: ["--cluster-config", CLUSTER], ["batch is empty", "--prefill", "--decode"]),
    "unknown --dtype": (lambda t: ["--cluster-config", CLUSTER, "--prefill", "8", "--dtype", "int3"], ["'int3'"]),
    "--profile-dir missing": (
        lambda t: ["--cluster-config", CLUSTER, "--prefill", "8", "--profile-dir", t / "noprof"],
        ["noprof", "--profile-dir"],
    ),
    "--tp 0": (lambda t: ["--model", "gpt2", "--hardware", "H100-SXM", "--tp", "0", "--prefill", "8"], ["--tp 0"]),
    "--link-bw negative": (
        lambda t: ["--model", "gpt2", "--hardware", "H100-SXM", "--link-bw", "-1", "--prefill", "8"],
        ["--link-bw"],
    ),
    "unknown --hardware": (
        lambda t: ["--model", "gpt2", "--hardware", "FOO", "--prefill", "8"],
        ["'FOO'", "use one of"],
    ),
    "bad --name": (lambda t: ["--cluster-config", CLUSTER, "--prefill", "8", "--name", "../x"], ["--name"]),
    "cluster and model both": (
        lambda t: ["--cluster-config", CLUSTER, "--model", "gpt2", "--prefill", "8"],
        ["--cluster-config", "drop"],
    ),
    "HF config.json with a non-integer field": (
        lambda t: [
            "--model",
            _text(t / "hf.json", json.dumps({**LLAMA_CONFIG, "num_attention_heads": "32"})),
            "--hardware",
            "H100-SXM",
            "--prefill",
            "8",
        ],
        ["--model", "hf.json", "num_attention_heads", "whole number"],
    ),
    "HF config.json with zero heads": (
        lambda t: [
            "--model",
            _text(t / "hf0.json", json.dumps({**LLAMA_CONFIG, "num_attention_heads": 0})),
            "--hardware",
            "H100-SXM",
            "--prefill",
            "8",
        ],
        ["--model", "hf0.json", "num_attention_heads"],
    ),
}


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(TRACE_CASES))
def test_trace_mistakes(case: str, tmp_path: Path, capsys, good: Path) -> None:
    build, names = TRACE_CASES[case]
    out = tmp_path / "out"
    shutil.copytree(good, out / "x")  # a previous run's complete output, which a failure must leave whole
    before = _snapshot(out)
    # The case's own flags last, so that its --name, if any, wins.
    _fails(capsys, ["trace", "--out-dir", out, "--name", "x", *build(tmp_path)], *names)
    assert _snapshot(out) == before


def test_trace_profile_dir_without_the_tp(tmp_path: Path, capsys) -> None:
    bundle = PROFILES / "RTX4090" / "meta-llama" / "Llama-3.1-8B"
    if not bundle.is_dir():
        pytest.skip(f"{bundle} not found")
    argv = ["trace", "--model", "meta-llama/Llama-3.1-8B", "--hardware", "RTX4090", "--tp", "2", "--prefill", "8"]
    argv += ["--dtype", "bfloat16", "--profile-dir", bundle, "--out-dir", tmp_path]
    _fails(capsys, argv, "no tp2 profile", "tp1")
    assert list(tmp_path.iterdir()) == []


def test_trace_out_dir_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["trace", "--cluster-config", CLUSTER, "--prefill", "8", "--out-dir", tmp_path / "afile"], "afile")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("x")
    _fails(capsys, ["trace", "--cluster-config", CLUSTER, "--prefill", "8", "--out-dir", tmp_path / "o", "--name", "x"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["afile", "o", "x"]


def test_trace_failing_while_writing_keeps_the_previous_folder(tmp_path: Path, capsys, good, monkeypatch) -> None:
    from astra_driver import trace_job
    from llm_converter.errors import PipesimError

    def broken(folder, astra):
        (folder / "half.txt").write_text("half")
        raise PipesimError(f"{folder}: disk full; free some space")

    monkeypatch.setattr(trace_job, "write_astra_files", broken)
    out = tmp_path / "out"
    shutil.copytree(good, out / "x")
    before = _snapshot(out)
    _fails(capsys, ["trace", "--cluster-config", CLUSTER, "--prefill", "8", "--out-dir", out, "--name", "x"], "disk")
    assert _snapshot(out) == before  # no .x.new-* or .x.old-* folder either


# ---------------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------------


def _csv(good: Path, tmp_path: Path, name: str, edit) -> Path:
    path = tmp_path / name
    path.write_text(edit((good / "layers.csv").read_text()))
    return path


def _header_line(lines: list[str]) -> int:
    """Index of the column header: the first line after the '#' comments (layer list shape, plan)."""
    return next(i for i, line in enumerate(lines) if not line.startswith("#"))


def _drop_column(text: str, column: str) -> str:
    lines = text.splitlines()
    head = _header_line(lines)
    index = lines[head].split(",").index(column)
    kept = [",".join(f for i, f in enumerate(line.split(",")) if i != index) for line in lines[head:]]
    return "\n".join([*lines[:head], *kept]) + "\n"


def _set_first_ns(text: str, value: str) -> str:
    """`text` (layers.csv) with the ns cell of its first row (line 4) set to `value`; the cell is found from
    the header, not from a hard-coded latency (the roofline's numbers change when it is recalibrated)."""
    lines = text.splitlines()
    head = _header_line(lines)
    index = lines[head].split(",").index("ns")
    cells = lines[head + 1].split(",")
    cells[index] = value
    return "\n".join([*lines[: head + 1], ",".join(cells), *lines[head + 2 :]]) + "\n"


CONVERT_CASES = {
    "missing CSV": (lambda g, t: t / "nope.csv", ["nope.csv", "no such file"]),
    "bad number": (
        lambda g, t: _csv(g, t, "num.csv", lambda s: _set_first_ns(s, "2x82")),
        ["num.csv", "line 4", "'ns'"],
    ),
    "missing column": (lambda g, t: _csv(g, t, "col.csv", lambda s: _drop_column(s, "ns")), ["col.csv", "'ns'"]),
    "number over int64": (
        lambda g, t: _csv(g, t, "big.csv", lambda s: _set_first_ns(s, "99999999999999999999999")),
        ["big.csv", "line 4", "<= 9223372036854775807"],
    ),
    "empty CSV": (lambda g, t: _text(t / "empty.csv", ""), ["empty.csv", "no header"]),
    "undecodable CSV": (lambda g, t: _bytes(t / "bin.csv", b"\xff\xfe\x00\x80" * 50), ["bin.csv"]),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_mistakes(case: str, tmp_path: Path, capsys, good: Path) -> None:
    build, names = CONVERT_CASES[case]
    source = build(good, tmp_path)
    _fails(capsys, ["convert", source, "-o", tmp_path / "out" / "llm"], *names)
    assert not (tmp_path / "out").exists()


def test_convert_output_under_a_file(tmp_path: Path, capsys, good: Path) -> None:
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["convert", good / "layers.csv", "-o", tmp_path / "afile" / "llm"], "afile", "-o/--output")


# ---------------------------------------------------------------------------------------------------------
# inspect / validate: bad .et files
# ---------------------------------------------------------------------------------------------------------


def _bad_et(good: Path, folder: Path, kind: str) -> Path:
    raw = (good / "llm.0.et").read_bytes()
    data = {
        "empty": b"",
        "gzip": gzip.compress(raw),
        "truncated": raw[: len(raw) // 2],
        "garbage": random.Random(7).randbytes(4096),
    }[kind]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "llm.0.et").write_bytes(data)
    (folder / "llm.1.et").write_bytes((good / "llm.1.et").read_bytes())
    return folder / "llm"


ET_MESSAGES = {"empty": "empty file", "gzip": "gunzip", "truncated": "truncated", "garbage": "byte 0"}


@pytest.mark.parametrize("verb", ["inspect", "validate"])
@pytest.mark.parametrize("kind", list(ET_MESSAGES))
def test_bad_et_files(verb: str, kind: str, tmp_path: Path, capsys, good: Path) -> None:
    prefix = _bad_et(good, tmp_path, kind)
    _fails(capsys, [verb, prefix], "llm.0.et", ET_MESSAGES[kind])
    _fails(capsys, [verb, f"{prefix}.0.et"], "llm.0.et", ET_MESSAGES[kind])  # one file: both verbs take it


@pytest.mark.parametrize("verb", ["inspect", "validate"])
def test_missing_prefix(verb: str, tmp_path: Path, capsys) -> None:
    _fails(capsys, [verb, tmp_path / "nothing"], "nothing.0.et", "no such file")


def test_validate_problems_go_to_stdout_and_one_line_to_stderr(tmp_path: Path, capsys, good: Path) -> None:
    groups = _text(tmp_path / "g.json", '{"1": [0, 5]}')
    _fails(capsys, ["validate", good / "llm", "--comm-group-configuration", groups], "g.json", "rank 5")


def test_inspect_output_is_a_folder(tmp_path: Path, capsys, good: Path) -> None:
    _fails(capsys, ["inspect", good / "llm", "-o", tmp_path], "is a folder", "-o/--output")


# ---------------------------------------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------------------------------------


def _replay(run, **override) -> list[str]:
    files = {
        "workload": run.workload,
        "system": run.system,
        "network": run.network,
        "memory": run.memory,
        "groups": run.comm_groups,
    }
    files.update(override)
    argv = [
        "replay",
        f"--workload-configuration={files['workload']}",
        f"--system-configuration={files['system']}",
        f"--network-configuration={files['network']}",
        f"--remote-memory-configuration={files['memory']}",
    ]
    if files["groups"] is not None:
        argv.append(f"--comm-group-configuration={files['groups']}")
    return argv


def _network(tmp_path: Path, topology="Ring", npus="2", bandwidth="50.0") -> Path:
    path = tmp_path / "net.yml"
    path.write_text(f"topology: [ {topology} ]\nnpus_count: [ {npus} ]\nbandwidth: [ {bandwidth} ]\nlatency: [ 1 ]\n")
    return path


def _workload(tmp_path: Path, build) -> Path:
    from llm_converter.chakra.writer import write_workload
    from llm_converter.graph import Workload

    prefix = tmp_path / "wl" / "w"
    write_workload(prefix, Workload(build()))
    return prefix


def _unmatched_recv():
    from llm_converter.graph import GraphBuilder

    sender, receiver = GraphBuilder(0), GraphBuilder(1)
    sender.comp("c", 10)
    receiver.recv("stuck_recv", src=0, tag=3, size=100)
    return [sender.graph, receiver.graph]


def _cycle():
    from llm_converter.graph import Graph, Node, NodeType

    first = Graph(0, [Node(0, "a", NodeType.COMP_NODE, [1], duration_micros=1)])
    first.nodes.append(Node(1, "b", NodeType.COMP_NODE, [0], duration_micros=1))
    return [first, Graph(1, [Node(0, "c", NodeType.COMP_NODE, [], duration_micros=1)])]


REPLAY_CASES = {
    "missing system": (lambda t: {"system": t / "nope.json"}, ["nope.json", "no such file", "system"]),
    "missing network": (lambda t: {"network": t / "nope.yml"}, ["nope.yml", "no such file", "network"]),
    "missing memory": (lambda t: {"memory": t / "nope.json"}, ["nope.json", "no such file", "memory"]),
    "missing groups": (lambda t: {"groups": t / "nope.json"}, ["nope.json", "no such file", "comm group"]),
    "directory as system": (lambda t: {"system": t}, ["is a directory"]),
    "npus do not match the .et files": (
        lambda t: {"network": _network(t, npus="4")},
        ["workload.2.et", "4 NPUs", "2 .et files"],
    ),
    "unknown topology": (lambda t: {"network": _network(t, topology="Torus")}, ["net.yml", "'Torus'", "allowed"]),
    "zero bandwidth": (lambda t: {"network": _network(t, bandwidth="0")}, ["net.yml", "bandwidth[0]", "> 0"]),
    "NaN bandwidth": (lambda t: {"network": _network(t, bandwidth=".nan")}, ["net.yml", "bandwidth", "finite"]),
    "recv never gets its send": (
        lambda t: {"workload": _workload(t, _unmatched_recv)},
        ["stalled", "rank 1 node 0 stuck_recv", "never comes"],
    ),
    "dependency cycle": (lambda t: {"workload": _workload(t, _cycle)}, ["rank 0 node 0", "cycle"]),
}


@pytest.mark.parametrize("case", list(REPLAY_CASES))
def test_replay_mistakes(case: str, tmp_path: Path, capsys) -> None:
    build, names = REPLAY_CASES[case]
    run = write_small_run(tmp_path / "run")
    _fails(capsys, _replay(run, **build(tmp_path)), *names)


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--backend", "ns3"], ["--backend", "'ns3'", "builtin"]),
        (["--timeout", "-1"], ["--timeout -1", ">= 0"]),
        (["--timeout", "nan"], ["--timeout nan"]),
        (["--injection-scale", "0"], ["--injection-scale"]),
        (["--node-times", "{tmp}"], ["--node-times", "is a folder"]),
        (["--logging-folder", "{tmp}/run/network.yml"], ["--logging-folder", "not a folder"]),
    ],
)
def test_replay_bad_flag_values(flags: list[str], names: list[str], tmp_path: Path, capsys) -> None:
    run = write_small_run(tmp_path / "run")
    _fails(capsys, _replay(run) + [flag.format(tmp=tmp_path) for flag in flags], *names)


def test_astra_sim_backend_failures(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("ASTRA_SIM_BIN", raising=False)
    run = write_small_run(tmp_path / "run")
    base = _replay(run) + ["--backend", "astra-sim", "--logging-folder", tmp_path / "log"]
    _fails(capsys, base, "no ASTRA-Sim binary", "--astra-sim-bin", "ASTRA_SIM_BIN")
    _fails(capsys, base + ["--astra-sim-bin", tmp_path / "nobin"], "nobin", "no such file")
    scripts = {
        "abort": ("echo 'Assertion `x` failed.' >&2; exit 134", ["aborted (exit 134)", "Assertion"]),
        "options": ("echo 'unknown option' >&2; exit 255", ["exit 255", "unknown option"]),
        "stall": ("echo '[workload] [info] sys[0] finished, 5 cycles, exposed communication 0 cycles.'", ["stalled"]),
    }
    for name, (body, names) in scripts.items():
        binary = write_script(tmp_path / name, body)
        _fails(capsys, base + ["--astra-sim-bin", binary], name, *names)
    sleeper = write_script(tmp_path / "sleeper", "sleep 30")
    start = time.monotonic()
    _fails(capsys, base + ["--astra-sim-bin", sleeper, "--timeout", "0.3"], "sleeper", "timeout", "--timeout")
    assert time.monotonic() - start < 5


def test_docker_backend_without_an_image(tmp_path: Path, capsys, monkeypatch) -> None:
    fake_docker(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.delenv("PIPESIM_DOCKER_IMAGE", raising=False)
    run = write_small_run(tmp_path / "run")
    _fails(capsys, _replay(run) + ["--backend", "docker"], "--docker-image", "PIPESIM_DOCKER_IMAGE")
    _fails(capsys, _replay(run) + ["--backend", "docker", "--docker-image", "nope:1"], "nope:1", "docker pull")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod 000 files")
def test_unreadable_files(tmp_path: Path, capsys, good: Path) -> None:
    cluster = _text(tmp_path / "c.json", CLUSTER.read_text())
    run = write_small_run(tmp_path / "run")
    for path in (cluster, Path(run.network), Path(f"{run.workload}.0.et")):
        path.chmod(0)
    try:
        _fails(capsys, ["trace", "--cluster-config", cluster, "--prefill", "8", "--out-dir", tmp_path / "o"], "c.json")
        _fails(capsys, _replay(run), "network.yml")
        _fails(capsys, ["inspect", run.workload], "workload.0.et")
    finally:
        for path in (cluster, Path(run.network), Path(f"{run.workload}.0.et")):
            path.chmod(0o644)


def test_usage_errors_are_one_line(capsys) -> None:
    line = _fails(capsys, ["trace", "--tp", "two"], "--tp", "pipesim trace --help")
    assert "'two'" in line or "integer" in line
    _fails(capsys, ["trace", "--bogus"], "--bogus")
    _fails(capsys, ["replay"], "--workload-configuration")
    _fails(capsys, ["nosuchverb"], "nosuchverb")


# ---------------------------------------------------------------------------------------------------------
# the real entry point, in processes of their own
# ---------------------------------------------------------------------------------------------------------

# One interpreter imports pipesim once, then forks a child per case: the child runs the console script's own
# function (`astra_driver.cli.run`, sys.exit included) with its stdout/stderr on files, so each case still gets
# a real exit status and real file descriptors, without 0.5 s of start-up each (14 fresh interpreters cost
# 8-18 s on 2 cores). Two cases also start fresh interpreters: `python -m astra_driver.cli` and the `pipesim`
# script.
_FORKING_RUNNER = """
import json, os, sys, traceback
import astra_driver.cli as cli
cli._register_verbs([])
cases = json.load(sys.stdin)
children = {}
for name, (argv, out, err) in cases.items():
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = ["pipesim", *argv]
        code = 1
        try:
            cli.run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    children[pid] = name
codes = {}
while children:
    pid, status = os.wait()
    codes[children.pop(pid)] = os.waitstatus_to_exitcode(status)
json.dump(codes, sys.stdout)
"""


def test_real_entry_point(tmp_path: Path, good: Path) -> None:
    run = write_small_run(tmp_path / "run")
    stuck = _workload(tmp_path, _unmatched_recv)
    abort = write_script(tmp_path / "abort", "echo 'Assertion failed' >&2; exit 134")
    sleeper = write_script(tmp_path / "sleeper", "sleep 30")
    prefix = _bad_et(good, tmp_path / "gz", "gzip")
    out = tmp_path / "out"
    shutil.copytree(good, out / "x")
    before = _snapshot(out)
    cases: dict[str, tuple[list, list[str]]] = {
        "missing cluster": (["trace", "--cluster-config", tmp_path / "nope.json", "--prefill", "8"], ["nope.json"]),
        "bad field": (
            ["trace", "--cluster-config", _cluster(tmp_path, "bw", lambda d: d.update(link_bw=-5)), "--prefill", "8"],
            ["bw.json", "link_bw"],
        ),
        "empty batch into an existing output": (
            ["trace", "--cluster-config", CLUSTER, "--out-dir", out, "--name", "x"],
            ["batch is empty"],
        ),
        "bad --decode": (["trace", "--cluster-config", CLUSTER, "--decode", "4y8"], ["--decode"]),
        "usage error": (["trace", "--tp", "two"], ["--tp"]),
        "convert missing CSV": (["convert", tmp_path / "nope.csv"], ["nope.csv"]),
        "inspect gzip": (["inspect", prefix], ["gunzip"]),
        "validate missing": (["validate", tmp_path / "none"], ["none.0.et"]),
        "replay missing network": (_replay(run, network=tmp_path / "n.yml"), ["n.yml"]),
        "replay deadlock": (_replay(run, workload=stuck), ["stalled", "rank 1 node 0"]),
        "astra-sim exits 134": (
            _replay(run) + ["--backend", "astra-sim", "--astra-sim-bin", abort, "--logging-folder", tmp_path / "l1"],
            ["exit 134"],
        ),
        "astra-sim past --timeout": (
            _replay(run)
            + ["--backend", "astra-sim", "--astra-sim-bin", sleeper, "--timeout", "0.5"]
            + ["--logging-folder", tmp_path / "l2"],
            ["timeout"],
        ),
        "unknown backend": (_replay(run) + ["--backend", "ns3"], ["ns3"]),
    }
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ASTRA_SIM_BIN", None)
    fresh = {"python -m astra_driver.cli": [sys.executable, "-m", "astra_driver.cli", "inspect", str(prefix)]}
    cases["python -m astra_driver.cli"] = ([], ["gunzip"])
    script = shutil.which("pipesim")
    if script is not None:
        fresh["pipesim script"] = [script, "validate", str(tmp_path / "none")]
        cases["pipesim script"] = ([], ["none.0.et"])
    processes = {
        name: subprocess.Popen(
            command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, command in fresh.items()
    }
    captured = tmp_path / "captured"
    captured.mkdir()
    forked = {
        name: ([str(arg) for arg in argv], str(captured / f"{index}.out"), str(captured / f"{index}.err"))
        for index, (name, (argv, _)) in enumerate(cases.items())
        if name not in fresh
    }
    runner = subprocess.run(
        [sys.executable, "-c", _FORKING_RUNNER],
        cwd=tmp_path,
        env=env,
        input=json.dumps(forked),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert runner.returncode == 0 and not runner.stderr, runner.stderr
    codes = json.loads(runner.stdout)
    outputs = {
        name: (codes[name], Path(out).read_bytes(), Path(err).read_bytes()) for name, (_, out, err) in forked.items()
    }
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"{name}: hung")
        outputs[name] = (process.returncode, stdout, stderr)
    assert sorted(outputs) == sorted(cases)
    for name, (code, stdout, stderr) in outputs.items():
        assert stdout == b"", (name, stdout)
        _one_line_error(code, stderr.decode(), tuple(cases[name][1]))
    assert _snapshot(out) == before


# ---------------------------------------------------------------------------------------------------------
# error lines stay short and printable (llm_converter.errors: name_first, and PipesimError's own cap)
# ---------------------------------------------------------------------------------------------------------


def test_error_lines_stay_short_and_printable() -> None:
    from llm_converter.errors import MAX_MESSAGE_CHARS, PipesimError, name_first

    assert name_first(range(100_000)) == "0, 1, 2, 3, 4 and 99995 more"
    assert name_first([7, 9]) == "7, 9"
    long = PipesimError("x.json: " + "ab" * 100_000 + "; the fix")
    assert len(str(long)) <= MAX_MESSAGE_CHARS + 40 and str(long).startswith("x.json: abab")
    assert str(long).endswith("; the fix") and "characters left out" in str(long)
    # Control characters and lone surrogates from a file's text come out as escapes, on one line.
    assert str(PipesimError("a\nb\x1b[31m\x00 \ud800")) == "a b\\x1b[31m\\x00 \\ud800"


def test_a_stall_across_many_ranks_is_one_short_line() -> None:
    """The engine names up to three stuck nodes per rank: 300 stuck ranks still print one short line."""
    from astra_driver.astra_config import AstraConfig, NetworkConfig
    from astra_driver.engine import DeadlockError, simulate
    from llm_converter.errors import MAX_MESSAGE_CHARS
    from llm_converter.graph import GraphBuilder, Workload

    builders = [GraphBuilder(rank) for rank in range(300)]
    for rank, builder in enumerate(builders):
        builder.recv("never", src=(rank + 1) % 300, tag=1, size=8)
    config = AstraConfig(network=NetworkConfig(["FullyConnected"], [300], [50.0], [500.0]))
    with pytest.raises(DeadlockError) as caught:
        simulate(Workload([b.graph for b in builders]), config)
    assert len(str(caught.value)) <= MAX_MESSAGE_CHARS + 40 and "\n" not in str(caught.value)
    assert len(caught.value.stuck) == 300  # programs still get every stuck rank


def test_main_builds_the_click_command_once_per_set_of_verbs(monkeypatch, capsys) -> None:
    """Building typer's click command inspects every verb's signature (0.07 s with all verbs registered): main()
    rebuilt it on every call, 20 of the fuzz test's 23 s. Calls with the same verbs reuse it; a newly registered
    verb rebuilds it."""
    import typer.main

    import astra_driver.cli as cli

    builds = []
    real = typer.main.get_command

    def counting(app):
        builds.append(app)
        return real(app)

    cli._register_verbs([])  # every verb module imported: the set of verbs stays the same below
    monkeypatch.setattr(typer.main, "get_command", counting)
    monkeypatch.setattr(cli, "_built", None, raising=False)
    for _ in range(3):
        assert main(["replay", "--help"]) == 0
        assert main(["inspect", "--help"]) == 0
    assert "--workload-configuration" in capsys.readouterr().out
    assert len(builds) == 1

    @cli.app.command("qa-probe", hidden=True)
    def probe() -> None:
        print("probe ran")

    try:
        assert main(["qa-probe"]) == 0
        assert capsys.readouterr().out == "probe ran\n"
        assert len(builds) == 2
    finally:
        cli.app.registered_commands.pop()
        monkeypatch.setattr(cli, "_built", None)
