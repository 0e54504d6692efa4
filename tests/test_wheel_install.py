"""Issue 6 item 1: the built wheel, installed in a fresh venv (not editable), runs `pipesim trace` and `pipesim
replay` from a folder far from the source tree: the model and hardware catalogs ship as package data.

The venv sees the system site-packages for the dependencies (no network needed); pipesim itself comes from the
wheel, and the test checks that it is the venv's copy that runs.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

# What the wheel is built from: the packaging files and the two packages (copied, so the build's own
# build/ and *.egg-info land in tmp_path, not in the checkout).
SOURCES = ("pyproject.toml", "README.md", "llm_converter", "astra_driver")


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("venv", "pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not available to build and install the wheel")
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(source)], cwd=root)
    (wheel,) = wheels.glob("pipesim-*.whl")
    venv = root / "venv"
    try:
        _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=root)
    except AssertionError as exc:
        pytest.skip(f"cannot create a venv here: {exc}")
    python = venv / "bin" / "python"
    # The outer pip installs into the venv (--python); --ignore-installed: the editable checkout the system
    # site-packages already holds must not count as "already satisfied".
    _run([*pip, "--python", str(python), "install", "--no-deps", "--ignore-installed", "--quiet", str(wheel)], cwd=root)
    return venv


def test_wheel_runs_trace_and_replay_from_another_folder(installed_venv: Path, tmp_path: Path) -> None:
    bin_dir = installed_venv / "bin"
    where = _run([str(bin_dir / "python"), "-c", "import llm_converter; print(llm_converter.__file__)"], tmp_path)
    assert str(installed_venv) in where.stdout, where.stdout  # the wheel's copy, not the checkout
    assert _run([str(bin_dir / "pipesim"), "--version"], tmp_path).stdout.strip() == "pipesim 0.1.0"
    trace = [str(bin_dir / "pipesim"), "trace", "--model", "Llama-3.1-8B", "--hardware", "H100-SXM"]
    trace += ["--tp", "2", "--decode", "4x128", "--name", "w", "--out-dir", "out"]
    _run(trace, tmp_path)
    folder = tmp_path / "out" / "w"
    assert sorted(p.name for p in folder.iterdir()) == [
        "comm_groups.json",
        "layers.csv",
        "llm.0.et",
        "llm.1.et",
        "memory.json",
        "network.yml",
        "system.json",
    ]
    replay = [str(bin_dir / "pipesim"), "replay", "--workload-configuration=out/w/llm"]
    replay += [f"--{kind}-configuration=out/w/{name}" for kind, name in (("system", "system.json"),)]
    replay += ["--network-configuration=out/w/network.yml", "--remote-memory-configuration=out/w/memory.json"]
    replay += ["--comm-group-configuration=out/w/comm_groups.json", "--json"]
    result = _run(replay, tmp_path)
    assert '"finish_ns"' in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written (no log/ either)
