"""Hardware catalog: datasheet figures, unit conversions, lookup errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llm_converter.errors import PipesimError
from llm_converter.hardware import OpClassFactors, _spec_from_file, get_hardware, list_hardware
from llm_converter.layer_ops import OP_CLASSES

DATASHEET = {  # name: (dense bf16 TFLOPS, memory GB, bandwidth GB/s, L2 MB)
    "H100-SXM": (989, 80, 3350, 50),
    "H200": (989, 141, 4800, 50),
    "A100-80G": (312, 80, 2039, 40),
    "RTXPRO6000": (503.8, 96, 1597, 128),
    "RTX4090": (165.2, 24, 1008, 72),
}


@pytest.mark.parametrize("name", sorted(DATASHEET))
def test_datasheet_figures(name: str) -> None:
    hw = get_hardware(name)
    assert (hw.peak_tflops, hw.memory_gb, hw.hbm_gbps, hw.l2_mb) == DATASHEET[name]
    for cls in OP_CLASSES:
        f = hw.factors(cls)
        assert 0 < f.compute_efficiency <= 1 and 0 < f.memory_efficiency <= 1 and f.kernels >= 0
    # One kernel per GEMM and per fused elementwise layer; attention and the sampler launch several.
    assert hw.gemm.kernels == hw.elementwise.kernels == 1
    assert 1 < hw.attention.kernels < hw.sampler.kernels
    assert hw.l2_gbps > hw.hbm_gbps and 1000 <= hw.launch_ns <= 5000
    assert hw.interconnect_gbps > 0


def test_units() -> None:
    hw = get_hardware("h100-sxm")  # case-insensitive
    assert hw.flops_per_ns == pytest.approx(989e12 * hw.compute_efficiency / 1e9)
    assert hw.bytes_per_ns == pytest.approx(3350e9 * hw.memory_efficiency / 1e9)
    assert hw.memory_bytes == 80 * 2**30


def test_unknown_and_invalid() -> None:
    assert set(DATASHEET) <= set(list_hardware())
    with pytest.raises(PipesimError, match="H100-SXM") as exc:
        get_hardware("TPUv9")
    assert "TPUv9" in str(exc.value)
    hw = get_hardware("H200")
    with pytest.raises(PipesimError, match=r"gemm\.compute_efficiency"):
        dataclasses.replace(hw, gemm=OpClassFactors(1.5, 0.5, 1))
    with pytest.raises(PipesimError, match=r"sampler\.kernels"):
        dataclasses.replace(hw, sampler=OpClassFactors(0.5, 0.5, -1))
    with pytest.raises(PipesimError, match="l2_mb"):
        dataclasses.replace(hw, l2_mb=0.0)


def test_yaml_op_classes_are_checked(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "llm_converter" / "catalog" / "hardware" / "h200.yaml").read_text()
    path = tmp_path / "x.yaml"
    path.write_text(text.replace("  sampler:", "  sampling:"))
    with pytest.raises(PipesimError, match="op_classes must map exactly gemm, attention, elementwise, sampler"):
        _spec_from_file(path)
    path.write_text(text.replace("kernels: 1}", "launches: 1}", 1))
    with pytest.raises(PipesimError, match="op_classes.gemm must map exactly"):
        _spec_from_file(path)
    path.write_text(text.replace("l2_mb:", "l2_size:"))
    with pytest.raises(PipesimError, match=r"unknown field\(s\) \[l2_size\], missing field\(s\) \[l2_mb\]"):
        _spec_from_file(path)
