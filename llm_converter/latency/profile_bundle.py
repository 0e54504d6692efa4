"""Measured per-layer latencies from an LLMServingSim profile bundle, interpolated for any batch.

Bundle layout (one model, one dtype variant, one GPU):

    <variant dir>/meta.yaml              model, hardware, variant, tp_degrees, attention grid, skew_fit
    <variant dir>/tp<N>/dense.csv        layer,tokens,time_us        per-token layers (norms, projections, ...)
    <variant dir>/tp<N>/per_sequence.csv layer,sequences,time_us     lm_head, sampler
    <variant dir>/tp<N>/attention.csv    prefill_chunk,kv_prefill,n_decode,kv_decode,time_us
    <variant dir>/tp<N>/skew_fit.csv     pc,n_label,skew_rate_label,kv_big_label,kp_label,alpha,n_samples

Attention is one kernel call for the whole batch. Its axes: `prefill_chunk` = new prompt tokens of all
prefill chunks together; `kv_prefill` = KV already cached for those chunks (we use the chunk-token-weighted
mean context, which is exact for one chunk and keeps sum(chunk * context) for several); `n_decode` = number of
decode requests; `kv_decode` = KV length of each decode request (the grid measures uniform batches, so we
query it at the batch mean). `prefill_chunk` and `n_decode` of 0 mean "no prefill" / "no decode" and are kept
apart from the positive values (0 < x < smallest positive point clamps to that point).

Skew (meta.yaml skew_fit): a batch whose decode KV lengths differ runs slower than the uniform batch at their
mean. With skew_fit.enabled the bundle gives alpha per bucket (raw pc grid value, n, skew_rate =
(mean - min) / (max - min), largest decode KV, kv_prefill; bins from meta's bucket_axes, right-inclusive) and
the time is t_mean + alpha * (t_max - t_mean), t_max being the lookup at the largest decode KV. Buckets not in
the table (pc not a grid value, for example) use per_tp[tp].alpha_default. Disabled: no correction.

Interpolation: linear on every axis between the two neighbouring grid points; below an axis's smallest point
the value clamps to that point. Beyond the largest point: dense and per-sequence layers scale proportionally
(time * rows / largest rows, i.e. the throughput of the largest profiled batch), because the last two points
are often still on the weight-streaming plateau (lm_head: 831 us at 256 sequences, 826 us at 240); attention
extrapolates linearly from the last two points of each axis (its cost is linear in n_decode and KV), floored
at 0.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from llm_converter.errors import PipesimError
from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import POST_LAYERS, PRE_LAYERS, LayerOp, block_layer_names
from llm_converter.models import ModelSpec, dtype_bytes

DTYPE_VARIANTS = {"bfloat16": "bf16", "float16": "fp16", "fp8": "fp8"}
PER_SEQUENCE_LAYERS = frozenset({"lm_head", "sampler"})
# Pipesim layer -> bundle rows to try, most specific first (the bundle profiles one "layernorm" for all norms).
DENSE_ROW_ALIASES = {
    "input_layernorm": ("input_layernorm", "layernorm"),
    "post_attention_layernorm": ("post_attention_layernorm", "layernorm"),
    "final_layernorm": ("final_layernorm", "layernorm"),
}
ATTENTION_COLUMNS = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode", "time_us")
SKEW_COLUMNS = ("pc", "n_label", "skew_rate_label", "kv_big_label", "kp_label", "alpha")


# -- interpolation -----------------------------------------------------------------------------------------


def bracket(values: list[int], x: float) -> list[tuple[int, float]]:
    """Grid points and weights for `x` on sorted `values`: clamp below, linear inside, linear beyond."""
    if x <= values[0] or len(values) == 1:
        return [(values[0], 1.0)]
    i = bisect.bisect_left(values, x)
    if i < len(values) and values[i] == x:
        return [(values[i], 1.0)]
    lo, hi = (values[-2], values[-1]) if i >= len(values) else (values[i - 1], values[i])
    t = (x - lo) / (hi - lo)
    return [(lo, 1.0 - t), (hi, t)]


@dataclass(frozen=True)
class Curve:
    """time_us as a function of one axis (tokens or sequences)."""

    xs: list[int]
    ys: list[float]

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if x <= xs[0] or len(xs) == 1:
            return ys[0]
        if x >= xs[-1]:
            # Past the grid the layer keeps the throughput (rows per us) of its largest profiled point: the
            # last two points often sit on the memory-bound plateau and would badly underestimate compute.
            return ys[-1] * x / xs[-1]
        i = bisect.bisect_left(xs, x)
        if xs[i] == x:
            return ys[i]
        t = (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ys[i - 1] + t * (ys[i] - ys[i - 1])


class AttentionTable:
    """The 4-D attention grid, nested pc -> n_decode -> kv_prefill -> Curve over kv_decode.

    The grid is not a full Cartesian product (power-of-2 and 1.5x lattices interleave), so each axis is
    bracketed within the slice its parent fixed.
    """

    def __init__(self, rows: dict[tuple[int, int, int, int], float]) -> None:
        nested: dict[int, dict[int, dict[int, dict[int, float]]]] = {}
        for (pc, kp, n, kv), t in rows.items():
            nested.setdefault(pc, {}).setdefault(n, {}).setdefault(kp, {})[kv] = t
        self.slices: dict[int, dict[int, dict[int, Curve]]] = {}
        for pc, by_n in nested.items():
            self.slices[pc] = {}
            for n, by_kp in by_n.items():
                self.slices[pc][n] = {}
                for kp, by_kv in by_kp.items():
                    kvs = sorted(by_kv)
                    self.slices[pc][n][kp] = Curve(kvs, [by_kv[k] for k in kvs])
        self.pcs = sorted(self.slices)

    @staticmethod
    def _zero_aware(values: list[int], x: float) -> list[int]:
        """Zero means the phase is absent: never blend it with positive points."""
        positive = [v for v in values if v > 0]
        if x <= 0:
            return [0] if 0 in values else []
        return positive

    def __call__(self, pc: float, kp: float, n: float, kv: float) -> float:
        """time_us of one attention call."""
        if pc <= 0 and n <= 0:
            return 0.0
        total = 0.0
        pcs = self._zero_aware(self.pcs, pc)
        if not pcs:
            raise KeyError(f"no attention rows with prefill_chunk {'0' if pc <= 0 else '> 0'}")
        for pc_v, w_pc in bracket(pcs, pc):
            by_n = self.slices[pc_v]
            ns = self._zero_aware(sorted(by_n), n)
            if not ns:
                raise KeyError(f"no attention rows with prefill_chunk={pc_v} and n_decode {'0' if n <= 0 else '> 0'}")
            for n_v, w_n in bracket(ns, n):
                by_kp = by_n[n_v]
                for kp_v, w_kp in bracket(sorted(by_kp), kp):
                    total += w_pc * w_n * w_kp * by_kp[kp_v](kv if n_v > 0 else 0)
        return max(total, 0.0)


@dataclass(frozen=True)
class SkewFit:
    alpha_default: float
    alphas: dict[tuple[int, str, str, str, str], float]
    axes: dict[str, list[Any]]

    @staticmethod
    def _label(bins: list[float], labels: list[str], value: float) -> str:
        # Bins are (bins[i], bins[i+1]]: "n<=8" includes 8.
        for i, label in enumerate(labels):
            if value <= bins[i + 1]:
                return label
        return labels[-1]

    def alpha(self, pc: int, n: int, skew_rate: float, kv_big: float, kp: float) -> float:
        a = self.axes
        key = (
            pc,
            self._label(a["n_bins"], a["n_labels"], n),
            self._label(a["skew_rate_bins"], a["skew_rate_labels"], min(1.0, max(0.0, skew_rate))),
            self._label(a["kv_big_bins"], a["kv_big_labels"], kv_big),
            self._label(a["kp_bins"], a["kp_labels"], kp),
        )
        return self.alphas.get(key, self.alpha_default)


# -- loading -----------------------------------------------------------------------------------------------


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise PipesimError(f"{path}: missing bundle file; re-run the profiler or point --profile-dir at a full bundle")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for column in columns:
                if column not in header:
                    raise PipesimError(f"{path}: missing column {column!r} (header: {','.join(header)}); fix the file")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        reason = " ".join(str(exc).split())
        raise PipesimError(f"{path}: not a readable CSV ({reason}); fix or re-run the profiler") from None
    if not rows:
        raise PipesimError(f"{path}: no data rows; re-run the profiler")
    return rows


def _number(path: Path, row: dict[str, str], column: str, minimum: float | None = 0.0) -> float:
    """A finite number >= `minimum` (sizes and times; None: any finite number)."""
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise PipesimError(f"{path}: column {column!r} has non-numeric value {row[column]!r}; fix the row") from None
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = "a finite number" if minimum is None else f"a finite number >= {minimum:g}"
        raise PipesimError(f"{path}: column {column!r} has value {row[column]!r}; it must be {bound}; fix the row")
    return value


def _curves(path: Path, axis: str) -> dict[str, Curve]:
    points: dict[str, dict[int, list[float]]] = {}
    for row in _read_csv(path, ("layer", axis, "time_us")):
        x = int(_number(path, row, axis))
        points.setdefault(row["layer"], {}).setdefault(x, []).append(_number(path, row, "time_us"))
    curves = {}
    for layer, by_x in points.items():
        xs = sorted(by_x)
        curves[layer] = Curve(xs, [sum(by_x[x]) / len(by_x[x]) for x in xs])  # repeated rows: their mean
    return curves


def resolve_variant_dir(profile_dir: Path, dtype: str) -> Path:
    """`profile_dir` itself when it holds meta.yaml, else its `<variant>` subfolder for `dtype`."""
    if (profile_dir / "meta.yaml").is_file():
        return profile_dir
    dtype_bytes(dtype)  # unknown dtype -> PipesimError
    variant = DTYPE_VARIANTS[dtype]
    candidate = profile_dir / variant
    if (candidate / "meta.yaml").is_file():
        return candidate
    if not profile_dir.is_dir():
        raise PipesimError(f"{profile_dir}: profile directory not found; fix --profile-dir")
    found = sorted(p.name for p in profile_dir.iterdir() if (p / "meta.yaml").is_file())
    raise PipesimError(
        f"{profile_dir}: no {variant}/meta.yaml for dtype {dtype} (variants here: {', '.join(found) or 'none'}); "
        f"point --profile-dir at a model or variant folder of a bundle, or change dtype"
    )


@dataclass(frozen=True)
class BundleTables:
    directory: Path  # the tp<N> folder
    meta: dict[str, Any]
    dense: dict[str, Curve]
    per_sequence: dict[str, Curve]
    attention: AttentionTable
    skew: SkewFit | None


@lru_cache(maxsize=16)
def load_tables(variant_dir: Path, tp: int) -> BundleTables:
    meta_path = variant_dir / "meta.yaml"
    try:
        meta = yaml.safe_load(meta_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise PipesimError(f"{meta_path}: cannot read ({reason}); fix or re-run the profiler") from None
    if not isinstance(meta, dict):
        raise PipesimError(f"{meta_path}: expected a mapping; fix or re-run the profiler")
    available = sorted(int(p.name[2:]) for p in variant_dir.glob("tp*") if p.is_dir() and p.name[2:].isdigit())
    tp_dir = variant_dir / f"tp{tp}"
    if tp not in available:
        raise PipesimError(
            f"{variant_dir}: bundle has no tp{tp} profile (available: {', '.join(f'tp{t}' for t in available)}); "
            f"set tp_size to one of them or profile tp={tp}"
        )
    attention_path = tp_dir / "attention.csv"
    rows: dict[tuple[int, int, int, int], float] = {}
    for row in _read_csv(attention_path, ATTENTION_COLUMNS):
        key = tuple(int(_number(attention_path, row, c)) for c in ATTENTION_COLUMNS[:4])
        rows[key] = _number(attention_path, row, "time_us")  # type: ignore[index]
    return BundleTables(
        directory=tp_dir,
        meta=meta,
        dense=_curves(tp_dir / "dense.csv", "tokens"),
        per_sequence=_curves(tp_dir / "per_sequence.csv", "sequences"),
        attention=AttentionTable(rows),
        skew=_load_skew(meta, meta_path, tp_dir, tp),
    )


def _load_skew(meta: dict[str, Any], meta_path: Path, tp_dir: Path, tp: int) -> SkewFit | None:
    block = meta.get("skew_fit") or {}
    if not block.get("enabled"):
        return None
    per_tp = block.get("per_tp") or {}
    entry = per_tp.get(tp) or per_tp.get(str(tp))
    if not isinstance(entry, dict) or "alpha_default" not in entry:
        raise PipesimError(f"{meta_path}: skew_fit.per_tp.{tp}.alpha_default missing; fix or re-run the fit")
    axes = entry.get("bucket_axes") or block.get("bucket_axes")
    needed = ("n_bins", "n_labels", "skew_rate_bins", "skew_rate_labels", "kv_big_bins", "kv_big_labels")
    if not isinstance(axes, dict) or any(k not in axes for k in needed + ("kp_bins", "kp_labels")):
        raise PipesimError(f"{meta_path}: skew_fit.bucket_axes incomplete; fix or re-run the fit")
    table_path = tp_dir.parent / str(entry.get("bucket_table", f"tp{tp}/skew_fit.csv"))
    alphas = {}
    for row in _read_csv(table_path, SKEW_COLUMNS):
        key = (
            int(_number(table_path, row, "pc")),
            row["n_label"],
            row["skew_rate_label"],
            row["kv_big_label"],
            row["kp_label"],
        )
        alphas[key] = _number(table_path, row, "alpha", minimum=None)
    try:
        alpha_default = float(entry["alpha_default"])
    except (TypeError, ValueError):
        raise PipesimError(
            f"{meta_path}: skew_fit.per_tp.{tp}.alpha_default is {entry['alpha_default']!r}; it must be a number"
        ) from None
    return SkewFit(alpha_default, alphas, axes)


# -- the latency model -------------------------------------------------------------------------------------


def attention_shape(iteration: Iteration) -> tuple[int, float, int, float, int, int]:
    """(prefill_chunk, kv_prefill, n_decode, kv_decode mean, max, min) of the batch's one attention call."""
    pc = iteration.prefill_tokens
    kp = sum(c.tokens * c.context for c in iteration.prefill) / pc if pc else 0.0
    decode = iteration.decode
    if not decode:
        return pc, kp, 0, 0.0, 0, 0
    return pc, kp, len(decode), sum(decode) / len(decode), max(decode), min(decode)


class ProfileBundleModel:
    """LatencyModel backed by one bundle's tp<N> tables."""

    def __init__(self, tables: BundleTables, model: ModelSpec) -> None:
        self.tables = tables
        self.model = model
        self._dense_rows: dict[str, Curve] = {}
        for name in PRE_LAYERS + block_layer_names(model) + POST_LAYERS:
            if name == "attention":
                continue
            if name in PER_SEQUENCE_LAYERS:
                source, path = tables.per_sequence, tables.directory / "per_sequence.csv"
            else:
                source, path = tables.dense, tables.directory / "dense.csv"
            row = next((r for r in DENSE_ROW_ALIASES.get(name, (name,)) if r in source), None)
            if row is None:
                raise PipesimError(
                    f"{path}: no rows for layer {name!r} that {model.name} needs (has: {', '.join(sorted(source))}); "
                    f"use a bundle profiled for this architecture or the roofline"
                )
            self._dense_rows[name] = source[row]
        self._attention_us = lru_cache(maxsize=65536)(self._attention_uncached)

    @classmethod
    def load(
        cls, profile_dir: Path, model: ModelSpec, tp: int, dtype: str, hardware: HardwareSpec | None = None
    ) -> ProfileBundleModel:
        variant_dir = resolve_variant_dir(profile_dir.resolve(), dtype)
        meta_path = variant_dir / "meta.yaml"
        tables = load_tables(variant_dir, tp)
        meta = tables.meta
        bundle_model = str(meta.get("model", ""))
        if bundle_model.lower() != model.name.lower():
            raise PipesimError(
                f"{meta_path}: bundle model is {bundle_model!r} but the run uses {model.name!r}; "
                f"point --profile-dir at a {model.name} bundle or change the model"
            )
        variant = str(meta.get("variant", variant_dir.name))
        if variant != DTYPE_VARIANTS.get(dtype):
            raise PipesimError(
                f"{meta_path}: bundle variant is {variant!r} but dtype is {dtype}; use the matching variant folder"
            )
        bundle_hw = str(meta.get("hardware", ""))
        if hardware is not None and bundle_hw.lower() != hardware.name.lower():
            raise PipesimError(
                f"{meta_path}: bundle was profiled on {bundle_hw!r} but the run's hardware is {hardware.name!r}; "
                f"set hardware to {bundle_hw} or use a {hardware.name} bundle"
            )
        return cls(tables, model)

    def _attention_uncached(self, pc: int, kp: float, n: int, kv_mean: float, kv_max: int, kv_min: int) -> float:
        table = self.tables.attention
        t_mean = table(pc, kp, n, kv_mean)
        skew = self.tables.skew
        if skew is None or n <= 1 or kv_max == kv_mean:
            return t_mean
        alpha = skew.alpha(pc, n, (kv_mean - kv_min) / (kv_max - kv_min), kv_max, kp)
        t_max = table(pc, kp, n, kv_max)
        if alpha == 0.0 or t_max <= t_mean:
            return t_mean
        return t_mean + alpha * (t_max - t_mean)

    def attention_us(self, iteration: Iteration) -> float:
        return self._attention_us(*attention_shape(iteration))

    def layer_us(self, name: str, rows: int) -> float:
        """Interpolated time of a non-attention layer for `rows` tokens (or sequences)."""
        return self._dense_rows[name](rows)

    def grid_max(self, name: str) -> int:
        """Largest profiled row count of a non-attention layer (beyond it, times are extrapolated)."""
        return self._dense_rows[name].xs[-1]

    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int:
        if op.tokens <= 0:
            return 0
        if op.name == "attention":
            try:
                return round(self.attention_us(iteration) * 1000)
            except KeyError as exc:  # the grid lacks the batch's phase (no decode rows, no prefill rows)
                raise PipesimError(
                    f"{self.tables.directory / 'attention.csv'}: {exc.args[0]} for {iteration.describe()}; "
                    "profile that phase or use the roofline"
                ) from None
        curve = self._dense_rows.get(op.name)
        if curve is None:
            raise PipesimError(f"{self.tables.directory}: bundle has no rows for layer {op.name!r}")
        return round(curve(op.tokens) * 1000)
