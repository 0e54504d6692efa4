"""The backends: ASTRA-Sim's command line, the driver's handling of a binary's exit codes, output and logs
(with fake executables written into tmp_path), docker, the builtin engine, and the real binary when given."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from astra_driver import backends
from astra_driver.astra_output import NodeTime
from astra_driver.backends import (
    AstraSimBackend,
    BackendOptions,
    DockerBackend,
    ReplayRun,
    astra_sim_arguments,
    get_backend,
    replay,
    resolve_astra_sim_bin,
)
from llm_converter.errors import PipesimError
from tests.conftest import CONFORMANCE, conformance_cases
from tests.fixtures.fake_astra import (
    SMALL_EXPOSED_NS,
    SMALL_FINISH_NS,
    SMALL_NODE_TICKS,
    fake_docker,
    good_binary,
    heredoc,
    path_with,
    small_stdout_lines,
    write_script,
    write_small_run,
)


def _engine_ready() -> bool:
    try:
        from astra_driver import engine
    except ImportError:
        return False
    return hasattr(engine, "simulate")


needs_engine = pytest.mark.skipif(not _engine_ready(), reason="astra_driver.engine.simulate has not landed yet")


def _options(binary: Path) -> BackendOptions:
    return BackendOptions(astra_sim_bin=str(binary), env={})


def _conformance_run(case: str, logging_folder: Path | None = None) -> ReplayRun:
    folder = CONFORMANCE / case
    groups = folder / "comm_groups.json"
    return ReplayRun(
        workload=folder / "workload",
        system=folder / "system.json",
        network=folder / "network.yml",
        memory=folder / "memory.json",
        comm_groups=groups if groups.is_file() else None,
        logging_folder=logging_folder,
        timeout_s=120.0,
    )


# --- command line ------------------------------------------------------------------------------------------


def test_astra_sim_arguments_exact() -> None:
    run = ReplayRun(Path("t/llm"), Path("s.json"), Path("n.yml"), Path("m.json"))
    assert astra_sim_arguments(run, Path("logs")) == [
        "--workload-configuration=t/llm",
        "--system-configuration=s.json",
        "--network-configuration=n.yml",
        "--remote-memory-configuration=m.json",
        "--logging-folder=logs",
    ]
    grouped = ReplayRun(Path("t/llm"), Path("s.json"), Path("n.yml"), Path("m.json"), comm_groups=Path("g.json"))
    args = astra_sim_arguments(grouped, Path("logs"), absolute=True)
    cwd = Path.cwd()
    assert args == [
        f"--workload-configuration={cwd / 't/llm'}",
        f"--system-configuration={cwd / 's.json'}",
        f"--network-configuration={cwd / 'n.yml'}",
        f"--remote-memory-configuration={cwd / 'm.json'}",
        f"--comm-group-configuration={cwd / 'g.json'}",
        f"--logging-folder={cwd / 'logs'}",
    ]


def test_astra_sim_other_flags_pass_through() -> None:
    run = ReplayRun(
        Path("w"),
        Path("s.json"),
        Path("n.yml"),
        Path("m.json"),
        injection_scale=2.0,
        comm_scale=1.5,
        compute_scale=1.0,
        num_queues_per_dim=2,
        rendezvous_protocol="false",
        logging_configuration=Path("spd.toml"),
    )
    assert astra_sim_arguments(run, Path("log"))[4:] == [
        "--injection-scale=2",
        "--comm-scale=1.5",
        "--compute-scale=1",
        "--num-queues-per-dim=2",
        "--rendezvous-protocol=false",
        "--logging-configuration=spd.toml",
        "--logging-folder=log",
    ]


def test_float_flags_pass_through_exactly() -> None:
    """:g kept six significant digits: --injection-scale 1.0000001 reached the binary as 1, 0.1234567 as 0.123457."""
    run = ReplayRun(
        Path("w"), Path("s.json"), Path("n.yml"), Path("m.json"), injection_scale=1.0000001, comm_scale=0.1234567
    )
    assert astra_sim_arguments(run, Path("log"))[4:6] == ["--injection-scale=1.0000001", "--comm-scale=0.1234567"]


def test_binary_command_defaults_to_astra_sims_log_folder(tmp_path: Path) -> None:
    binary = good_binary(tmp_path / "astra")
    run = ReplayRun(Path("w"), Path("s.json"), Path("n.yml"), Path("m.json"))
    command = AstraSimBackend(_options(binary)).command(run)
    assert command[0] == str(binary)
    assert command[-1] == "--logging-folder=log"


# --- resolving the binary ----------------------------------------------------------------------------------


def test_binary_not_set() -> None:
    with pytest.raises(PipesimError, match="pass --astra-sim-bin PATH or set ASTRA_SIM_BIN"):
        resolve_astra_sim_bin(None, {})


def test_binary_from_env_and_path(tmp_path: Path) -> None:
    binary = good_binary(tmp_path / "bin" / "AstraSim_Fake")
    assert resolve_astra_sim_bin(None, {"ASTRA_SIM_BIN": str(binary)}) == binary
    # A bare name is looked up on PATH, like a shell would.
    assert resolve_astra_sim_bin("AstraSim_Fake", {"PATH": str(tmp_path / "bin")}) == binary
    with pytest.raises(PipesimError, match="AstraSim_Other: not found on PATH"):
        resolve_astra_sim_bin("AstraSim_Other", {"PATH": str(tmp_path / "bin")})


def test_binary_missing_directory_not_executable(tmp_path: Path) -> None:
    with pytest.raises(PipesimError, match=r"no such file \(given as --astra-sim-bin\)"):
        resolve_astra_sim_bin(str(tmp_path / "nope"), {})
    with pytest.raises(PipesimError, match=r"is a directory \(given as \$ASTRA_SIM_BIN\)"):
        resolve_astra_sim_bin(None, {"ASTRA_SIM_BIN": str(tmp_path)})
    plain = tmp_path / "astra"
    plain.write_text("#!/bin/bash\n")
    with pytest.raises(PipesimError, match="not executable .*chmod \\+x"):
        resolve_astra_sim_bin(str(plain), {})


# --- a binary's runs ---------------------------------------------------------------------------------------


def test_good_run_parses_stdout_and_trace(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    run = replace(run, record_node_times=True)
    binary = good_binary(tmp_path / "astra")
    result = replay(run, "astra-sim", _options(binary))
    assert result.backend == "astra-sim"
    assert result.finish_ns == SMALL_FINISH_NS
    assert result.exposed_comm_ns == SMALL_EXPOSED_NS
    assert result.finish_lines() == [
        "sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.",
        "sys[1] finished, 2020031 cycles, exposed communication 1020031 cycles.",
    ]
    expected = [[], []]
    for rank, node_id, name, node_type, issue, end in SMALL_NODE_TICKS:
        expected[rank].append(NodeTime(node_id, name, node_type, issue, end))
    assert result.node_times == expected
    log = run.logging_folder
    assert result.stdout_path == log / "astra-sim.stdout.txt"
    assert result.log_path == log / "log.log"
    # The binary got exactly ASTRA-Sim's flags.
    assert (log / "args.txt").read_text().splitlines() == astra_sim_arguments(run, log)


def test_stale_log_is_not_read_as_this_runs_trace(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    run = replace(run, record_node_times=True)
    run.logging_folder.mkdir(parents=True)
    (run.logging_folder / "log.log").write_text("issue,sys->id=1, tick=5, node->id=9, node->name=old, node->type=4\n")
    binary = write_script(tmp_path / "astra", heredoc(small_stdout_lines()))  # writes no log.log
    with pytest.raises(PipesimError, match="log.log: no such file"):
        replay(run, "astra-sim", _options(binary))


def test_node_times_need_trace_enabled(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run", trace_enabled=False)
    run = replace(run, record_node_times=True)
    with pytest.raises(PipesimError, match='system.json: trace-enabled is not set; add "trace-enabled": 1'):
        replay(run, "astra-sim", _options(good_binary(tmp_path / "astra")))


def test_exit_255_bad_options(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    binary = write_script(
        tmp_path / "astra", "echo \"Error parsing options: Option 'workload-configuration' has no value\" >&2; exit 255"
    )
    with pytest.raises(PipesimError) as info:
        replay(run, "astra-sim", _options(binary))
    message = str(info.value)
    assert "rejected its options (exit 255)" in message
    assert "Error parsing options: Option 'workload-configuration' has no value" in message
    assert "\n" not in message


def test_exit_134_quotes_the_assertion(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    assertion = "AstraSim: astra-sim/system/Sys.cc:120: Sys::Sys(): Assertion `endpoint_delay > 0' failed."
    binary = write_script(
        tmp_path / "astra", "echo starting\n" + heredoc([assertion]).replace("cat", "cat >&2", 1) + "exit 134"
    )
    with pytest.raises(PipesimError, match=r"aborted \(exit 134\): .*Assertion `endpoint_delay > 0' failed"):
        replay(run, "astra-sim", _options(binary))


def test_killed_by_signal_and_other_exit(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    terminate = "terminate called after throwing an instance of 'std::runtime_error'"
    binary = write_script(tmp_path / "astra", f'echo "{terminate}" >&2\nkill -ABRT $$')
    with pytest.raises(PipesimError, match=f"killed by SIGABRT: {terminate}; see "):
        replay(run, "astra-sim", _options(binary))
    binary = write_script(tmp_path / "astra3", 'echo "last words on stdout"\nexit 3')
    with pytest.raises(PipesimError, match=r"failed \(exit 3\): last words on stdout; see "):
        replay(run, "astra-sim", _options(binary))


def test_stall_names_the_ranks_that_never_finished(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    binary = write_script(tmp_path / "astra", heredoc(small_stdout_lines(ranks=[0])))
    with pytest.raises(PipesimError) as info:
        replay(run, "astra-sim", _options(binary))
    message = str(info.value)
    assert "exited 0 but rank(s) 1 of 2 never printed 'finished'" in message
    assert str(run.logging_folder / "astra-sim.stdout.txt") in message


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    run = replace(run, timeout_s=0.5)
    # The child sleep would outlive a kill of the shell alone.
    binary = write_script(tmp_path / "astra", 'sleep 30 &\necho $! > "$LOG/child.pid"\nwait')
    started = time.monotonic()
    with pytest.raises(PipesimError, match=r"still running after the 0.5 s timeout, killed; raise --timeout"):
        replay(run, "astra-sim", _options(binary))
    assert time.monotonic() - started < 10
    child = int((run.logging_folder / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped by init


def test_missing_config_file_fails_before_starting(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    (tmp_path / "run" / "memory.json").unlink()
    binary = good_binary(tmp_path / "astra")
    with pytest.raises(PipesimError, match=r"memory.json: no such file \(given as --remote-memory-configuration\)"):
        replay(run, "astra-sim", _options(binary))
    assert not (run.logging_folder / "args.txt").exists()


# --- docker -----------------------------------------------------------------------------------------------


def test_docker_missing(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    options = BackendOptions(docker_image="astra:good", env={"PATH": str(tmp_path / "empty")})
    with pytest.raises(PipesimError, match="docker: not found on PATH"):
        replay(run, "docker", options)


def test_docker_image_not_set_or_missing(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    fake_docker(tmp_path / "bin")
    with pytest.raises(PipesimError, match="pass --docker-image IMAGE or set PIPESIM_DOCKER_IMAGE"):
        replay(run, "docker", BackendOptions(env=path_with(tmp_path / "bin")))
    options = BackendOptions(docker_image="astra:absent", env=path_with(tmp_path / "bin"))
    with pytest.raises(PipesimError, match="docker image astra:absent: not found locally .*docker pull astra:absent"):
        replay(run, "docker", options)


def test_docker_daemon_down(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    message = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    write_script(tmp_path / "bin" / "docker", f'echo "{message}" >&2; exit 1')
    options = BackendOptions(docker_image="astra:good", env=path_with(tmp_path / "bin"))
    with pytest.raises(PipesimError, match="docker: the daemon is not reachable .*start dockerd or fix DOCKER_HOST"):
        replay(run, "docker", options)


def test_docker_good_run_mounts_and_flags(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    run = replace(run, record_node_times=True)
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    good_binary(bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware")
    env = {**path_with(bin_dir), "PIPESIM_DOCKER_IMAGE": "astra:good"}
    result = replay(run, "docker", BackendOptions(env=env))
    assert result.backend == "docker"
    assert result.finish_ns == SMALL_FINISH_NS
    assert result.exposed_comm_ns == SMALL_EXPOSED_NS
    assert [len(rank) for rank in result.node_times] == [2, 2]
    args = (bin_dir / "docker_args.txt").read_text().splitlines()
    run_folder = str((tmp_path / "run").resolve())
    log_folder = str((tmp_path / "run" / "log").resolve())
    # --init: the binary is not PID 1, so an abort exits 134 as it does natively (139 as PID 1).
    assert args[:4] == ["run", "--rm", "--init", args[3]] and args[3].startswith("--name=pipesim-")
    assert f"--user={os.getuid()}:{os.getgid()}" in args
    mounts = [arg for arg in args if arg.startswith("--mount=")]
    assert mounts == [
        f"--mount=type=bind,source={run_folder},target={run_folder}",
        f"--mount=type=bind,source={log_folder},target={log_folder}",
    ]
    image_at = args.index("astra:good")
    assert args[image_at + 1] == "AstraSim_Analytical_Congestion_Unaware"
    assert args[image_at + 2 :] == astra_sim_arguments(run, run.logging_folder, absolute=True)


def test_docker_binary_missing_in_image(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    fake_docker(tmp_path / "bin")
    options = BackendOptions(
        docker_image="astra:good", docker_binary="/opt/astra/bin/AstraSim", env=path_with(tmp_path / "bin")
    )
    with pytest.raises(
        PipesimError, match="/opt/astra/bin/AstraSim: not found inside image astra:good; set --docker-binary"
    ):
        replay(run, "docker", options)


# --- registry ---------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert sorted(backends.BACKENDS) == ["astra-sim", "builtin", "docker"]
    assert isinstance(get_backend("docker"), DockerBackend)
    with pytest.raises(PipesimError, match="unknown backend 'ns3'; choose one of builtin, astra-sim, docker"):
        get_backend("ns3")


# --- builtin engine ---------------------------------------------------------------------------------------


@needs_engine
@pytest.mark.parametrize("case", conformance_cases())
def test_builtin_matches_conformance(case: str, tmp_path: Path) -> None:
    expected = json.loads((CONFORMANCE / case / "expected.json").read_text())
    run = replace(_conformance_run(case, tmp_path / "log"), record_node_times=True)
    result = replay(run, "builtin")
    assert result.finish_ns == expected["finish_ns"]
    assert result.exposed_comm_ns == expected["exposed_comm_ns"]
    for rank, times in enumerate(result.node_times):
        got = {str(entry.node_id): [entry.issue_ns, entry.end_ns] for entry in times}
        assert got == expected["node_ticks"][str(rank)]
    # trace-enabled is set in every case's system.json: log.log holds ASTRA-Sim's trace lines, which parse back.
    from astra_driver.astra_output import node_times_from_trace, parse_finish_lines, read_lines

    lines = read_lines(result.log_path)
    assert node_times_from_trace(lines, expected["npus"]) == result.node_times
    finished = parse_finish_lines(lines)
    assert [finished[r].finish_ns for r in range(expected["npus"])] == expected["finish_ns"]


@needs_engine
def test_builtin_small_run_hand_computed(tmp_path: Path) -> None:
    # 2-NPU ring, 50 GB/s (2^30 bytes), 500 ns: 1 MiB takes floor(500 + 2^20 / (50 * 2^30 / 1e9)) = 20031 ns.
    run = replace(write_small_run(tmp_path / "run"), record_node_times=True)
    result = replay(run, "builtin")
    assert result.backend == "builtin"
    assert result.finish_ns == SMALL_FINISH_NS == [1_000_000 + 20031, 1_000_000 + 20031 + 1_000_000]
    assert result.exposed_comm_ns == SMALL_EXPOSED_NS
    expected = [[], []]
    for rank, node_id, name, node_type, issue, end in SMALL_NODE_TICKS:
        expected[rank].append(NodeTime(node_id, name, node_type, issue, end))
    assert result.node_times == expected
    assert result.stdout_path is None
    # trace-enabled: log.log holds ASTRA-Sim's trace lines in causal order, then the finish lines.
    assert result.log_path == run.logging_folder / "log.log"
    assert result.log_path.read_text().splitlines() == [
        "issue,sys->id=0, tick=0, node->id=0, node->name=compute, node->type=4",
        "issue,sys->id=1, tick=0, node->id=0, node->name=recv_from_0, node->type=6",
        "callback,sys->id=0, tick=1000000, node->id=0, node->name=compute, node->type=4",
        "issue,sys->id=0, tick=1000000, node->id=1, node->name=send_to_1, node->type=5",
        "callback,sys->id=0, tick=1020031, node->id=1, node->name=send_to_1, node->type=5",
        "callback,sys->id=1, tick=1020031, node->id=0, node->name=recv_from_0, node->type=6",
        "issue,sys->id=1, tick=1020031, node->id=1, node->name=compute, after recv, node->type=4",
        "callback,sys->id=1, tick=2020031, node->id=1, node->name=compute, after recv, node->type=4",
        "sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.",
        "sys[1] finished, 2020031 cycles, exposed communication 1020031 cycles.",
    ]


@needs_engine
def test_builtin_without_trace_or_folder_writes_no_trace(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run", trace_enabled=False)
    result = replay(run, "builtin")
    assert result.node_times is None
    assert result.log_path.read_text().splitlines() == [
        "sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.",
        "sys[1] finished, 2020031 cycles, exposed communication 1020031 cycles.",
    ]
    result = replay(replace(run, logging_folder=None), "builtin")
    assert result.log_path is None and result.finish_ns == SMALL_FINISH_NS


@needs_engine
def test_builtin_stall_is_a_one_line_error(tmp_path: Path) -> None:
    from llm_converter.chakra.writer import write_workload
    from llm_converter.graph import GraphBuilder, Workload

    run = write_small_run(tmp_path / "run")
    sender = GraphBuilder(0)
    sender.send("send_to_1", dst=1, tag=7, size=1 << 20)
    receiver = GraphBuilder(1)
    receiver.recv("recv_from_0", src=0, tag=7, size=1 << 19)  # size mismatch: never matched
    write_workload(run.workload, Workload([sender.graph, receiver.graph]))
    with pytest.raises(PipesimError, match="stalled") as info:
        replay(run, "builtin")
    assert "\n" not in str(info.value)


@needs_engine
def test_builtin_injection_scale_and_unmodelled_flags(tmp_path: Path) -> None:
    from llm_converter.chakra.writer import write_workload
    from llm_converter.graph import CollectiveType, GraphBuilder, Workload

    run = write_small_run(tmp_path / "run")
    (tmp_path / "run" / "network.yml").write_text(
        "topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50.0 ]\nlatency: [ 500.0 ]\n"
    )
    builders = [GraphBuilder(rank) for rank in range(4)]
    for builder in builders:
        builder.collective("grad_ar", CollectiveType.ALL_REDUCE, 1 << 20)
    write_workload(run.workload, Workload([b.graph for b in builders]))
    # README ring all-reduce, P = 4, n = 4: m = 2^20 / 4 / 4, s = 6, r = 3; the (s + 1) * endpoint-delay term
    # scales with --injection-scale (ASTRA-Sim multiplies endpoint-delay by it).
    step = int(500 + 65536 / (50 * 2**30 / 1e9))
    reduce = 3 * (65536 // 1600)

    def closed_form(endpoint_delay: int) -> int:
        return 4 * (6 * step + 3 * reduce + 7 * endpoint_delay)

    assert closed_form(10) == 43000
    assert replay(run, "builtin").finish_ns == [closed_form(10)] * 4
    scaled = replay(replace(run, injection_scale=3.0, comm_scale=7.0, rendezvous_protocol="false"), "builtin")
    assert scaled.finish_ns == [closed_form(30)] * 4
    for change, flag in (
        ({"compute_scale": 2.0}, "--compute-scale 2"),
        ({"num_queues_per_dim": 4}, "--num-queues-per-dim 4"),
        ({"rendezvous_protocol": "true"}, "--rendezvous-protocol true"),
    ):
        with pytest.raises(PipesimError, match=f"{flag}: the builtin engine does not model it"):
            replay(replace(run, **change), "builtin")


@needs_engine
def test_builtin_rank_count_mismatch(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    (tmp_path / "run" / "network.yml").write_text(
        "topology: [ Ring ]\nnpus_count: [ 4 ]\nbandwidth: [ 50 ]\nlatency: [ 1 ]\n"
    )
    with pytest.raises(PipesimError, match=r"workload.2.et: no such file; network.yml describes 4 NPUs"):
        replay(run, "builtin")


# --- the real binary, when the user has one -----------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("ASTRA_SIM_BIN"), reason="set ASTRA_SIM_BIN to run the real ASTRA-Sim binary")
@pytest.mark.parametrize("case", conformance_cases())
def test_real_binary_matches_conformance(case: str, tmp_path: Path) -> None:
    expected = json.loads((CONFORMANCE / case / "expected.json").read_text())
    run = replace(_conformance_run(case, tmp_path / "log"), record_node_times=True)
    result = replay(run, "astra-sim", BackendOptions())
    assert result.finish_ns == expected["finish_ns"]
    assert result.exposed_comm_ns == expected["exposed_comm_ns"]
    for rank, times in enumerate(result.node_times):
        assert {str(t.node_id): [t.issue_ns, t.end_ns] for t in times} == expected["node_ticks"][str(rank)]
    if _engine_ready():
        builtin = replay(_conformance_run(case), "builtin")
        assert builtin.finish_ns == result.finish_ns
        assert builtin.exposed_comm_ns == result.exposed_comm_ns


# --- docker: what a real daemon showed (fake docker here; tests/test_docker_real.py runs the real one) -------


def _docker_options(bin_dir: Path, **kwargs) -> BackendOptions:
    return BackendOptions(docker_image="astra:good", env=path_with(bin_dir), **kwargs)


def _run_args(bin_dir: Path) -> list[str]:
    return (bin_dir / "docker_args.txt").read_text().splitlines()


def test_docker_125_quotes_the_real_error_not_the_help_hint(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    spec = "docker: Error response from daemon: invalid spec: /a:b:/a:b: too many colons."
    write_script(
        bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware",
        heredoc([spec, "", "Run 'docker run --help' for more information"]).replace("cat", "cat >&2", 1) + "exit 125",
    )
    with pytest.raises(PipesimError) as info:
        replay(run, "docker", _docker_options(bin_dir))
    assert f"docker run astra:good failed: {spec}; see " in str(info.value)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (134, r"AstraSim_Analytical_Congestion_Unaware in astra:good aborted \(exit 134\): .*Assertion"),
        (139, r"in astra:good was killed by SIGSEGV \(exit 139\): .*Assertion"),
        (137, r"in astra:good was killed by SIGKILL \(exit 137\)"),
        (3, r"in astra:good failed \(exit 3\)"),
    ],
)
def test_docker_exit_codes_of_the_init_process(tmp_path: Path, code: int, expected: str) -> None:
    """With --init the binary is not PID 1: a signal reads 128 + N (an abort 134, as natively)."""
    run = write_small_run(tmp_path / "run")
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    assertion = "AstraSim: EventQueue.cc:40: Assertion `new_time > current_time' failed."
    write_script(
        bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware",
        heredoc([assertion]).replace("cat", "cat >&2", 1) + f"exit {code}",
    )
    with pytest.raises(PipesimError, match=expected):
        replay(run, "docker", _docker_options(bin_dir))
    assert "--init" in _run_args(bin_dir)


def test_docker_socket_permission_is_not_image_not_found(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    message = (
        "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock: "
        'Get "http://%2Fvar%2Frun%2Fdocker.sock/v1.47/images/astra:good/json": dial unix /var/run/docker.sock: '
        "connect: permission denied"
    )
    write_script(tmp_path / "bin" / "docker", f"echo '{message}' >&2; exit 1")
    with pytest.raises(PipesimError) as info:
        replay(run, "docker", _docker_options(tmp_path / "bin"))
    text = str(info.value)
    assert text.startswith("docker: no permission to talk to the daemon (permission denied while trying")
    assert "add your user to the docker group" in text and "not found" not in text


def test_docker_paths_with_colon_and_comma_are_mounted(tmp_path: Path) -> None:
    """`-v SRC:DST` cannot hold a `:`; --mount can, and a `,` is CSV-quoted as docker reads the value."""
    run = write_small_run(tmp_path / "a:b,c")
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    good_binary(bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware")
    assert replay(run, "docker", _docker_options(bin_dir)).finish_ns == SMALL_FINISH_NS
    folder = tmp_path / "a:b,c"
    mounts = [arg for arg in _run_args(bin_dir) if arg.startswith("--mount=")]
    assert mounts == [
        f'--mount=type=bind,"source={folder}","target={folder}"',
        f'--mount=type=bind,"source={folder / "log"}","target={folder / "log"}"',
    ]


def test_docker_mounts_what_symlinked_inputs_point_to(tmp_path: Path) -> None:
    """A config file (or .et file) that is a link out of the mounted folders dangled inside the container."""
    run = write_small_run(tmp_path / "real")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "system.json").symlink_to(run.system)  # absolute link
    (linked / "hop").mkdir()
    (linked / "hop" / "network.yml").symlink_to(Path("../../real/network.yml"))  # relative, via a second folder
    (linked / "network.yml").symlink_to(Path("hop/network.yml"))
    for rank in (0, 1):
        (linked / f"workload.{rank}.et").symlink_to(tmp_path / "real" / f"workload.{rank}.et")
    run = replace(
        run,
        workload=linked / "workload",
        system=linked / "system.json",
        network=linked / "network.yml",
        logging_folder=linked / "log",
    )
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    good_binary(bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware")
    assert DockerBackend(_docker_options(bin_dir)).mounted_folders(run) == [
        linked,
        linked / "hop",
        linked / "log",
        tmp_path / "real",
    ]
    assert replay(run, "docker", _docker_options(bin_dir)).finish_ns == SMALL_FINISH_NS


def test_docker_refuses_to_mount_over_the_images_system(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    (tmp_path / "memory.json").symlink_to("/etc/hostname")
    run = replace(run, memory=tmp_path / "memory.json")
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    with pytest.raises(PipesimError, match=r"^/etc: the docker backend mounts the folders .* would hide the image's"):
        replay(run, "docker", _docker_options(bin_dir))


# --- endpoint-delay 0 -------------------------------------------------------------------------------------


def _set_endpoint_delay(run: ReplayRun, delay: int) -> None:
    system = json.loads(run.system.read_text())
    system["endpoint-delay"] = delay
    run.system.write_text(json.dumps(system))


@needs_engine
def test_endpoint_delay_zero_runs_sends_and_recvs_with_the_same_times(tmp_path: Path) -> None:
    """Real ASTRA-Sim runs a send/recv-only workload with endpoint-delay 0, with the times of the default 10."""
    run = replace(write_small_run(tmp_path / "run"), record_node_times=True)
    default = replay(run, "builtin")
    _set_endpoint_delay(run, 0)
    zero = replay(run, "builtin")
    assert zero.finish_ns == default.finish_ns == SMALL_FINISH_NS
    assert zero.node_times == default.node_times


@needs_engine
def test_endpoint_delay_zero_with_a_collective_is_refused(tmp_path: Path) -> None:
    from llm_converter.chakra.writer import write_workload
    from llm_converter.graph import CollectiveType, GraphBuilder, Workload

    run = write_small_run(tmp_path / "run")
    builders = [GraphBuilder(rank) for rank in range(2)]
    for builder in builders:
        compute = builder.comp("fwd", 10)
        builder.collective("grad_ar", CollectiveType.ALL_REDUCE, 1 << 20, deps=[compute])
    write_workload(run.workload, Workload([b.graph for b in builders]))
    _set_endpoint_delay(run, 0)
    with pytest.raises(PipesimError) as info:
        replay(run, "builtin")
    message = str(info.value)
    assert message.startswith(
        f"{run.system}: endpoint-delay = 0 is 0 ns and rank 0 runs collective node 1 ('grad_ar'): ASTRA-Sim aborts"
    )
    # --injection-scale multiplies it: 1 * 0.5 truncates to 0 as well.
    _set_endpoint_delay(run, 1)
    with pytest.raises(PipesimError, match=r"endpoint-delay = 1 \(times --injection-scale 0.5\) is 0 ns"):
        replay(replace(run, injection_scale=0.5), "builtin")
    assert replay(run, "builtin").finish_ns[0] > 0
    _set_endpoint_delay(run, -1)
    with pytest.raises(PipesimError, match="endpoint-delay = -1; ASTRA-Sim asserts it is > 0"):
        replay(run, "builtin")


def test_abort_with_endpoint_delay_zero_says_why(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    _set_endpoint_delay(run, 0)
    assertion = "AstraSim: EventQueue.cc:58: Assertion `new_time > current_time' failed."
    binary = write_script(tmp_path / "astra", heredoc([assertion]).replace("cat", "cat >&2", 1) + "exit 134")
    with pytest.raises(PipesimError) as info:
        replay(run, "astra-sim", _options(binary))
    assert f"{assertion} (endpoint-delay is 0 in {run.system}: ASTRA-Sim aborts on it once a collective runs" in str(
        info.value
    )
