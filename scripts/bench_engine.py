"""Benchmark of the builtin engine on a 1F1B training trace (16 stages x tp8 = 128 ranks, 64 micro-batches).

Each stage runs 4 layers per micro-batch, each followed by a tensor-parallel all-reduce in its group of 8
(pg_name), forward and backward, with activations/gradients sent between stages: about 164,000 nodes.
The trace is built in memory with GraphBuilder, written as .et files plus ASTRA-Sim config files to a temp
dir, then replayed. Prints wall times (read + simulate, simulate alone), nodes/s and peak memory. With
ASTRA_SIM_BIN set, also runs that binary on the same files and compares finish times.

    python scripts/bench_engine.py [--stages 16] [--tp 8] [--microbatches 64] [--layers 4] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path

from astra_driver.astra_config import AstraConfig, NetworkConfig, SystemConfig, load_astra_config
from astra_driver.astra_files import write_astra_files
from astra_driver.backends import BackendOptions, ReplayRun, replay
from astra_driver.engine import simulate
from llm_converter.chakra.reader import read_workload
from llm_converter.chakra.writer import write_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, GraphBuilder, Workload

ACTIVATION_BYTES = 8 << 20  # per micro-batch, sent between stages
ALL_REDUCE_BYTES = 8 << 20  # per layer, within the TP group
FWD_US, BWD_US = 300, 600  # per layer


def build_1f1b(stages: int, tp: int, microbatches: int, layers: int) -> Workload:
    graphs = []
    groups = {str(stage + 1): [stage * tp + t for t in range(tp)] for stage in range(stages)}
    for stage in range(stages):
        warmup = min(stages - stage - 1, microbatches)
        order = [("F", m) for m in range(warmup)]
        forward, backward = warmup, 0
        while backward < microbatches:
            if forward < microbatches:
                order.append(("F", forward))
                forward += 1
            order.append(("B", backward))
            backward += 1
        for t in range(tp):
            rank = stage * tp + t
            builder = GraphBuilder(rank)
            pg = str(stage + 1)
            last: list[int] = []
            for kind, micro in order:
                deps = list(last)
                if kind == "F" and stage > 0:
                    deps.append(builder.recv(f"COMM_RECV_NODE_f{micro}", rank - tp, 1000 + micro, ACTIVATION_BYTES))
                if kind == "B" and stage < stages - 1:
                    deps.append(builder.recv(f"COMM_RECV_NODE_b{micro}", rank + tp, 100000 + micro, ACTIVATION_BYTES))
                for layer in range(layers):
                    name = f"{kind}{micro}_l{layer}"
                    comp = builder.comp(f"COMP_NODE_{name}", FWD_US if kind == "F" else BWD_US, deps)
                    ar = builder.collective(
                        f"COMM_COLL_NODE_{name}_ar", CollectiveType.ALL_REDUCE, ALL_REDUCE_BYTES, [comp], pg_name=pg
                    )
                    deps = [ar]
                if kind == "F" and stage < stages - 1:
                    builder.send(f"COMM_SEND_NODE_f{micro}", rank + tp, 1000 + micro, ACTIVATION_BYTES, deps)
                if kind == "B" and stage > 0:
                    builder.send(f"COMM_SEND_NODE_b{micro}", rank - tp, 100000 + micro, ACTIVATION_BYTES, deps)
                last = deps
            graphs.append(builder.graph)
    return Workload(graphs, comm_groups=groups)


def bench_config(stages: int, tp: int, groups: dict[str, list[int]]) -> AstraConfig:
    """An HGX-like box per stage: a switch of tp NPUs, stages on a ring; ring collectives on both dimensions."""
    network = NetworkConfig(["Switch", "Ring"], [tp, stages], [400.0, 50.0], [936.25, 500.0])
    ring = ["ring", "ring"]
    system = SystemConfig(
        all_reduce_implementation=ring,
        all_gather_implementation=ring,
        reduce_scatter_implementation=ring,
        all_to_all_implementation=ring,
    )
    return AstraConfig(network=network, system=system, comm_groups=groups)


def run_astra_sim(binary: str, prefix: Path, paths: dict[str, Path]) -> tuple[float, list[int] | None]:
    """Time the user's ASTRA-Sim on the same files through pipesim's astra-sim backend."""
    run = ReplayRun(prefix, paths["system"], paths["network"], paths["memory"], paths.get("comm_groups"))
    start = time.perf_counter()
    try:
        result = replay(run, "astra-sim", BackendOptions(astra_sim_bin=binary))
    except PipesimError as exc:
        print(f"astra-sim failed: {exc}")
        return time.perf_counter() - start, None
    return time.perf_counter() - start, result.finish_ns


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=16)
    parser.add_argument("--tp", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="print the top of a cProfile of simulate()")
    args = parser.parse_args()

    start = time.perf_counter()
    workload = build_1f1b(args.stages, args.tp, args.microbatches, args.layers)
    nodes = workload.node_count()
    print(f"built {workload.npus} ranks, {nodes} nodes in {time.perf_counter() - start:.2f} s")

    with tempfile.TemporaryDirectory(prefix="pipesim_bench_") as tmp:
        folder = Path(tmp)
        prefix = folder / "workload"
        write_workload(prefix, workload)
        paths = write_astra_files(folder, bench_config(args.stages, args.tp, workload.comm_groups))

        start = time.perf_counter()
        config = load_astra_config(paths["system"], paths["network"], paths["memory"], paths["comm_groups"])
        loaded = read_workload(prefix, workload.npus)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        result = simulate(loaded, config)
        sim_s = time.perf_counter() - start
        print(f"read      {read_s:6.3f} s")
        print(f"simulate  {sim_s:6.3f} s   ({nodes / sim_s:,.0f} nodes/s)")
        print(f"replay    {read_s + sim_s:6.3f} s   (read + simulate)")
        print(f"finish    max {max(result.finish_ns):,} ns, rank 0 {result.finish_ns[0]:,} ns")
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"peak RSS  {peak_kib / 1024:.0f} MiB")

        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            simulate(loaded, config)
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)

        binary = os.environ.get("ASTRA_SIM_BIN")
        if binary:
            wall, finish = run_astra_sim(binary, prefix, paths)
            if finish is not None:
                same = finish == result.finish_ns
                print(f"astra-sim {wall:6.3f} s   ratio {wall / (read_s + sim_s):.1f}x   finish times match: {same}")
                if not same:
                    diffs = [(r, a, b) for r, (a, b) in enumerate(zip(finish, result.finish_ns, strict=True)) if a != b]
                    print(f"  first differences (rank, astra-sim, pipesim): {diffs[:5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
