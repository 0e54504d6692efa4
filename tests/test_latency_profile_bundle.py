"""Profile-bundle latency: exact grid rows, linear mid-points, extrapolation, skew, tp/variant selection, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from llm_converter.errors import PipesimError
from llm_converter.hardware import get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.latency.profile_bundle import AttentionTable, Curve, ProfileBundleModel, bracket
from llm_converter.layer_ops import LayerOp, iteration_ops
from llm_converter.models import get_model
from tests.conftest import PROFILES

LLAMA_DIR = PROFILES / "RTXPRO6000" / "meta-llama" / "Llama-3.1-8B"
QWEN_DIR = PROFILES / "RTXPRO6000" / "Qwen" / "Qwen3-32B"
LLAMA = get_model("Llama-3.1-8B")
needs_profiles = pytest.mark.skipif(not LLAMA_DIR.is_dir(), reason=f"{LLAMA_DIR} not found")


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def op(name: str, tokens: int) -> LayerOp:
    return LayerOp(name, "block", tokens, 0, 0, 0, False)


# -- pure interpolation rules ------------------------------------------------------------------------------


def test_curve_rules() -> None:
    c = Curve([1, 2, 4], [10.0, 20.0, 30.0])
    assert c(2) == 20.0 and c(3) == 25.0  # grid point, mid-point
    assert c(0) == 10.0  # clamp below
    assert c(6) == 45.0  # beyond the grid: the largest point's throughput, 30 us * 6 / 4


def test_bracket() -> None:
    assert bracket([0, 16, 32], 16) == [(16, 1.0)]
    assert bracket([0, 16, 32], 24) == [(16, 0.5), (32, 0.5)]
    assert bracket([16, 32], 48) == [(16, -1.0), (32, 2.0)]


def test_attention_table_small_grid() -> None:
    # Hand-made grid: t = pc + 2*kp + 100*n + kv/10 is linear, so interpolation is exact everywhere inside.
    rows_ = {}
    for pc in (0, 16, 32):
        for n in (0, 1, 2):
            if pc == 0 and n == 0:
                continue
            for kp in (0, 64):
                for kv in (0,) if n == 0 else (16, 32):
                    rows_[(pc, kp, n, kv)] = pc + 2 * kp + 100 * n + kv / 10
    table = AttentionTable(rows_)
    assert table(16, 64, 1, 32) == pytest.approx(16 + 128 + 100 + 3.2)
    assert table(24, 32, 2, 24) == pytest.approx(24 + 64 + 200 + 2.4)
    assert table(0, 0, 0, 0) == 0.0
    assert table(8, 0, 0, 0) == pytest.approx(16)  # 0 < pc < 16 clamps to 16, never blends with "no prefill"


# -- the shipped bundles -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_bundle() -> ProfileBundleModel:
    if not LLAMA_DIR.is_dir():
        pytest.skip(f"{LLAMA_DIR} not found")
    return ProfileBundleModel.load(LLAMA_DIR, LLAMA, 1, "bfloat16", hardware=get_hardware("RTXPRO6000"))


@needs_profiles
def test_dense_rows_exact_and_midpoints(llama_bundle: ProfileBundleModel) -> None:
    table = rows(LLAMA_DIR / "bf16" / "tp1" / "dense.csv")
    by_layer: dict[str, list[tuple[int, float]]] = {}
    for r in table:
        by_layer.setdefault(r["layer"], []).append((int(r["tokens"]), float(r["time_us"])))
    for layer, name in (("qkv_proj", "qkv_proj"), ("layernorm", "input_layernorm"), ("down_proj", "down_proj")):
        points = sorted(by_layer[layer])
        for tokens, t_us in points:
            assert llama_bundle.layer_ns(op(name, tokens), Iteration()) == round(t_us * 1000)
        (x0, y0), (x1, y1) = points[20], points[21]
        assert x1 - x0 >= 2
        mid = (x0 + x1) // 2
        expected = y0 + (mid - x0) / (x1 - x0) * (y1 - y0)
        assert llama_bundle.layer_ns(op(name, mid), Iteration()) == round(expected * 1000)


@needs_profiles
def test_per_sequence_rows(llama_bundle: ProfileBundleModel) -> None:
    for r in rows(LLAMA_DIR / "bf16" / "tp1" / "per_sequence.csv"):
        assert llama_bundle.layer_us(r["layer"], int(r["sequences"])) == pytest.approx(float(r["time_us"]))
    # Beyond the 256-sequence grid: proportional to the 256-sequence time.
    last = max(
        (r for r in rows(LLAMA_DIR / "bf16" / "tp1" / "per_sequence.csv") if r["layer"] == "lm_head"),
        key=lambda r: int(r["sequences"]),
    )
    assert llama_bundle.layer_us("lm_head", 512) == pytest.approx(float(last["time_us"]) * 512 / int(last["sequences"]))
    # lm_head rows: 1 -> 714.006 us (first row of the file).
    assert llama_bundle.layer_ns(op("lm_head", 1), Iteration(decode=(5,))) == 714006


@needs_profiles
def test_attention_grid_points(llama_bundle: ProfileBundleModel) -> None:
    table = rows(LLAMA_DIR / "bf16" / "tp1" / "attention.csv")
    for r in table[::97]:  # a spread of ~200 grid rows, all four axes
        pc, kp, n, kv = (int(r[c]) for c in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"))
        assert llama_bundle.tables.attention(pc, kp, n, kv) == pytest.approx(float(r["time_us"])), r


@needs_profiles
def test_attention_from_iteration(llama_bundle: ProfileBundleModel) -> None:
    t = {
        (int(r["prefill_chunk"]), int(r["kv_prefill"]), int(r["n_decode"]), int(r["kv_decode"])): float(r["time_us"])
        for r in rows(LLAMA_DIR / "bf16" / "tp1" / "attention.csv")
    }
    attn = op("attention", 1)
    # Uniform decode batch (no skew): the grid row exactly.
    assert llama_bundle.layer_ns(attn, Iteration(decode=(1024,) * 16)) == round(t[(0, 0, 16, 1024)] * 1000)
    # One prefill chunk of 512 after 1024 cached tokens, plus 8 decodes at kv 2048.
    it = Iteration(prefill=(PrefillChunk(512, 1024),), decode=(2048,) * 8)
    assert llama_bundle.layer_ns(op("attention", 520), it) == round(t[(512, 1024, 8, 2048)] * 1000)
    # Mid-point on kv_decode between neighbouring grid points 1152 and 1728 (n=16 slice).
    expected = (t[(0, 0, 16, 1152)] + t[(0, 0, 16, 1728)]) / 2
    assert llama_bundle.attention_us(Iteration(decode=(1440,) * 16)) == pytest.approx(expected)
    # Mid-point on n_decode between 16 and 32 at a grid kv.
    expected = (t[(0, 0, 16, 1024)] + t[(0, 0, 32, 1024)]) / 2
    assert llama_bundle.attention_us(Iteration(decode=(1024,) * 24)) == pytest.approx(expected)
    # Two chunks: pc = 45, half-way between grid points 36 and 54; kv_prefill = token-weighted mean context
    # (20*256 + 25*742) / 45 = 526, between grid points 512 and 768: bilinear on both axes.
    two = Iteration(prefill=(PrefillChunk(20, 256), PrefillChunk(25, 742)))
    kp = (20 * 256 + 25 * 742) / 45
    expected = (t[(36, 512, 0, 0)] + t[(54, 512, 0, 0)]) / 2 + (kp - 512) / 256 * (
        (t[(36, 768, 0, 0)] + t[(54, 768, 0, 0)]) / 2 - (t[(36, 512, 0, 0)] + t[(54, 512, 0, 0)]) / 2
    )
    assert llama_bundle.attention_us(two) == pytest.approx(expected)


@needs_profiles
def test_decode_skew_correction(llama_bundle: ProfileBundleModel) -> None:
    # Decodes at kv 1024 and 3072: mean 2048, max 3072, skew_rate 0.5 -> bucket (0, n<=2, sr<=70%, kvB<=4k, kp=0).
    alpha = next(
        float(r["alpha"])
        for r in rows(LLAMA_DIR / "bf16" / "tp1" / "skew_fit.csv")
        if (r["pc"], r["n_label"], r["skew_rate_label"], r["kv_big_label"], r["kp_label"])
        == ("0", "n<=2", "sr<=70%", "kvB<=4k", "kp=0")
    )
    table = llama_bundle.tables.attention
    t_mean, t_max = table(0, 0, 2, 2048), table(0, 0, 2, 3072)
    got = llama_bundle.attention_us(Iteration(decode=(1024, 3072)))
    assert got == pytest.approx(t_mean + alpha * max(0.0, t_max - t_mean))
    # Off-grid pc -> no bucket -> alpha_default from meta.yaml (0.0543 for tp1).
    it = Iteration(prefill=(PrefillChunk(40),), decode=(1024, 3072))
    t_mean, t_max = table(40, 0, 2, 2048), table(40, 0, 2, 3072)
    assert llama_bundle.attention_us(it) == pytest.approx(t_mean + 0.0543 * max(0.0, t_max - t_mean))


@needs_profiles
def test_whole_iteration_and_tp_selection() -> None:
    qwen = get_model("Qwen3-32B")
    hw = get_hardware("RTXPRO6000")
    it = Iteration(prefill=(PrefillChunk(128),), decode=(300, 600))
    tp1 = make_latency_model(qwen, hw, 1, "bfloat16", QWEN_DIR)
    tp2 = make_latency_model(qwen, hw, 2, "bfloat16", QWEN_DIR / "bf16")  # variant folder works too
    assert isinstance(tp2, ProfileBundleModel) and tp2.tables.directory.name == "tp2"
    qkv_tp2 = next(r for r in rows(QWEN_DIR / "bf16" / "tp2" / "dense.csv") if r["layer"] == "qk_norm")
    assert tp2.layer_us("qk_norm", int(qkv_tp2["tokens"])) == pytest.approx(float(qkv_tp2["time_us"]))
    pre, block, post = iteration_ops(qwen, it, 1, "bfloat16")
    assert all(tp1.layer_ns(o, it) > 0 for o in pre + block + post)
    # Qwen3-32B on half the GPUs' weights per rank: tp2 qkv time is below tp1's.
    qkv = next(o for o in block if o.name == "qkv_proj")
    assert tp2.layer_ns(qkv, it) < tp1.layer_ns(qkv, it)


@needs_profiles
def test_errors(tmp_path: Path) -> None:
    hw = get_hardware("RTXPRO6000")
    with pytest.raises(PipesimError, match=r"no tp4 profile \(available: tp1, tp2\)"):
        make_latency_model(LLAMA, hw, 4, "bfloat16", LLAMA_DIR)
    with pytest.raises(PipesimError, match=r"no tp2 profile \(available: tp1\)"):
        make_latency_model(LLAMA, get_hardware("RTX4090"), 2, "bfloat16", PROFILES / "RTX4090" / LLAMA.name)
    with pytest.raises(PipesimError, match="bundle model is 'Qwen/Qwen3-32B'"):
        make_latency_model(LLAMA, hw, 1, "bfloat16", QWEN_DIR)
    with pytest.raises(PipesimError, match="fp16/meta.yaml"):
        make_latency_model(LLAMA, hw, 1, "float16", LLAMA_DIR)
    with pytest.raises(PipesimError, match="profiled on 'RTXPRO6000'"):
        make_latency_model(LLAMA, get_hardware("H100-SXM"), 1, "bfloat16", LLAMA_DIR)
    llama_tp1 = make_latency_model(LLAMA, hw, 1, "bfloat16", LLAMA_DIR)
    assert isinstance(llama_tp1, ProfileBundleModel)
    with pytest.raises(PipesimError, match="no rows for layer 'moe_gate'"):
        ProfileBundleModel(llama_tp1.tables, get_model("Mixtral-8x7B"))
    with pytest.raises(PipesimError, match="not found"):
        make_latency_model(LLAMA, hw, 1, "bfloat16", tmp_path / "nowhere")
    # A copy with a column removed / a file missing.
    bundle = tmp_path / "bf16"
    shutil.copytree(LLAMA_DIR / "bf16", bundle)
    dense = bundle / "tp1" / "dense.csv"
    dense.write_text(dense.read_text().replace("layer,tokens,time_us", "layer,tokens,time"))
    with pytest.raises(PipesimError, match="dense.csv: missing column 'time_us'"):
        make_latency_model(LLAMA, hw, 1, "bfloat16", bundle)
    (bundle / "tp1" / "attention.csv").unlink()
    with pytest.raises(PipesimError, match="attention.csv: missing bundle file"):
        make_latency_model(LLAMA, hw, 1, "bfloat16", bundle)


@needs_profiles
def test_a_grid_without_the_batch_phase_is_a_one_line_error(tmp_path: Path) -> None:
    bundle = tmp_path / "bf16"
    shutil.copytree(LLAMA_DIR / "bf16", bundle)
    attention = bundle / "tp1" / "attention.csv"
    lines = attention.read_text().splitlines()
    attention.write_text("\n".join([lines[0]] + [line for line in lines[1:] if line.split(",")[2] == "0"]) + "\n")
    model = ProfileBundleModel.load(bundle, LLAMA, 1, "bfloat16", hardware=get_hardware("RTXPRO6000"))
    prefill = Iteration(prefill=(PrefillChunk(64, 0),))
    assert model.layer_ns(op("attention", 64), prefill) > 0
    with pytest.raises(PipesimError, match=r"attention.csv: no attention rows .* decode 1x\(kv 100\.\.100\)"):
        model.layer_ns(op("attention", 1), Iteration(decode=(100,)))
