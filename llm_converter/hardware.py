"""Accelerator specs (HardwareSpec) and the hardware catalog in `<configs>/hardware/*.yaml`.

Figures come from vendor datasheets (the source is noted in each YAML file); the two efficiency factors
are the achievable fraction of peak the roofline latency model uses.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from llm_converter.errors import PipesimError
from llm_converter.models import config_dir


@dataclass(frozen=True)
class HardwareSpec:
    name: str  # as the cluster config writes it: "H100-SXM", "H200", "A100-80G", "RTXPRO6000", "RTX4090"
    peak_tflops: float  # dense bf16/fp16 tensor TFLOPS (FP32 accumulate)
    memory_gb: float  # device memory (GB, 1e9 bytes)
    hbm_gbps: float  # device memory bandwidth (GB/s)
    compute_efficiency: float  # achievable fraction of peak_tflops
    memory_efficiency: float  # achievable fraction of hbm_gbps
    interconnect_gbps: float  # intra-node NPU-to-NPU link, GB/s per direction (NVLink or PCIe)
    interconnect_latency_ns: float

    def __post_init__(self) -> None:
        for f in ("peak_tflops", "memory_gb", "hbm_gbps", "interconnect_gbps"):
            if getattr(self, f) <= 0:
                raise PipesimError(f"hardware {self.name}: {f} must be > 0 (got {getattr(self, f)})")
        for f in ("compute_efficiency", "memory_efficiency"):
            if not 0 < getattr(self, f) <= 1:
                raise PipesimError(f"hardware {self.name}: {f} must be in (0, 1] (got {getattr(self, f)})")
        if self.interconnect_latency_ns < 0:
            raise PipesimError(f"hardware {self.name}: interconnect_latency_ns must be >= 0")

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1e9)

    @property
    def flops_per_ns(self) -> float:
        """Achievable FLOPs per nanosecond (TFLOPS * 1e12 / 1e9 = TFLOPS * 1e3)."""
        return self.peak_tflops * 1e3 * self.compute_efficiency

    @property
    def bytes_per_ns(self) -> float:
        """Achievable memory bytes per nanosecond (GB/s = bytes/ns)."""
        return self.hbm_gbps * self.memory_efficiency


_SPEC_FIELDS = {f.name for f in fields(HardwareSpec)}


def _spec_from_file(path: Path) -> HardwareSpec:
    try:
        entry: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipesimError(f"{path}: invalid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
    if not isinstance(entry, dict):
        raise PipesimError(f"{path}: expected a mapping of HardwareSpec fields; fix the YAML")
    unknown = sorted(set(entry) - _SPEC_FIELDS)
    missing = sorted(_SPEC_FIELDS - set(entry))
    if unknown or missing:
        raise PipesimError(
            f"{path}: unknown field(s) [{', '.join(unknown)}], missing field(s) [{', '.join(missing)}]; "
            f"fields are {', '.join(sorted(_SPEC_FIELDS))}"
        )
    try:
        return HardwareSpec(
            name=str(entry["name"]),
            **{k: float(v) for k, v in entry.items() if k != "name"},
        )
    except (TypeError, ValueError) as exc:
        raise PipesimError(f"{path}: {exc}; numeric fields must be numbers") from None


@cache
def _catalog(directory: Path) -> dict[str, HardwareSpec]:
    index: dict[str, HardwareSpec] = {}
    if directory.is_dir():
        for path in sorted(directory.glob("*.yaml")):
            spec = _spec_from_file(path)
            index[spec.name.lower()] = spec
    return index


def list_hardware() -> list[str]:
    return sorted(spec.name for spec in _catalog(config_dir() / "hardware").values())


def get_hardware(name: str) -> HardwareSpec:
    spec = _catalog(config_dir() / "hardware").get(name.lower())
    if spec is None:
        raise PipesimError(f"unknown hardware {name!r}: use one of {', '.join(list_hardware())}")
    return spec
