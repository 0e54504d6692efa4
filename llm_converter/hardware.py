"""Accelerator specs (HardwareSpec) and the hardware catalog in `llm_converter/catalog/hardware/*.yaml` (package
data; models.catalog_dir).

Figures come from vendor datasheets and whitepapers (the source is noted in each YAML file). The roofline
latency model's factors sit beside them: the achieved L2 bandwidth and effective L2 capacity fraction, the
SM count (attention occupancy), the per-kernel launch cost, and per op
class (gemm, attention, elementwise, sampler; see layer_ops.op_class) the achievable fraction of peak
compute and of memory bandwidth and the kernels one call launches. RTXPRO6000 and RTX4090 have them fitted to
measured bundles (scripts/calibrate_roofline.py); the others carry documented defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from llm_converter.errors import PipesimError
from llm_converter.layer_ops import OP_CLASSES
from llm_converter.models import catalog_dir, catalog_files


@dataclass(frozen=True, slots=True)
class OpClassFactors:
    """Roofline factors of one op class on one GPU."""

    compute_efficiency: float  # achievable fraction of peak_tflops
    memory_efficiency: float  # achievable fraction of hbm_gbps
    kernels: float  # kernel launches per call (effective: the fixed cost is kernels * launch_ns)


_FACTOR_FIELDS = tuple(f.name for f in fields(OpClassFactors))


@dataclass(frozen=True)
class HardwareSpec:
    name: str  # as the cluster config writes it: "H100-SXM", "H200", "A100-80G", "RTXPRO6000", "RTX4090"
    peak_tflops: float  # dense bf16/fp16 tensor TFLOPS (FP32 accumulate)
    memory_gb: float  # device memory in GB of 2^30 bytes (nvidia-smi's MiB / 1024, near the marketed figure)
    hbm_gbps: float  # device memory bandwidth (GB/s)
    l2_mb: float  # L2 cache (MB, 1e6 bytes; datasheet/whitepaper)
    l2_gbps: float  # achieved L2 bandwidth of a streaming kernel (GB/s; fitted or a documented default)
    l2_fraction: float  # share of l2_mb that holds a streamed activation (fitted or a documented default)
    sms: int  # streaming multiprocessors (datasheet/whitepaper): thread blocks one wave runs
    launch_ns: float  # fixed cost of one kernel in eager mode (PyTorch dispatch + CUDA launch + tail)
    interconnect_gbps: float  # intra-node NPU-to-NPU link, GB/s per direction (NVLink or PCIe)
    interconnect_latency_ns: float
    gemm: OpClassFactors
    attention: OpClassFactors
    elementwise: OpClassFactors
    sampler: OpClassFactors

    def __post_init__(self) -> None:
        for f in ("peak_tflops", "memory_gb", "hbm_gbps", "l2_mb", "l2_gbps", "interconnect_gbps"):
            if getattr(self, f) <= 0:
                raise PipesimError(f"hardware {self.name}: {f} must be > 0 (got {getattr(self, f)})")
        if not 0 < self.l2_fraction <= 1:
            raise PipesimError(f"hardware {self.name}: l2_fraction must be in (0, 1] (got {self.l2_fraction})")
        if self.sms < 1:
            raise PipesimError(f"hardware {self.name}: sms must be >= 1 (got {self.sms})")
        for f in ("launch_ns", "interconnect_latency_ns"):
            if getattr(self, f) < 0:
                raise PipesimError(f"hardware {self.name}: {f} must be >= 0 (got {getattr(self, f)})")
        for cls in OP_CLASSES:
            factors = self.factors(cls)
            for f in ("compute_efficiency", "memory_efficiency"):
                value = getattr(factors, f)
                if not 0 < value <= 1:
                    raise PipesimError(f"hardware {self.name}: {cls}.{f} must be in (0, 1] (got {value})")
            if factors.kernels < 0:
                raise PipesimError(f"hardware {self.name}: {cls}.kernels must be >= 0 (got {factors.kernels})")

    def factors(self, op_class: str) -> OpClassFactors:
        """The roofline factors of `op_class` (one of layer_ops.OP_CLASSES)."""
        return getattr(self, op_class)  # type: ignore[no-any-return]

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * (1 << 30))  # GB of 2^30 bytes, as npu_mem.mem_size (llm_converter/memory.py)

    @property
    def l2_bytes(self) -> int:
        """Effective L2 capacity for streamed activations: l2_mb * l2_fraction."""
        return int(self.l2_mb * 1e6 * self.l2_fraction)

    @property
    def compute_efficiency(self) -> float:
        """The headline (GEMM) fraction of peak_tflops."""
        return self.gemm.compute_efficiency

    @property
    def memory_efficiency(self) -> float:
        """The headline (GEMM weight-streaming) fraction of hbm_gbps."""
        return self.gemm.memory_efficiency

    @property
    def flops_per_ns(self) -> float:
        """Achievable GEMM FLOPs per nanosecond (TFLOPS * 1e12 / 1e9 = TFLOPS * 1e3)."""
        return self.peak_tflops * 1e3 * self.compute_efficiency

    @property
    def bytes_per_ns(self) -> float:
        """Achievable GEMM memory bytes per nanosecond (GB/s = bytes/ns)."""
        return self.hbm_gbps * self.memory_efficiency


_SCALAR_FIELDS = {f.name for f in fields(HardwareSpec)} - set(OP_CLASSES)
_YAML_FIELDS = _SCALAR_FIELDS | {"op_classes"}


def _factors_from(path: Path | Traversable, cls: str, entry: Any) -> OpClassFactors:
    if not isinstance(entry, dict) or set(entry) != set(_FACTOR_FIELDS):
        raise PipesimError(f"{path}: op_classes.{cls} must map exactly {', '.join(_FACTOR_FIELDS)}; fix the YAML")
    try:
        return OpClassFactors(**{k: float(entry[k]) for k in _FACTOR_FIELDS})
    except (TypeError, ValueError) as exc:
        raise PipesimError(f"{path}: op_classes.{cls}: {exc}; factors must be numbers") from None


def _spec_from_file(path: Path | Traversable) -> HardwareSpec:
    try:
        entry: Any = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PipesimError(f"{path}: invalid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
    if not isinstance(entry, dict):
        raise PipesimError(f"{path}: expected a mapping of HardwareSpec fields; fix the YAML")
    unknown = sorted(set(entry) - _YAML_FIELDS)
    missing = sorted(_YAML_FIELDS - set(entry))
    if unknown or missing:
        raise PipesimError(
            f"{path}: unknown field(s) [{', '.join(unknown)}], missing field(s) [{', '.join(missing)}]; "
            f"fields are {', '.join(sorted(_YAML_FIELDS))}"
        )
    classes = entry["op_classes"]
    if not isinstance(classes, dict) or set(classes) != set(OP_CLASSES):
        got = ", ".join(sorted(map(str, classes))) if isinstance(classes, dict) else repr(classes)
        raise PipesimError(f"{path}: op_classes must map exactly {', '.join(OP_CLASSES)} (got {got}); fix the YAML")
    factors = {cls: _factors_from(path, cls, classes[cls]) for cls in OP_CLASSES}
    try:
        scalars: dict[str, Any] = {k: float(v) for k, v in entry.items() if k not in ("name", "op_classes", "sms")}
        if not isinstance(entry["sms"], int) or isinstance(entry["sms"], bool):
            raise PipesimError(f"{path}: sms must be an integer (got {entry['sms']!r}); fix the YAML")
        scalars["sms"] = entry["sms"]
        return HardwareSpec(name=str(entry["name"]), **scalars, **factors)
    except (TypeError, ValueError) as exc:
        raise PipesimError(f"{path}: {exc}; numeric fields must be numbers") from None


@cache
def _catalog(directory: Traversable) -> dict[str, HardwareSpec]:
    index: dict[str, HardwareSpec] = {}
    for path in catalog_files(directory):
        spec = _spec_from_file(path)
        index[spec.name.lower()] = spec
    return index


def list_hardware() -> list[str]:
    return sorted(spec.name for spec in _catalog(catalog_dir("hardware")).values())


def get_hardware(name: str) -> HardwareSpec:
    spec = _catalog(catalog_dir("hardware")).get(name.lower())
    if spec is None:
        raise PipesimError(f"unknown hardware {name!r}: use one of {', '.join(list_hardware())}")
    return spec
