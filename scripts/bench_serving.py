"""Benchmark `pipesim run`, whole process: wall time, simulated time, iterations/s, nodes/s and peak memory.

Cases (measured profile bundles from ../shared/profiles; workloads from ../shared/workloads):

1. qwen32b-tp2   ShareGPT 300 requests at 10 req/s (sharegpt-qwen3-32b-300-sps10.jsonl), Qwen3-32B tp2, RTXPRO6000
2. llama8b-tp1   300 ShareGPT-like requests (lengths resampled from that file, Poisson 10 req/s, seed 0),
                 Llama-3.1-8B tp1, RTXPRO6000
3. llama8b-pp2   the same workload on pp2 (the seed's cluster)
4. llama8b-4x    10,000 such requests at 40 req/s on 4 Llama-3.1-8B tp1 instances (round-robin)

Each runs `python3 -m astra_driver.cli run ... --json` as a subprocess, without and with --keep-traces (to a
temporary folder). Peak memory is the child's maximum resident set and cpu s its user + system time (wait4);
on a loaded machine cpu s is the better measure of what wall time would be. Goal: a 300-request run in under
2 s wall, whole process; memory flat in the number of requests.

    python scripts/bench_serving.py [--cases qwen32b-tp2,llama8b-tp1] [--no-traces] [--cprofile CASE]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PIPESIM_SHARED", REPO.parent / "shared"))
SHAREGPT = "sharegpt-qwen3-32b-300-sps10.jsonl"
GOAL_WALL_S = 2.0
HARDWARE = "RTXPRO6000"
NPU_MEM = {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0}


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    tp: int
    pp: int
    instances: int
    workload: str  # "sharegpt" (the shared file) or "resampled:<n>:<rate>"
    profile: str  # bundle folder under profiles/<hardware>/


CASES = (
    Case("qwen32b-tp2", "Qwen/Qwen3-32B", 2, 1, 1, "sharegpt", "Qwen/Qwen3-32B"),
    Case("llama8b-tp1", "meta-llama/Llama-3.1-8B", 1, 1, 1, "resampled:300:10", "meta-llama/Llama-3.1-8B"),
    Case("llama8b-pp2", "meta-llama/Llama-3.1-8B", 1, 2, 1, "resampled:300:10", "meta-llama/Llama-3.1-8B"),
    Case("llama8b-4x", "meta-llama/Llama-3.1-8B", 1, 1, 4, "resampled:10000:40", "meta-llama/Llama-3.1-8B"),
)


def cluster_json(case: Case) -> dict:
    """One node holding `instances` copies of the instance (the seed's link: 16 GB/s, 20 us)."""
    instance = {
        "model_name": case.model,
        "hardware": HARDWARE,
        "npu_mem": NPU_MEM,
        "num_npus": case.tp * case.pp,
        "tp_size": case.tp,
        "pp_size": case.pp,
        "pd_type": None,
    }
    node = {
        "num_instances": case.instances,
        "cpu_mem": {"mem_size": 512, "mem_bw": 256, "mem_latency": 0},
        "instances": [instance] * case.instances,
    }
    return {"num_nodes": 1, "link_bw": 16, "link_latency": 20000, "nodes": [node]}


def workload_path(case: Case, work: Path) -> Path:
    """The case's JSONL: the shared ShareGPT file, or requests resampled from its lengths (B1's generator)."""
    if case.workload == "sharegpt":
        return SHARED / "workloads" / SHAREGPT
    _, count, rate = case.workload.split(":")
    path = work / f"sharegpt-like-{count}-rate{rate}.jsonl"
    if not path.exists():
        from astra_driver.serving.workload import WorkloadSpec, generate_workload, write_workload_jsonl

        spec = WorkloadSpec(
            num_requests=int(count), rate=float(rate), lengths_from=SHARED / "workloads" / SHAREGPT, seed=0
        )
        write_workload_jsonl(path, generate_workload(spec))
    return path


def run_command(case: Case, work: Path, traces: Path | None) -> list[str]:
    cluster = work / f"{case.name}.json"
    cluster.write_text(json.dumps(cluster_json(case), indent=2))
    cmd = [
        "run",
        "--cluster-config", str(cluster),
        "--dtype", "bfloat16",
        "--block-size", "16",
        "--dataset", str(workload_path(case, work)),
        "--output", str(work / f"{case.name}.csv"),
        "--profile-dir", str(SHARED / "profiles" / HARDWARE / case.profile),
        "--json",
    ]  # fmt: skip
    if traces is not None:
        cmd += ["--keep-traces", str(traces)]
    return cmd


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    cpu_s: float  # the child's user + system time: what wall time is on an idle machine
    peak_rss_mb: float
    summary: dict


def measure(args: list[str], prefix: list[str] | None = None) -> Measurement:
    """Run `python3 [prefix] -m astra_driver.cli ARGS`; wall time and the child's own peak RSS (wait4)."""
    cmd = [sys.executable, *(prefix or []), "-m", "astra_driver.cli", *args]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _read_all(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"pipesim run failed (exit {proc.returncode}): {' '.join(cmd)}\n{err.strip()}")
    return Measurement(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, _last_json(out))


def _read_all(proc: subprocess.Popen) -> tuple[str, str]:
    """Both pipes to the end without reaping the child (communicate() would wait() and lose its rusage)."""
    chunks: dict[str, str] = {}

    def drain(name: str, stream) -> None:
        chunks[name] = stream.read()

    threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", proc.stdout), ("err", proc.stderr))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return chunks["out"], chunks["err"]


def _last_json(stdout: str) -> dict:
    """The --json summary: the last JSON object on stdout (log lines may come before it)."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout[stdout.find("{") :]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"no JSON summary on stdout ({exc}):\n{stdout[-2000:]}") from None


def count_nodes(traces: Path) -> int:
    """Nodes in the kept .et files (every iteration, every NPU)."""
    from llm_converter.chakra.reader import iter_records

    # Every record but the first (the GlobalMetadata) is a node.
    return sum(sum(1 for _ in iter_records(p)) - 1 for p in traces.rglob("*.et"))


def report(case: Case, keep: bool, m: Measurement, nodes: int | None) -> str:
    s = m.summary
    sim_s = s.get("duration", 0.0)
    iterations = s.get("iterations", 0)
    nodes = s.get("nodes_simulated") or nodes
    nodes_s = f"{nodes / m.wall_s:12,.0f}" if nodes else f"{'-':>12}"
    goal = ""
    if s.get("completed", 0) <= 300:
        goal = "  ok" if m.wall_s < GOAL_WALL_S else f"  over {GOAL_WALL_S:.0f} s"
    return (
        f"{case.name:<13} {'yes' if keep else 'no':<6} {s.get('completed', 0):>6} {m.wall_s:8.2f} {m.cpu_s:7.2f} "
        f"{sim_s:9.2f} "
        f"{iterations:>8} {iterations / m.wall_s:10,.0f} {nodes_s} {m.peak_rss_mb:9.0f}{goal}"
    )


def cprofile(case: Case, work: Path, top: int) -> None:
    """Run one case under cProfile (whole process) and print the hot spots by own time and cumulative time."""
    stats_path = work / f"{case.name}.prof"
    measure(run_command(case, work, None), prefix=["-m", "cProfile", "-o", str(stats_path)])
    stats = pstats.Stats(str(stats_path))
    stats.strip_dirs()
    print(f"\n== cProfile {case.name}: top {top} by own time ==")
    stats.sort_stats("tottime").print_stats(top)
    print(f"== cProfile {case.name}: top {top} by cumulative time ==")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    parser.add_argument("--no-traces", action="store_true", help="skip the --keep-traces runs")
    parser.add_argument("--cprofile", metavar="CASE", help="also profile CASE with cProfile and print hot spots")
    parser.add_argument("--top", type=int, default=25, help="rows of the cProfile listing")
    args = parser.parse_args()
    if not (SHARED / "workloads" / SHAREGPT).is_file():
        raise SystemExit(f"{SHARED}: shared workloads/profiles not found (set PIPESIM_SHARED)")
    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases.split(",") if n not in by_name]
    if unknown:
        raise SystemExit(f"--cases: unknown {', '.join(unknown)}; choose from {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.cases.split(",")]

    with tempfile.TemporaryDirectory(prefix="pipesim-bench-") as tmp:
        work = Path(tmp)
        print(
            f"{'case':<13} {'traces':<6} {'reqs':>6} {'wall s':>8} {'cpu s':>7} {'sim s':>9} {'iters':>8} "
            f"{'iters/s':>10} {'nodes/s':>12} {'peak MB':>9}"
        )
        for case in chosen:
            for keep in (False,) if args.no_traces else (False, True):
                traces = work / f"{case.name}-traces" if keep else None
                m = measure(run_command(case, work, traces))
                nodes = count_nodes(traces) if traces is not None and not m.summary.get("nodes_simulated") else None
                print(report(case, keep, m, nodes), flush=True)
                if traces is not None:
                    shutil.rmtree(traces)
        if args.cprofile:
            cprofile(by_name[args.cprofile], work, args.top)


if __name__ == "__main__":
    main()
