"""Shared fixtures: where ../shared lives (tests read ground truth from it; the product never does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPESIM_SHARED", REPO.parent / "shared"))
CONFORMANCE = SHARED / "astra-sim" / "conformance"
PROFILES = SHARED / "profiles"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not found (set PIPESIM_SHARED)")
    return SHARED


def conformance_cases() -> list[str]:
    """Names of the conformance cases (empty when ../shared is absent, so parametrized tests collect none)."""
    if not CONFORMANCE.is_dir():
        return []
    return sorted(p.name for p in CONFORMANCE.iterdir() if (p / "expected.json").is_file())
