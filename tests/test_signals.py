"""Ctrl-C and SIGTERM: pipesim exits 130 / 143 with one line, writes no half output and stops what it started
(the binary's whole process group; with docker, the container by its name). Fake binaries: runs everywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from astra_driver.cli import main
from tests.conftest import REPO
from tests.fixtures.fake_astra import fake_docker, path_with, write_script, write_small_run

# A binary that records its child's pid and waits on it: it would run for a minute if nobody stopped it.
_SLOW_BODY = 'sleep 60 &\necho $! > "$LOG/child.pid"\nwait'


def _flags(run) -> list[str]:
    return [
        f"--workload-configuration={run.workload}",
        f"--system-configuration={run.system}",
        f"--network-configuration={run.network}",
        f"--remote-memory-configuration={run.memory}",
        f"--logging-folder={run.logging_folder}",
    ]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(path: Path, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not (path.is_file() and path.read_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def _interrupt(argv: list[str], env: dict[str, str], started: Path, sig: signal.Signals) -> tuple[int, str]:
    """Run `pipesim argv` in a child process, send `sig` once `started` exists, return (exit code, stderr).

    The signal goes to pipesim's whole process group, as a terminal sends Ctrl-C (and `kill -TERM -PGID`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "astra_driver.cli", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(started)
        os.killpg(process.pid, sig)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_binary_and_writes_nothing(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    run = write_small_run(tmp_path / "run")
    binary = write_script(tmp_path / "astra", _SLOW_BODY)
    csv = tmp_path / "out" / "times.csv"
    argv = ["replay", *_flags(run), "--backend=astra-sim", f"--astra-sim-bin={binary}", f"--node-times={csv}"]
    started = time.monotonic()
    returncode, err = _interrupt(argv, dict(os.environ), run.logging_folder / "child.pid", sig)
    assert returncode == code
    assert err.splitlines() == [
        f"pipesim: interrupted by {sig.name}; stopped (unfinished output files are not written)"
    ]
    assert time.monotonic() - started < 20  # not the binary's 60 s
    child = int((run.logging_folder / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)
    assert not csv.parent.exists() or list(csv.parent.iterdir()) == []


def test_sigterm_kills_the_container_by_name(tmp_path: Path) -> None:
    run = write_small_run(tmp_path / "run")
    bin_dir = tmp_path / "bin"
    fake_docker(bin_dir)
    write_script(bin_dir / "inside" / "AstraSim_Analytical_Congestion_Unaware", _SLOW_BODY)
    env = {**path_with(bin_dir), "PIPESIM_DOCKER_IMAGE": "astra:good", "PYTHONPATH": str(REPO)}
    returncode, err = _interrupt(
        ["replay", *_flags(run), "--backend=docker"], env, run.logging_folder / "child.pid", signal.SIGTERM
    )
    assert returncode == 143, err
    assert err.splitlines() == ["pipesim: interrupted by SIGTERM; stopped (unfinished output files are not written)"]
    name = next(arg for arg in (bin_dir / "docker_args.txt").read_text().splitlines() if arg.startswith("--name="))
    container = name.removeprefix("--name=")
    # Stopped before the client is killed, and again after (a container the daemon was still creating).
    assert (bin_dir / "docker_stops.txt").read_text().splitlines() == [f"rm -f {container}"] * 2


def test_keyboard_interrupt_caught_by_typer_is_not_exit_0(tmp_path: Path, capsys, monkeypatch) -> None:
    """typer turns KeyboardInterrupt into Exit(130), which click returns (not raises) without standalone mode:
    main() dropped it and exited 0."""
    from astra_driver.cli import replay_cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(replay_cmd, "replay", interrupted)
    run = write_small_run(tmp_path / "run")
    code = main(["replay", *_flags(run)])
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err.splitlines() == ["pipesim: interrupted; stopped (unfinished output files are not written)"]
    assert captured.out == ""


def test_handlers_are_restored_after_main(tmp_path: Path, capsys) -> None:
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    main(["replay", "--help"])
    capsys.readouterr()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_while_the_verb_module_imports(monkeypatch, capsys, sig: signal.Signals, code: int) -> None:
    """Importing the verb's module is most of a short `pipesim trace` (0.3 of 0.45 s): a Ctrl-C there printed a
    KeyboardInterrupt traceback and a SIGTERM ended pipesim with no line, as the handlers came after it."""
    import importlib
    import types

    import astra_driver.cli as cli

    def import_then_signal(name: str):
        module = importlib.import_module(name)
        os.kill(os.getpid(), sig)  # delivered before the next bytecode: inside _register_verbs
        return module

    monkeypatch.setattr(cli, "importlib", types.SimpleNamespace(import_module=import_then_signal))
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    assert main(["trace", "--help"]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"pipesim: interrupted by {sig.name}; stopped (unfinished output files are not written)"
    ]
    assert captured.out == ""
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_console_script_ignores_signals_after_its_work_is_done(monkeypatch, capsys) -> None:
    """A Ctrl-C during the interpreter's teardown after a complete `pipesim convert` of 128 ranks (a third of its
    0.7 s) ended it by SIGINT with no line; run() leaves the signals ignored once main() returns, and main() still
    handles them while it works."""
    import astra_driver.cli as cli

    seen = []

    def fake_main(argv=None) -> int:
        previous = cli._install_stop_handlers()
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        cli._restore_handlers(previous)
        return 0

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    monkeypatch.setattr(cli, "main", fake_main)
    try:
        with pytest.raises(SystemExit) as exited:
            cli.run()
        after = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])
    assert exited.value.code == 0
    assert seen == [(cli._raise_interrupted, cli._raise_interrupted)]
    assert after == (signal.SIG_IGN, signal.SIG_IGN)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_console_script_handles_signals_before_the_cli_imports(sig: signal.Signals, code: int) -> None:
    """The interpreter's start and typer's import (~60 ms) came before any handler: Ctrl-C there printed a
    KeyboardInterrupt traceback, SIGTERM ended pipesim with no line. The console script installs a handler first."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pipesim"].split("#")[0].strip() == "astra_driver.console:run"
    probe = (
        "import os, signal, time\n"
        "from astra_driver import console\n"
        "console.install_early_handlers()\n"
        f"os.kill(os.getpid(), {int(sig)})\n"
        "time.sleep(10)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == code
    assert done.stderr.splitlines() == [
        f"pipesim: interrupted by {sig.name}; stopped (unfinished output files are not written)"
    ]
