"""Benchmark of `pipesim train` at scale: Llama-3.1-405B, TP8 x PP16 x DPd, interleaved 1F1B (2 chunks), 64
microbatches of one 8192-token sequence, sequence parallel, distributed optimizer, selective recompute, H100.

For each scale it prints the nodes of the whole step (every NPU's graph), the wall time and peak memory:
Wall time depends on what else the machine runs; the CPU time of this process is printed beside it.
- 1024 NPUs (dp 8): every NPU's graph is generated; the step is simulated in representative mode (one NPU per
  pipeline rank, collectives timed on their real groups), which gives the full simulation's step time to the
  ns (tests/test_training_graphs.py; at this scale too: `--full` runs all 8.8M nodes through the engine).
- 8,192 and 16,384 NPUs (dp 64, 128): representative mode only (the node count is computed per pipeline rank
  x tp x dp); `--write DIR` streams every NPU's .et file and the ASTRA-Sim files there.

    python scripts/bench_train.py [--scales 1024,8192,16384] [--full] [--write DIR]
    python scripts/bench_train.py --megatron     # Narayanan et al. 2021 Table 1 rows against pipesim (docs/training.md)
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from astra_driver.training import TrainingConfig, build_training, run_training
from llm_converter.graphs.training import build_rank_graph, build_training_workload
from llm_converter.perf import paused_gc

BASE = TrainingConfig(
    model="meta-llama/Llama-3.1-405B",
    hardware="H100-SXM",
    tp=8,
    pp=16,
    dp=8,
    schedule="interleaved-1f1b",
    chunks=2,
    microbatches=64,
    micro_batch_size=1,
    seq_len=8192,
    sequence_parallel=True,
    distributed_optimizer=True,
    recompute="selective",
    representative=True,
)


# Narayanan et al. 2021, Table 1 (GPT, s = 2048, V = 51200, A100, full recompute): (name, heads, hidden, layers,
# tp, pp, GPUs, global batch, published TFLOP/s per GPU counting recomputation).
MEGATRON_TABLE_1 = (
    ("18.4B", 48, 6144, 40, 8, 1, 256, 1024, 135),
    ("39.1B", 64, 8192, 48, 8, 2, 512, 1536, 138),
    ("76.1B", 80, 10240, 60, 8, 4, 1024, 1792, 140),
    ("145.6B", 96, 12288, 80, 8, 8, 1536, 2304, 148),
    ("310.1B", 128, 16384, 96, 8, 16, 1920, 2160, 155),
    ("529.6B", 128, 20480, 105, 8, 35, 2520, 2520, 163),
    ("1008B", 160, 25600, 128, 8, 64, 3072, 3072, 163),
)


def megatron_table() -> None:
    """Each Table 1 row as `pipesim train` (microbatch 1, 1F1B, 25 GB/s per GPU between DGX nodes)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, heads, hidden, layers, tp, pp, gpus, batch, published in MEGATRON_TABLE_1:
            config_path = Path(folder) / name / "config.json"
            config_path.parent.mkdir()
            gpt = {"model_type": "gpt2", "n_embd": hidden, "n_layer": layers, "n_head": heads}
            config_path.write_text(json.dumps({**gpt, "n_positions": 2048, "vocab_size": 51200}))
            dp = gpus // (tp * pp)
            start = time.perf_counter()
            result = run_training(
                TrainingConfig(
                    model=str(config_path),
                    hardware="A100-80G",
                    tp=tp,
                    pp=pp,
                    dp=dp,
                    schedule="1f1b",
                    microbatches=batch // dp,
                    seq_len=2048,
                    recompute="full",
                    inter_node_bw_gbps=25.0,
                    representative=True,
                )
            )
            ours = result.hardware_tflops_per_gpu
            print(
                f"{name:>7} tp {tp} x pp {pp} x dp {dp}, {batch // dp} microbatches: {ours:.1f} TFLOP/s/GPU vs "
                f"{published} published ({(ours / published - 1) * 100:+.1f}%), bubble "
                f"{result.bubble_fraction * 100:.1f}% ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1024,8192,16384", help="NPU counts (multiples of tp x pp = 128)")
    parser.add_argument("--full", action="store_true", help="also simulate every NPU of the 1024-NPU step")
    parser.add_argument("--write", type=Path, default=None, help="write every NPU's trace of the largest scale here")
    parser.add_argument("--megatron", action="store_true", help="only compare with Megatron-LM's Table 1")
    args = parser.parse_args()
    if args.megatron:
        megatron_table()
        return
    scales = [int(s) for s in args.scales.split(",")]
    for npus in scales:
        dp = npus // (BASE.tp * BASE.pp)
        config = replace(BASE, dp=dp)
        start = time.perf_counter()
        cpu_start = time.process_time()
        build = build_training(config)
        if npus <= 1024:
            with paused_gc():
                workload = build_training_workload(build.spec)
            nodes = workload.node_count()
            generated = f"generated all {npus} graphs in {time.perf_counter() - start:.1f} s"
            del workload
        else:
            per_rank = [len(build_rank_graph(build.spec, build.plan.rank(r)).nodes) for r in range(build.plan.pp)]
            nodes = sum(per_rank) * build.plan.tp * build.plan.dp
            generated = "graphs counted per pipeline rank"
        simulate_start = time.perf_counter()
        result = run_training(config)
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        print(
            f"{npus:>6} NPUs (tp 8 x pp 16 x dp {dp}): {nodes:,} nodes ({generated}); simulated "
            f"{result.nodes:,} nodes on {result.simulated_npus} NPUs in {time.perf_counter() - simulate_start:.1f} s; "
            f"wall {wall:.1f} s (CPU {cpu:.1f} s), peak memory {_peak_gb():.2f} GB"
        )
        print(
            f"        step {result.step_time_ns / 1e9:.3f} s, bubble {result.bubble_fraction * 100:.1f}%, "
            f"{result.tokens_per_s:,.0f} tokens/s, {result.tflops_per_gpu:.0f} TFLOPs/GPU, MFU {result.mfu * 100:.1f}%"
        )
        fullest = max(result.per_stage, key=lambda stage: stage.total_memory_bytes)
        verdict = "fits" if fullest.fits else "does NOT fit"
        print(
            f"        GPU memory: the fullest NPU (stage {fullest.pp_rank}) needs "
            f"{fullest.total_memory_bytes / 2**30:.1f} GB of {fullest.capacity_bytes / 2**30:.0f} GB: {verdict} "
            f"(recompute {config.recompute})"
        )
        if args.full and npus == 1024:
            start = time.perf_counter()
            full = run_training(replace(config, representative=False))
            same = "same" if full.step_time_ns == result.step_time_ns else "DIFFERENT"
            print(
                f"        full simulation: {full.nodes:,} nodes in {time.perf_counter() - start:.1f} s, step "
                f"{full.step_time_ns / 1e9:.6f} s ({same} as representative), peak memory {_peak_gb():.2f} GB"
            )
    if args.write is not None:
        start = time.perf_counter()
        written = run_training(replace(BASE, dp=scales[-1] // 128, out_dir=args.write))
        print(f"wrote {len(written.files)} files to {args.write} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
