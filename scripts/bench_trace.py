"""Benchmark the trace path: layer list -> per-NPU graphs -> .et encoding -> files.

1. Llama-3.1-405B, tp8 x pp16 (128 .et files), one iteration (prefill 512 + 32 decodes at KV 1024) on H100-SXM:
   time of each step and nodes/s for the whole write path (goal >= 300,000 nodes/s on a 2-core machine).
2. Llama-3.1-8B, tp1 x pp2 on RTXPRO6000: iterations per second built in memory (what a serving loop needs).

    python scripts/bench_trace.py [--repeat N] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llm_converter.chakra.writer import encode_graph, et_path
from llm_converter.graphs.forward import build_serving_workload
from llm_converter.hardware import get_hardware
from llm_converter.io import write_atomic
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.layers import balanced_plan, build_layer_list, timed_ops
from llm_converter.models import get_model
from llm_converter.perf import paused_gc

GOAL_NODES_PER_S = 300_000
DTYPE = "float16"
BATCH = Iteration(prefill=(PrefillChunk(512),), decode=(1024,) * 32)


def bench_write_path(out_dir: Path, repeat: int) -> None:
    model = get_model("meta-llama/Llama-3.1-405B")
    hardware = get_hardware("H100-SXM")
    tp, pp = 8, 16
    best: dict[str, float] = {}
    nodes = files_bytes = files = 0
    for _ in range(repeat):
        times: dict[str, float] = {}
        start = time.perf_counter()
        latency = make_latency_model(model, hardware, tp, DTYPE)
        ops = timed_ops(model, BATCH, tp, latency, DTYPE)
        plan = balanced_plan(ops, model.num_layers, tp, pp)
        layers = build_layer_list(model, BATCH, plan, latency, DTYPE, ops=ops)
        times["layer list"] = time.perf_counter() - start

        start = time.perf_counter()
        workload = build_serving_workload(layers, plan)
        times["graphs"] = time.perf_counter() - start

        # Encoding and writing run with the collector paused, as `pipesim trace` runs write_workload.
        with paused_gc():
            start = time.perf_counter()
            encoded = [encode_graph(graph) for graph in workload.graphs]
            times["encode"] = time.perf_counter() - start

            start = time.perf_counter()
            for rank, data in enumerate(encoded):
                write_atomic(et_path(out_dir / "llm", rank), data)
            times["write"] = time.perf_counter() - start

        nodes = workload.node_count()
        files = len(encoded)
        files_bytes = sum(len(data) for data in encoded)
        for step, seconds in times.items():
            best[step] = min(best.get(step, seconds), seconds)
        del workload, encoded  # freed here, not inside the next run's timed steps
    total = sum(best.values())
    print(f"Llama-3.1-405B tp{tp} x pp{pp}: {files} files, {nodes} nodes, {files_bytes / 1e6:.2f} MB")
    for step, seconds in best.items():
        print(f"  {step:<10} {seconds * 1e3:8.1f} ms  {nodes / seconds:12,.0f} nodes/s")
    rate = nodes / total
    verdict = "meets" if rate >= GOAL_NODES_PER_S else "MISSES"
    print(f"  {'total':<10} {total * 1e3:8.1f} ms  {rate:12,.0f} nodes/s ({verdict} the {GOAL_NODES_PER_S:,} goal)")
    # The write step is file-system time (mkstemp, write, rename per file) and varies most between machines.
    in_memory = total - best["write"]
    print(f"  {'no write':<10} {in_memory * 1e3:8.1f} ms  {nodes / in_memory:12,.0f} nodes/s (all but the files)")


def bench_in_memory(repeat_s: float) -> None:
    model = get_model("meta-llama/Llama-3.1-8B")
    hardware = get_hardware("RTXPRO6000")
    latency = make_latency_model(model, hardware, 1, DTYPE)
    ops = timed_ops(model, BATCH, 1, latency, DTYPE)
    plan = balanced_plan(ops, model.num_layers, 1, 2)
    layers = build_layer_list(model, BATCH, plan, latency, DTYPE, ops=ops)

    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < repeat_s:
        workload = build_serving_workload(layers, plan, iteration_id=count)
        count += 1
    graphs_rate = count / (time.perf_counter() - start)

    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < repeat_s:
        # A serving loop re-times the batch every iteration: KV lengths grow, so decode attention changes.
        batch = Iteration(prefill=(PrefillChunk(512),), decode=(1024 + count,) * 32)
        iteration_ops = timed_ops(model, batch, 1, latency, DTYPE)
        layers = build_layer_list(model, batch, plan, latency, DTYPE, ops=iteration_ops)
        workload = build_serving_workload(layers, plan, iteration_id=count)
        count += 1
    full_rate = count / (time.perf_counter() - start)
    print(f"Llama-3.1-8B tp1 x pp2 in memory ({workload.node_count()} nodes per iteration):")
    print(f"  graphs from a layer list:        {graphs_rate:8,.0f} iterations/s")
    print(f"  timing + layer list + graphs:    {full_rate:8,.0f} iterations/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs of the write path; the best time is kept")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the .et files go (default: a temp dir)")
    args = parser.parse_args()
    if args.out_dir is not None:
        bench_write_path(args.out_dir, args.repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="pipesim-bench-") as folder:
            bench_write_path(Path(folder), args.repeat)
    bench_in_memory(repeat_s=1.0)


if __name__ == "__main__":
    main()
