"""The docker backend and the Dockerfile against a real Docker daemon (`bash ../shared/tools/docker-daemon.sh` starts
one), with a stand-in ASTRA-Sim image built from tests/fixtures/fake_astra.py's scripts.

Skipped where no daemon answers (CI). The backend tests take a few seconds; building pipesim's own image takes
half a minute, so it runs only with PIPESIM_TEST_DOCKER_BUILD=1. Every image built here has a per-session tag and
is removed at the end; every container is started with --rm.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from astra_driver.backends import BackendOptions, replay
from llm_converter.errors import PipesimError
from tests.conftest import REPO
from tests.fixtures.fake_astra import (
    SMALL_EXPOSED_NS,
    SMALL_FINISH_NS,
    SMALL_NODE_TICKS,
    STAND_IN_ASSERTION,
    STAND_IN_BIN,
    write_script,
    write_small_run,
    write_stand_in_image,
)

# Local base images docker-daemon.sh makes (no registry can be pulled from): the first one present is used.
BASE_IMAGES = [os.environ.get("PIPESIM_TEST_BASE_IMAGE", ""), "bookworm-local:latest", "python-local:3.11"]
PYTHON_BASE_IMAGE = os.environ.get("PIPESIM_TEST_PYTHON_IMAGE", "python-local:3.11")


def _docker(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _daemon_up() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _present(image: str) -> bool:
    return bool(image) and _docker("image", "inspect", image, timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(not _daemon_up(), reason="no docker daemon (bash ../shared/tools/docker-daemon.sh)")


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    """The stand-in ASTRA-Sim image's tag (built once for this module, removed after)."""
    base = next((image for image in BASE_IMAGES if _present(image)), None)
    if base is None:
        pytest.skip(f"none of the local base images {BASE_IMAGES[1:]} is present (run docker-daemon.sh)")
    tag = f"pipesim-test/astra-stand-in:{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as context:
        built = _docker("build", "-q", "-t", tag, str(write_stand_in_image(Path(context), base, label=tag)))
    assert built.returncode == 0, built.stderr
    try:
        yield tag
    finally:
        for container in _containers(tag):  # a failed test's leftovers
            _docker("rm", "-f", container)
        _docker("rmi", "-f", tag)


def _containers(image: str) -> list[str]:
    return _docker("ps", "-aq", "--filter", f"ancestor={image}", timeout=30).stdout.split()


def test_real_docker_run_exact_results_and_logs_owned_by_the_caller(tmp_path: Path, stand_in: str) -> None:
    run = replace(write_small_run(tmp_path / "run"), record_node_times=True)
    result = replay(run, "docker", BackendOptions(docker_image=stand_in))
    assert result.finish_ns == SMALL_FINISH_NS
    assert result.exposed_comm_ns == SMALL_EXPOSED_NS
    assert [(rank, *entry) for rank, times in enumerate(result.node_times) for entry in times] == SMALL_NODE_TICKS
    for path in run.logging_folder.iterdir():
        assert (path.stat().st_uid, path.stat().st_gid) == (os.getuid(), os.getgid()), path
    assert _containers(stand_in) == []  # --rm


def test_real_docker_replay_timeline(tmp_path: Path, stand_in: str, capsys) -> None:
    """`pipesim replay --backend docker --timeline`: the node times come from the container's log.log."""
    from astra_driver.cli import main

    run = write_small_run(tmp_path / "run")
    out = tmp_path / "trace.json"
    code = main(
        [
            "replay",
            f"--workload-configuration={run.workload}",
            f"--system-configuration={run.system}",
            f"--network-configuration={run.network}",
            f"--remote-memory-configuration={run.memory}",
            f"--logging-folder={run.logging_folder}",
            "--backend=docker",
            f"--docker-image={stand_in}",
            f"--timeline={out}",
        ]
    )
    assert code == 0, capsys.readouterr().err
    events = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X"]
    got = sorted((e["pid"] - 1, e["args"]["node_id"], e["args"]["issue_ns"], e["args"]["end_ns"]) for e in events)
    assert got == sorted((rank, node, issue, end) for rank, node, _, _, issue, end in SMALL_NODE_TICKS)


def test_real_docker_abort_reads_134_with_the_assertion(tmp_path: Path, stand_in: str) -> None:
    """As PID 1 the binary's SIGABRT ended in SIGSEGV (exit 139); with --init it reads as natively."""
    run = write_small_run(tmp_path / "run")
    with pytest.raises(PipesimError) as info:
        replay(run, "docker", BackendOptions(docker_image=stand_in, docker_binary="astra_abort"))
    assert str(info.value).startswith(f"astra_abort in {stand_in} aborted (exit 134): {STAND_IN_ASSERTION}; see ")


def test_real_docker_paths_with_colon_comma_and_symlinks(tmp_path: Path, stand_in: str) -> None:
    """`-v` failed on ':' (docker's last line: "Run 'docker run --help'"); links out of the mounts dangled."""
    run = write_small_run(tmp_path / "a:b,c d")
    assert replay(run, "docker", BackendOptions(docker_image=stand_in)).finish_ns == SMALL_FINISH_NS
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("system.json", "network.yml", "memory.json", "workload.0.et", "workload.1.et"):
        (linked / name).symlink_to(run.workload.parent / name)
    run = replace(
        run,
        workload=linked / "workload",
        system=linked / "system.json",
        network=linked / "network.yml",
        memory=linked / "memory.json",
        logging_folder=linked / "log",
    )
    assert replay(run, "docker", BackendOptions(docker_image=stand_in)).finish_ns == SMALL_FINISH_NS
    # The binary read the links' own paths (mounted), not rewritten ones.
    assert f"--system-configuration={linked / 'system.json'}" in (linked / "log" / "args.txt").read_text()


def test_real_docker_image_missing(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    with pytest.raises(PipesimError, match=r"docker image pipesim-test/absent:0: not found locally"):
        replay(run, "docker", BackendOptions(docker_image="pipesim-test/absent:0"))


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_real_docker_socket_permission(tmp_path: Path, stand_in: str) -> None:
    """A user outside the docker group: the real socket refuses their client, which is not "image not found".
    The docker on PATH here is the real client run as nobody."""
    run = write_small_run(tmp_path / "run")
    wrapper = tmp_path / "bin" / "docker"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups {shutil.which("docker")} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    with pytest.raises(PipesimError) as info:
        replay(run, "docker", BackendOptions(docker_image=stand_in, env=env))
    message = str(info.value)
    assert message.startswith("docker: no permission to talk to the daemon (permission denied while trying to connect")
    assert "add your user to the docker group" in message and "not found" not in message


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_real_docker_signal_stops_the_container(tmp_path: Path, stand_in: str, sig: signal.Signals, code: int) -> None:
    """SIGTERM left the docker client and the container running to the end; Ctrl-C exited 0."""
    run = write_small_run(tmp_path / "run")
    command = [
        sys.executable,
        "-m",
        "astra_driver.cli",
        "replay",
        f"--workload-configuration={run.workload}",
        f"--system-configuration={run.system}",
        f"--network-configuration={run.network}",
        f"--remote-memory-configuration={run.memory}",
        f"--logging-folder={run.logging_folder}",
        "--backend=docker",
        f"--docker-image={stand_in}",
        "--docker-binary=astra_slow",
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        started = run.logging_folder / "child.pid"  # written inside the running container
        deadline = time.monotonic() + 60
        while not (started.is_file() and started.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        assert len(_containers(stand_in)) == 1
        os.killpg(process.pid, sig)  # the whole group, as a terminal sends Ctrl-C
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for container in _containers(stand_in):
                _docker("rm", "-f", container)
    assert process.returncode == code
    assert err.splitlines() == [
        f"pipesim: interrupted by {sig.name}; stopped (unfinished output files are not written)"
    ]
    assert _containers(stand_in) == []


# --- pipesim's own image (slow: opt-in) ------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("PIPESIM_TEST_DOCKER_BUILD"), reason="set PIPESIM_TEST_DOCKER_BUILD=1 (~30 s)")
def test_dockerfile_builds_offline_and_runs_in_a_mounted_folder(tmp_path: Path, stand_in: str) -> None:
    """`docker build` with a host-built wheelhouse (no network in the build) and the stand-in ASTRA-Sim copied in;
    then `docker run --user U:G -v DIR:/work -w /work pipesim ...` writes its outputs into DIR owned by U:G."""
    if not _present(PYTHON_BASE_IMAGE):
        pytest.skip(f"{PYTHON_BASE_IMAGE} is not present (run docker-daemon.sh)")
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, context / name)
    for package in ("llm_converter", "astra_driver", "docker"):
        shutil.copytree(REPO / package, context / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", ".", "-w", "build/wheelhouse"],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert wheels.returncode == 0, wheels.stderr
    tag = f"pipesim-test/pipesim:{uuid.uuid4().hex[:10]}"
    dangling_before = set(_dangling_images())
    built = _docker(
        "build",
        "-q",
        "-t",
        tag,
        "--build-arg",
        f"BASE_IMAGE={PYTHON_BASE_IMAGE}",
        "--build-arg",
        "WHEELHOUSE=build/wheelhouse",
        "--build-arg",
        f"ASTRA_SIM_IMAGE={stand_in}",
        "--build-arg",
        f"ASTRA_SIM_BIN={STAND_IN_BIN}/AstraSim_Analytical_Congestion_Unaware",
        str(context),
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    try:
        work = tmp_path / "work"
        write_small_run(work / "run")
        shutil.copy(REPO / "configs" / "cluster" / "single_node_pp_instance.json", work / "cluster.json")
        uid, gid = (1234, 1234) if os.geteuid() == 0 else (os.getuid(), os.getgid())
        if os.geteuid() == 0:
            for path in [work, *work.rglob("*")]:
                os.chown(path, uid, gid)

        def pipesim(*args: str) -> subprocess.CompletedProcess[str]:
            return _docker("run", "--rm", f"--user={uid}:{gid}", "-v", f"{work}:/work", "-w", "/work", tag, *args)

        flags = [
            "--workload-configuration=run/workload",
            "--system-configuration=run/system.json",
            "--network-configuration=run/network.yml",
            "--remote-memory-configuration=run/memory.json",
            "--logging-folder=run/log",
        ]
        # The ASTRA-Sim binary copied from its image is found with no flag ($ASTRA_SIM_BIN).
        done = pipesim("replay", *flags, "--backend=astra-sim", "--node-times=out/times.csv")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.",
            "sys[1] finished, 2020031 cycles, exposed communication 1020031 cycles.",
        ]
        builtin = pipesim("replay", *flags, "--json")
        assert builtin.returncode == 0, builtin.stderr
        assert builtin.stdout.strip() == '{"finish_ns": [1020031, 2020031], "exposed_comm_ns": [20031, 1020031]}'
        traced = pipesim(
            "trace", "--cluster-config", "cluster.json", "--prefill", "64", "--name", "t", "--out-dir", "traces"
        )
        assert traced.returncode == 0, traced.stderr
        outputs = [work / "out" / "times.csv", *(work / "traces").rglob("*")]
        # The issue's example: a containerized serving run writes its CSV into the mount.
        shutil.copy(REPO / "configs" / "cluster" / "single_node_single_instance.json", work / "serving.json")
        shutil.copy(REPO / "configs" / "workloads" / "example_trace.jsonl", work / "requests.jsonl")
        if os.geteuid() == 0:
            os.chown(work / "serving.json", uid, gid)
            os.chown(work / "requests.jsonl", uid, gid)
        served = pipesim(
            "run", "--cluster-config", "serving.json", "--dataset", "requests.jsonl", "--output", "out/requests.csv"
        )
        assert served.returncode == 0, served.stderr
        assert len((work / "out" / "requests.csv").read_text().splitlines()) == 1 + 12  # header + 12 requests
        outputs += [work / "out" / "requests.csv"]
        # The issue's command has no --user: pipesim then runs as the mount's owner (docker/entrypoint.sh).
        plain = _docker(
            "run", "--rm", "-v", f"{work}:/work", "-w", "/work", tag,
            "trace", "--cluster-config", "cluster.json", "--prefill", "64", "--name", "plain", "--out-dir", "traces",
        )  # fmt: skip
        assert plain.returncode == 0, plain.stderr
        outputs += [*(work / "traces" / "plain").rglob("*")]
        assert len(outputs) > 3
        for path in outputs:
            assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
        # A user error inside the container is still one line and exit 2.
        bad = pipesim("replay", *flags[:3], "--remote-memory-configuration=run/none.json")
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
        assert bad.stderr.startswith("pipesim: error: run/none.json: no such file")
        # `docker stop` sends SIGTERM to pipesim as PID 1: it stops the simulator it started and exits 143.
        slow = write_script(work / "slow.sh", 'sleep 300 &\necho $! > "$LOG/child.pid"\nwait')
        if os.geteuid() == 0:
            os.chown(slow, uid, gid)
        name = f"pipesim-test-stop-{uuid.uuid4().hex[:8]}"
        started = _docker(
            "run", "-d", f"--name={name}", f"--user={uid}:{gid}", "-v", f"{work}:/work", "-w", "/work", tag,
            "replay", *flags, "--backend=astra-sim", "--astra-sim-bin=/work/slow.sh",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        try:
            child = work / "run" / "log" / "child.pid"
            deadline = time.monotonic() + 60
            while not (child.is_file() and child.read_text().strip()) and time.monotonic() < deadline:
                time.sleep(0.1)
            begun = time.monotonic()
            assert _docker("stop", "-t", "20", name).returncode == 0
            assert time.monotonic() - begun < 10  # not docker's 20 s grace, then SIGKILL
            assert _docker("wait", name).stdout.strip() == "143"
            assert _docker("logs", name).stderr.splitlines() == [
                "pipesim: interrupted by SIGTERM; stopped (unfinished output files are not written)"
            ]
        finally:
            _docker("rm", "-f", name)
    finally:
        _docker("rmi", "-f", tag)
        # The classic builder keeps each named stage (astra-sim, wheels: 200-500 MB) as an untagged image.
        stages = sorted(set(_dangling_images()) - dangling_before)
        if stages:
            _docker("rmi", "-f", *stages)
        assert set(_dangling_images()) <= dangling_before


def _dangling_images() -> list[str]:
    return _docker("images", "-q", "--no-trunc", "--filter", "dangling=true", timeout=30).stdout.split()
