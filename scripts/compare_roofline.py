"""Roofline vs a measured LLMServingSim bundle, layer by layer.

    python scripts/compare_roofline.py [--profiles ../shared/profiles] [--hardware RTXPRO6000]
                                       [--model meta-llama/Llama-3.1-8B] [--tp 1]

Prints, per layer and token count, the bundle's time, the roofline's time and the roofline's error
((roofline - bundle) / bundle), then the same for attention over a few batch shapes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_converter.hardware import get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency.profile_bundle import ProfileBundleModel
from llm_converter.latency.roofline import RooflineModel
from llm_converter.layer_ops import OP_CLASSES, iteration_ops
from llm_converter.models import get_model

TOKEN_COUNTS = (1, 16, 128, 512, 2048)
ATTENTION_SHAPES = {
    "decode 1 x kv 1024": Iteration(decode=(1024,)),
    "decode 32 x kv 1024": Iteration(decode=(1024,) * 32),
    "decode 128 x kv 4096": Iteration(decode=(4096,) * 128),
    "prefill 512 @ 0": Iteration(prefill=(PrefillChunk(512),)),
    "prefill 2048 @ 0": Iteration(prefill=(PrefillChunk(2048),)),
    "prefill 512 @ 4096": Iteration(prefill=(PrefillChunk(512, 4096),)),
    "prefill 256 @ 1024 + decode 64 x kv 2048": Iteration(prefill=(PrefillChunk(256, 1024),), decode=(2048,) * 64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "profiles")
    parser.add_argument("--hardware", default="RTXPRO6000")
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    model = get_model(args.model)
    hardware = get_hardware(args.hardware)
    bundle = ProfileBundleModel.load(args.profiles / hardware.name / model.name, model, args.tp, args.dtype, hardware)
    roofline = RooflineModel(hardware)
    print(
        f"{model.name} tp{args.tp} {args.dtype} on {hardware.name}: roofline (launch {hardware.launch_ns:g} ns, "
        f"L2 {hardware.l2_mb:g} MB at {hardware.l2_gbps:g} GB/s) vs bundle {bundle.tables.directory}"
    )
    for cls in OP_CLASSES:
        f = hardware.factors(cls)
        print(
            f"  {cls:<12} compute eff {f.compute_efficiency:g}, memory eff {f.memory_efficiency:g}, "
            f"{f.kernels:g} kernels"
        )
    print("\nerror = (roofline - bundle) / bundle; times in us (bundle / roofline); * = bundle extrapolated")
    header = f"| {'layer':<24} |" + "".join(f" {f'{t} tok':>23} |" for t in TOKEN_COUNTS)
    print(header)
    print("|" + "-" * 26 + "|" + "".join("-" * 25 + "|" for _ in TOKEN_COUNTS))
    per_layer: dict[str, list[str]] = {}
    for tokens in TOKEN_COUNTS:
        it = Iteration(prefill=(PrefillChunk(tokens),))
        pre, block, post = iteration_ops(model, it, args.tp, args.dtype)
        for op in pre + block + post:
            if op.name == "attention":
                continue
            if op.name in ("lm_head", "sampler"):  # per-sequence layers: `tokens` sequences of one decode each
                it_rows = Iteration(decode=(1,) * tokens)
                op = next(o for o in iteration_ops(model, it_rows, args.tp, args.dtype)[2] if o.name == op.name)
                it_use = it_rows
            else:
                it_use = it
            measured = bundle.layer_ns(op, it_use) / 1000
            predicted = roofline.layer_ns(op, it_use) / 1000
            beyond = op.tokens > bundle.grid_max(op.name)  # extrapolated past the bundle's grid
            error = 100 * (predicted - measured) / measured
            cell = f"{measured:7.1f}/{predicted:7.1f} {error:+4.0f}%{'*' if beyond else ' '}"
            per_layer.setdefault(op.name, []).append(cell)
    for name, cells in per_layer.items():
        print(f"| {name:<24} |" + "".join(f" {c:>23} |" for c in cells))

    print("\nattention (one call for the batch)")
    print(f"| {'batch':<42} | {'bundle us':>10} | {'roofline us':>11} | {'error':>6} |")
    print("|" + "-" * 44 + "|" + "-" * 12 + "|" + "-" * 13 + "|" + "-" * 8 + "|")
    for label, it in ATTENTION_SHAPES.items():
        op = next(o for o in iteration_ops(model, it, args.tp, args.dtype)[1] if o.name == "attention")
        measured = bundle.layer_ns(op, it) / 1000
        predicted = roofline.layer_ns(op, it) / 1000
        print(
            f"| {label:<42} | {measured:10.1f} | {predicted:11.1f} | {100 * (predicted - measured) / measured:+5.0f}% |"
        )


if __name__ == "__main__":
    main()
