"""Hostile ASTRA-Sim config files: a seeded, bounded fuzz over the conformance cases' own files.

Each mutant is one of system.json, network.yml, memory.json or comm_groups.json of a conformance case with a
few mutations (bytes that are not UTF-8, UTF-16 text, lone surrogates, numbers replaced by hostile ones,
nesting 1..1000 deep, group ids written as "²", "١" or "01", truncation, byte flips...). It runs through
`pipesim replay` on the builtin engine, in process, and every fifth also through `pipesim validate`: the
exit code is 0 (the mutant is still a valid config) or 2 with exactly one short `pipesim: error:` line on
stderr, never a traceback. Numbers are only replaced by values the checks refuse or by small ones, so a
still-valid mutant simulates as fast as the original.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from astra_driver.cli import main
from tests.conftest import CONFORMANCE

SEED = 20261201
MUTANTS = 250
VALIDATE_EVERY = 5
CASES = ("all_reduce_comm_groups", "all_reduce_2d_both", "p2p_ring_8npus_hops", "serving_tp2_pp2")
FILES = ("system.json", "network.yml", "memory.json", "comm_groups.json")
FLAGS = {
    "system.json": "--system-configuration",
    "network.yml": "--network-configuration",
    "memory.json": "--remote-memory-configuration",
    "comm_groups.json": "--comm-group-configuration",
}
MAX_ERROR_CHARS = 1200  # PipesimError keeps messages to 1000 characters, plus the "pipesim: error: " prefix

HOSTILE_NUMBERS = (
    "-1",
    "0",
    "1.5",
    "2147483648",
    "1" + "0" * 400,  # an integer too large for a float
    "9" * 5000,  # over Python's 4300-digit int conversion limit
    "1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    ".inf",
    ".nan",
    "true",
    "null",
    "[]",
    "{}",
    '"4"',
    "~",
    "yes",
    "0x10",
    "1_0",
    "3",
    "2",
)
HOSTILE_IDS = ("²", "١", "01", "00", "0", "-1", " 1", "1a", "", "99999999999", "\\ud800", "3")
BAD_BYTES = (b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\x00", b"\x1b[31m")
NUMBER = re.compile(rb"-?\d+(?:\.\d+)?")
QUOTED = re.compile(rb'"([^"\\]*)"')


def _replace_random(rng: random.Random, data: bytes, pattern: re.Pattern[bytes], new: bytes, group: int = 0) -> bytes:
    matches = list(pattern.finditer(data))
    if not matches:
        return data
    match = rng.choice(matches)
    return data[: match.start(group)] + new + data[match.end(group) :]


def _mutate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = rng.choice(
        ("bad_utf8", "utf16", "surrogate", "number", "nest", "id", "truncate", "delete", "duplicate", "flip")
    )
    position = rng.randrange(len(data) + 1)
    if kind == "bad_utf8":
        data = data[:position] + rng.choice(BAD_BYTES) + data[position:]
    elif kind == "utf16":
        data = data.decode("utf-8", "replace").encode(rng.choice(("utf-16", "utf-16-le", "utf-16-be")))
    elif kind == "surrogate":
        data = _replace_random(rng, data, QUOTED, rb"\ud800", group=1)
    elif kind == "number":
        data = _replace_random(rng, data, NUMBER, rng.choice(HOSTILE_NUMBERS).encode())
    elif kind == "nest":
        depth = rng.choice((2, 50, 499, 500, 999, 1000))
        data = _replace_random(rng, data, NUMBER, b"[" * depth + b"1" + b"]" * depth)
    elif kind == "id":
        data = _replace_random(rng, data, QUOTED, rng.choice(HOSTILE_IDS).encode(), group=1)
    elif kind == "truncate":
        data = data[:position]
    elif kind == "delete" and data:
        data = data[: max(position - 1, 0)] + data[position:]
    elif kind == "duplicate":
        data = data[:position] + data[max(position - 4, 0) : position] + data[position:]
    elif kind == "flip" and data:
        index = min(position, len(data) - 1)
        data = data[:index] + bytes([data[index] ^ (1 << rng.randrange(8))]) + data[index + 1 :]
    return data, kind


def _run(argv: list[str], capsys: pytest.CaptureFixture[str], what: str) -> int:
    try:
        code = main(argv)
    except BaseException as exc:  # noqa: BLE001 - the point: nothing may escape main()
        raise AssertionError(f"{what}: {type(exc).__name__} escaped main(): {exc!r:.300}") from exc
    captured = capsys.readouterr()
    assert code in (0, 2), f"{what}: exit {code}: {captured.err[:300]}"
    assert "Traceback" not in captured.err, f"{what}: {captured.err[:2000]}"
    if code == 2:
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pipesim: error: "), f"{what}: {captured.err[:2000]!r}"
        assert len(lines[0]) <= MAX_ERROR_CHARS, f"{what}: {len(lines[0])} characters"
    return code


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="../shared not found")
def test_mutated_conformance_configs_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    codes: dict[int, int] = {0: 0, 2: 0}
    kinds: set[str] = set()
    folders = {}
    for name in CASES:  # one copy of each case's files; a mutant replaces one file, then it is put back
        folders[name] = tmp_path / name
        shutil.copytree(CONFORMANCE / name, folders[name], ignore=shutil.ignore_patterns("*.et", "*.txt"))
    for number in range(MUTANTS):
        case = rng.choice(CASES)
        folder = folders[case]
        present = [name for name in FILES if (folder / name).is_file()]
        target = rng.choice(present)
        original = (folder / target).read_bytes()
        data = original
        for _ in range(rng.choice((1, 1, 2, 3))):
            data, kind = _mutate(rng, data)
            kinds.add(kind)
        (folder / target).write_bytes(data)
        flags = [f"{FLAGS[name]}={folder / name}" for name in present]
        what = f"mutant {number} of {case}/{target}"
        workload = CONFORMANCE / case / "workload"
        codes[_run(["replay", f"--workload-configuration={workload}", *flags], capsys, what)] += 1
        if number % VALIDATE_EVERY == 0:
            _run(["validate", str(workload), *flags], capsys, f"{what} (validate)")
        (folder / target).write_bytes(original)
    assert len(kinds) == 10  # every kind of mutation was tried
    # Most mutants are refused; some stay valid configs (a flipped bit in a name's case, a number made 3).
    assert codes[2] > MUTANTS // 2 and codes[0] > 0, codes
