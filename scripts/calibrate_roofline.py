"""Fit one GPU's roofline factors (per op class) to a measured LLMServingSim bundle and check them on others.

    python scripts/calibrate_roofline.py [--profiles ../shared/profiles] [--hardware RTXPRO6000]
                                         [--model meta-llama/Llama-3.1-8B] [--tp 1]

Fits on the bundle of (--hardware, --model, --tp) and validates on every other bf16 bundle of that GPU under
--profiles (other models, other tp). Prints the fitted YAML snippet, then per layer the median and worst
|error| of three models: legacy (one efficiency pair for every layer, no L2, 2000 ns per layer: the roofline
before op classes, with the catalog's gemm factors), catalog (configs/hardware as they are) and fitted.

Data: every grid point of dense.csv (tokens rows: one prefill chunk), per_sequence.csv (sequences rows: one
decode each) and attention.csv (prefill_chunk at kv_prefill plus n_decode decodes at kv_decode), timed by
iteration_ops' FLOPs and bytes. Loss: least squares on log(predicted / measured), each layer weighing the same
(attention counts as decode-only and prefill-only batches; mixed batches are reported but not fitted, see
UNFITTED_GROUPS), so the 19k attention rows do not drown the 150-point dense layers. Optimizer: coordinate
descent on a shrinking multiplicative grid (deterministic, numpy only).

Fitted: launch_ns, l2_gbps, gemm compute/memory efficiency, attention compute/memory efficiency and kernels,
elementwise and sampler memory efficiency and sampler kernels. Fixed: gemm and elementwise run 1 kernel per
call (that pins launch_ns); l2_mb is the datasheet's; elementwise and sampler compute efficiencies are the
GPU's FP32 CUDA-core rate over its tensor rate (their nominal FLOPs never bind), kept from the catalog.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_converter.errors import PipesimError
from llm_converter.hardware import HardwareSpec, get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency.profile_bundle import load_tables
from llm_converter.latency.roofline import LAYER_CALLS, RooflineModel
from llm_converter.layer_ops import OP_CLASSES, LayerOp, iteration_ops, op_class
from llm_converter.models import get_model

DTYPE = "bfloat16"
VARIANT = "bf16"
# Bundle dense rows -> pipesim layer (the bundle profiles one "layernorm" for the block norms).
DENSE_ROW_LAYER = {"layernorm": "input_layernorm"}
# Free parameters, as "field" or "class.field" of HardwareSpec, with their bounds.
FREE: dict[str, tuple[float, float]] = {
    "launch_ns": (0.0, 20_000.0),
    "l2_gbps": (100.0, 50_000.0),
    "l2_fraction": (0.05, 1.0),
    "gemm.compute_efficiency": (0.05, 1.0),
    "gemm.memory_efficiency": (0.05, 1.0),
    "attention.compute_efficiency": (0.05, 1.0),
    "attention.memory_efficiency": (0.05, 1.0),
    "attention.kernels": (0.0, 50.0),
    "elementwise.memory_efficiency": (0.05, 1.0),
    "sampler.memory_efficiency": (0.05, 1.0),
    "sampler.kernels": (0.0, 50.0),
}
# Reported, not fitted: a batch mixing prefill and decode runs FlashAttention's varlen path, which pads each
# decode's single query to a 128-row tile and re-reads each KV head per query head; the ideal FLOPs and bytes
# of layer_ops do not describe that, and fitting it would drag the decode-only and prefill-only efficiencies.
UNFITTED_GROUPS = frozenset({"attention mixed"})  # kept out: the held-out check of the tile/occupancy terms
LEGACY_LAUNCH_NS = 2000  # the single per-layer overhead of the roofline before op classes


@dataclass(frozen=True)
class Samples:
    """One bundle's grid points as arrays: the layer (group) and op class of each, its FLOPs, bytes, time."""

    label: str
    groups: list[str]  # group names; group_of indexes them
    group_of: np.ndarray
    class_of: np.ndarray  # index into OP_CLASSES
    calls: np.ndarray  # LAYER_CALLS of each sample's layer
    flops: np.ndarray  # executed FLOPs (LayerOp.tile_flops where set)
    bytes_: np.ndarray
    ctas: np.ndarray  # LayerOp.ctas (0: no occupancy term)
    useful_flops: np.ndarray  # LayerOp.flops (the legacy roofline's)
    measured_ns: np.ndarray


def _attention_group(pc: int, n: int) -> str:
    return "attention decode" if pc == 0 else "attention prefill" if n == 0 else "attention mixed"


def load_samples(variant_dir: Path, tp: int) -> Samples:
    """Every grid point of the bundle in `variant_dir` (its tp<tp> tables), with the model's FLOPs and bytes."""
    tables = load_tables(variant_dir.resolve(), tp)
    model = get_model(str(tables.meta.get("model", "")))
    rows: list[tuple[str, LayerOp, float]] = []

    def op_named(it: Iteration, name: str) -> LayerOp:
        pre, block, post = iteration_ops(model, it, tp, DTYPE)
        return next(o for o in pre + block + post if o.name == name)

    for row, curve in tables.dense.items():
        name = DENSE_ROW_LAYER.get(row, row)
        for tokens, us in zip(curve.xs, curve.ys, strict=True):
            rows.append((name, op_named(Iteration(prefill=(PrefillChunk(tokens),)), name), us))
    for name, curve in tables.per_sequence.items():
        for sequences, us in zip(curve.xs, curve.ys, strict=True):
            rows.append((name, op_named(Iteration(decode=(1,) * sequences), name), us))
    for pc, by_n in tables.attention.slices.items():
        for n, by_kp in by_n.items():
            for kp, curve in by_kp.items():
                for kv, us in zip(curve.xs, curve.ys, strict=True):
                    if pc == 0 and n == 0:
                        continue  # no attention call
                    it = Iteration(prefill=(PrefillChunk(pc, kp),) if pc else (), decode=(kv,) * n)
                    rows.append((_attention_group(pc, n), op_named(it, "attention"), us))
    groups = sorted({g for g, _, _ in rows})
    index = {g: i for i, g in enumerate(groups)}
    return Samples(
        label=f"{model.name} tp{tp}",
        groups=groups,
        group_of=np.array([index[g] for g, _, _ in rows]),
        class_of=np.array([OP_CLASSES.index(op_class(op.name)) for _, op, _ in rows]),
        calls=np.array([LAYER_CALLS.get(op.name, 1) for _, op, _ in rows], dtype=float),
        flops=np.array([op.tile_flops or op.flops for _, op, _ in rows], dtype=float),
        bytes_=np.array([op.bytes for _, op, _ in rows], dtype=float),
        ctas=np.array([op.ctas for _, op, _ in rows], dtype=float),
        useful_flops=np.array([op.flops for _, op, _ in rows], dtype=float),
        measured_ns=np.array([us * 1000 for _, _, us in rows]),
    )


def predict_ns(samples: Samples, hw: HardwareSpec) -> np.ndarray:
    """RooflineModel.layer_ns over all samples at once (same constants, same formula)."""
    model = RooflineModel(hw)
    constants = np.array([model.class_constants(cls) for cls in OP_CLASSES])[samples.class_of]
    flops_per_ns, bytes_per_ns, l2_bytes, overhead_ns = constants.T
    memory_ns = np.where(samples.bytes_ <= l2_bytes, samples.bytes_ / hw.l2_gbps, samples.bytes_ / bytes_per_ns)
    busy_ns = np.maximum(samples.flops / flops_per_ns, memory_ns)
    ctas = np.maximum(samples.ctas, 1)
    occupancy = np.where(samples.ctas > 0, ctas / (hw.sms * np.ceil(ctas / hw.sms)), 1.0)
    return np.round(busy_ns / occupancy + samples.calls * overhead_ns)


def legacy_ns(samples: Samples, hw: HardwareSpec) -> np.ndarray:
    """The roofline before op classes: gemm factors for every layer, no L2, 2000 ns per layer."""
    compute = samples.useful_flops / hw.flops_per_ns
    memory = samples.bytes_ / hw.bytes_per_ns
    return np.round(np.maximum(compute, memory)) + LEGACY_LAUNCH_NS


def loss(samples: Samples, predicted: np.ndarray) -> float:
    """Sum over fitted groups of the mean squared log error (every layer weighs the same)."""
    sq = np.log(predicted / samples.measured_ns) ** 2
    sums = np.bincount(samples.group_of, weights=sq, minlength=len(samples.groups))
    counts = np.bincount(samples.group_of, minlength=len(samples.groups))
    weights = np.array([0.0 if g in UNFITTED_GROUPS else 1.0 for g in samples.groups])
    return float(np.sum(weights * sums / counts))


def get_param(hw: HardwareSpec, name: str) -> float:
    cls, _, field = name.rpartition(".")
    return float(getattr(hw.factors(cls), field) if cls else getattr(hw, field))


def with_param(hw: HardwareSpec, name: str, value: float) -> HardwareSpec:
    cls, _, field = name.rpartition(".")
    if not cls:
        return dataclasses.replace(hw, **{field: value})
    return dataclasses.replace(hw, **{cls: dataclasses.replace(hw.factors(cls), **{field: value})})


# Where the search starts, whatever the catalog holds (so a refit reproduces the YAML): round figures.
START = {
    "launch_ns": 2000.0,
    "l2_fraction": 1.0,
    "attention.kernels": 3.0,
    "sampler.kernels": 10.0,
}
START_EFFICIENCY = 0.5
START_L2_PER_HBM = 2.0


def fit(samples: Samples, hardware: HardwareSpec, rounds: int = 14) -> HardwareSpec:
    """`hardware` with its FREE factors fitted to `samples`. Coordinate descent from START: each parameter in
    turn moves to the best of 9 points on a multiplicative grid around it (x e^-s .. x e^s), s shrinking from
    0.5 by 0.6 per round (to ~4e-4 after 14 rounds)."""
    hw = hardware
    for name in FREE:
        default = START_L2_PER_HBM * hw.hbm_gbps if name == "l2_gbps" else START_EFFICIENCY
        hw = with_param(hw, name, START.get(name, default))
    best = loss(samples, predict_ns(samples, hw))
    span = 0.5
    for _ in range(rounds):
        for name, (lo, hi) in FREE.items():
            current = max(get_param(hw, name), 1e-3)  # a parameter at 0 could not scale back up
            for factor in np.exp(np.linspace(-span, span, 9)):
                value = min(hi, max(lo, current * float(factor)))
                candidate = with_param(hw, name, value)
                value_loss = loss(samples, predict_ns(samples, candidate))
                if value_loss < best - 1e-12:
                    hw, best = candidate, value_loss
        span *= 0.6
    return hw


def error_table(samples: Samples, predictions: dict[str, np.ndarray]) -> list[str]:
    """Markdown rows: per group, median |error| and worst error (signed) of each prediction."""
    names = list(predictions)
    header = f"| {'layer':<24} | {'points':>6} |" + "".join(f" {n + ' median / worst':>26} |" for n in names)
    lines = [header, "|" + "-" * 26 + "|" + "-" * 8 + "|" + "".join("-" * 28 + "|" for _ in names)]
    everything: dict[str, list[float]] = {n: [] for n in names}
    for g, group in enumerate(samples.groups):
        mask = samples.group_of == g
        cells = []
        for n in names:
            err = (predictions[n][mask] - samples.measured_ns[mask]) / samples.measured_ns[mask]
            worst = err[np.argmax(np.abs(err))]
            everything[n].append(float(np.median(np.abs(err))))
            cells.append(f" {100 * np.median(np.abs(err)):>12.0f}% / {100 * worst:>+8.0f}% |")
        lines.append(f"| {group:<24} | {int(mask.sum()):>6} |" + "".join(cells))
    cells = [f" {100 * float(np.median(everything[n])):>12.0f}% {'(of layers)':>11} |" for n in names]
    lines.append(f"| {'median of layers':<24} | {len(samples.measured_ns):>6} |" + "".join(cells))
    return lines


def median_abs_errors(samples: Samples, hw: HardwareSpec) -> dict[str, float]:
    """Median |error| per group of the catalog-style roofline `hw`."""
    err = np.abs(predict_ns(samples, hw) / samples.measured_ns - 1)
    return {group: float(np.median(err[samples.group_of == g])) for g, group in enumerate(samples.groups)}


def yaml_snippet(hw: HardwareSpec, source: str) -> str:
    def num(x: float) -> str:
        return f"{x:.3g}" if x < 10 else f"{round(x)}"

    lines = [
        f"# Roofline factors: fitted by scripts/calibrate_roofline.py on {source}",
        f"l2_mb: {num(hw.l2_mb)}",
        f"l2_gbps: {num(hw.l2_gbps)}",
        f"l2_fraction: {num(hw.l2_fraction)}",
        f"launch_ns: {num(hw.launch_ns)}",
        "op_classes:",
    ]
    for cls in OP_CLASSES:
        f = hw.factors(cls)
        lines.append(
            f"  {cls}: {{compute_efficiency: {num(f.compute_efficiency)}, "
            f"memory_efficiency: {num(f.memory_efficiency)}, kernels: {num(f.kernels)}}}"
        )
    return "\n".join(lines)


def rounded(hw: HardwareSpec) -> HardwareSpec:
    """`hw` with its free parameters rounded as the YAML snippet prints them (3 significant digits)."""
    for name in FREE:
        value = get_param(hw, name)
        hw = with_param(hw, name, value if value == 0 else round(value, 2 - math.floor(math.log10(abs(value)))))
    return hw


def bundles_of(profiles: Path, hardware: str) -> list[tuple[Path, int]]:
    """(variant dir, tp) of every bf16 bundle of `hardware` under `profiles`."""
    found = []
    for meta in sorted((profiles / hardware).glob(f"*/*/{VARIANT}/meta.yaml")):
        for tp_dir in sorted(meta.parent.glob("tp*")):
            if tp_dir.name[2:].isdigit():
                found.append((meta.parent, int(tp_dir.name[2:])))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "profiles")
    parser.add_argument("--hardware", default="RTXPRO6000")
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    parser.add_argument("--tp", type=int, default=1)
    args = parser.parse_args()

    catalog = get_hardware(args.hardware)
    model = get_model(args.model)
    fit_dir = args.profiles / catalog.name / model.name / VARIANT
    if not (fit_dir / "meta.yaml").is_file():
        raise PipesimError(f"{fit_dir}: no bundle to fit; check --profiles, --hardware and --model")
    train = load_samples(fit_dir, args.tp)
    fitted = rounded(fit(train, catalog))
    print(yaml_snippet(fitted, f"the {catalog.name} {train.label} bf16 bundle"))
    print(
        f"\nloss (sum over layers of mean squared log error): catalog {loss(train, predict_ns(train, catalog)):.4f}, "
        f"fitted {loss(train, predict_ns(train, fitted)):.4f}"
    )
    for variant_dir, tp in bundles_of(args.profiles, catalog.name):
        samples = (
            train if (variant_dir.resolve(), tp) == (fit_dir.resolve(), args.tp) else load_samples(variant_dir, tp)
        )
        role = "fit" if samples is train else "held out"
        print(f"\n{samples.label} on {catalog.name} ({role}); error = (predicted - measured) / measured")
        predictions = {
            "legacy": legacy_ns(samples, catalog),
            "catalog": predict_ns(samples, catalog),
            "fitted": predict_ns(samples, fitted),
        }
        print("\n".join(error_table(samples, predictions)))


if __name__ == "__main__":
    main()
