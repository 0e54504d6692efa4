"""Hardware catalog: datasheet figures, unit conversions, lookup errors."""

from __future__ import annotations

import pytest

from llm_converter.errors import PipesimError
from llm_converter.hardware import HardwareSpec, get_hardware, list_hardware

DATASHEET = {  # name: (dense bf16 TFLOPS, memory GB, bandwidth GB/s)
    "H100-SXM": (989, 80, 3350),
    "H200": (989, 141, 4800),
    "A100-80G": (312, 80, 2039),
    "RTXPRO6000": (503.8, 96, 1597),
    "RTX4090": (165.2, 24, 1008),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_datasheet_figures(name: str) -> None:
    hw = get_hardware(name)
    assert (hw.peak_tflops, hw.memory_gb, hw.hbm_gbps) == DATASHEET[name]
    assert 0 < hw.compute_efficiency <= 1 and 0 < hw.memory_efficiency <= 1
    assert hw.interconnect_gbps > 0


def test_units() -> None:
    hw = get_hardware("h100-sxm")  # case-insensitive
    assert hw.flops_per_ns == pytest.approx(989e12 * hw.compute_efficiency / 1e9)
    assert hw.bytes_per_ns == pytest.approx(3350e9 * hw.memory_efficiency / 1e9)
    assert hw.memory_bytes == 80_000_000_000


def test_unknown_and_invalid() -> None:
    assert set(DATASHEET) <= set(list_hardware())
    with pytest.raises(PipesimError, match="H100-SXM") as exc:
        get_hardware("TPUv9")
    assert "TPUv9" in str(exc.value)
    with pytest.raises(PipesimError, match="compute_efficiency"):
        HardwareSpec("x", 1.0, 1.0, 1.0, 1.5, 0.5, 1.0, 0.0)
