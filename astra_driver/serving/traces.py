"""Traces of a serving run: every iteration's per-NPU .et plus a manifest, and their replay on any backend.

`pipesim run --keep-traces DIR` writes
    DIR/manifest.json                      the run: instances, requests, KV transfers
    DIR/iterations.jsonl                   one line per iteration as it ended (instance, batch entries, launch
                                           and end tick, which requests got a token): streamed, memory stays flat
    DIR/instance<i>/network.yml ...        the instance's ASTRA-Sim files (as `pipesim trace` writes them; none
                                           for a 1-NPU instance, which ASTRA-Sim cannot run)
    DIR/instance<i>/iter<k>.<r>.et         iteration k's graph of the instance's NPU r (the graphs the run timed)
into a hidden folder beside DIR, renamed into place when the run succeeded.

`pipesim simulate DIR` replays them (docs/serving.md, "Traces"): one ASTRA-Sim run per iteration, the driver
composing the overlap. On the builtin backend the iterations' .et files go onto a running engine per instance
at their recorded launch ticks, exactly as the run added its in-memory graphs, so the recomputed metrics are
the run's to the nanosecond. On astra-sim/docker each iteration is one standalone run; the driver turns its
per-rank finish ticks into per-stage busy times and chains iterations with the run's rules: stage s of
iteration k starts when stage s-1 of k and stage s of k-1 are done, and k launches no earlier than its recorded
launch, stage 0's previous iteration and iteration k - pp (the in-flight cap).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from astra_driver.astra_config import AstraConfig, NetworkConfig, load_astra_config
from astra_driver.astra_files import COMM_GROUPS_FILE, MEMORY_FILE, NETWORK_FILE, SYSTEM_FILE, write_astra_files
from astra_driver.engine import Engine
from astra_driver.paths import check_output_path, check_replaceable_folder
from astra_driver.report.timeline import TimeWindow
from astra_driver.serving.metrics import IterationRecord
from astra_driver.serving.node_timeline import NodeTimeline
from astra_driver.serving.request import Request, RequestStatus
from astra_driver.serving.scheduler import SchedulerStats
from llm_converter.chakra.reader import read_workload
from llm_converter.chakra.writer import encode_graph, et_path
from llm_converter.errors import PipesimError
from llm_converter.graph import Workload
from llm_converter.io import new_staging_folder, replace_folder, signals_held, write_atomic
from llm_converter.perf import paused_gc

MANIFEST = "manifest.json"
ITERATIONS = "iterations.jsonl"
FORMAT = "pipesim-serving-traces"
VERSION = 1


def _instance_folder(instance_id: int) -> str:
    return f"instance{instance_id}"


def _is_trace_output(name: str) -> bool:
    """What a previous `--keep-traces` wrote into DIR (the folder is replaced whole)."""
    return name in (MANIFEST, ITERATIONS) or (name.startswith("instance") and name[len("instance") :].isdigit())


def _iteration_prefix(instance_id: int, iteration_id: int) -> str:
    return f"{_instance_folder(instance_id)}/iter{iteration_id}"


# ---------------------------------------------------------------------------------------------------------
# Writing (driven by the serving loop)
# ---------------------------------------------------------------------------------------------------------


class TraceWriter:
    """Collects a run's iterations into a staging folder; `finish` writes the manifest and renames it to DIR."""

    def __init__(self, directory: Path, config: Any) -> None:
        self.directory = Path(directory)
        check_output_path(self.directory, "--keep-traces", folder=True)
        check_replaceable_folder(self.directory, "--keep-traces", _is_trace_output)
        self.config = config
        self.staging: Path | None = None
        self.iteration_file: Any = None
        self._open: dict[tuple[int, int], dict[str, Any]] = {}
        self.transfers: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []

    def __enter__(self) -> TraceWriter:
        with signals_held():  # a signal held here arrives once self.staging is set, so __exit__ removes it
            self.staging = new_staging_folder(self.directory.resolve())
        self.iteration_file = (self.staging / ITERATIONS).open("w")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.iteration_file is not None:
            self.iteration_file.close()
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)  # a failed run leaves nothing

    def begin(self, loop: Any) -> None:
        assert self.staging is not None
        for inst in loop.instances:
            folder = self.staging / _instance_folder(inst.instance_id)
            folder.mkdir()
            files = write_astra_files(folder, inst.astra) if inst.plan.npus > 1 else {}
            network = inst.astra.network
            self.instances.append(
                {
                    "instance_id": inst.instance_id,
                    "model_name": inst.model.name,
                    "pd_type": inst.pd_type,
                    "num_npus": inst.plan.npus,
                    "tp_size": inst.plan.tp,
                    "pp_size": inst.plan.pp,
                    "npu_ids": list(inst.placed.npu_ids),
                    "num_gpu_blocks": inst.num_gpu_blocks,
                    "weight_bytes_per_npu": list(inst.weights),
                    "network": {
                        "topology": list(network.topology),
                        "npus_count": list(network.npus_count),
                        "bandwidth": list(network.bandwidth),
                        "latency": list(network.latency),
                    },
                    "astra_files": sorted(path.name for path in files.values()),
                }
            )

    def add_iteration(
        self, inst: Any, iteration_id: int, batch: Any, start_ns: int, workload: Workload, idle: bool = False
    ) -> None:
        assert self.staging is not None
        prefix = _iteration_prefix(inst.instance_id, iteration_id)
        # Plain writes: the staging folder as a whole is renamed into place at the end (write_atomic's temporary
        # file and rename per .et would double the cost of thousands of small files).
        with paused_gc():
            for rank, graph in enumerate(workload.graphs):
                with open(et_path(self.staging / prefix, rank), "wb") as handle:
                    handle.write(encode_graph(graph))
        entry = {
            "instance_id": inst.instance_id,
            "iteration_id": iteration_id,
            "batch_id": batch.batch_id,
            "prefix": prefix,
            "start_ns": start_ns,
            "idle": idle,  # launched onto an idle engine (nothing of the instance in flight): timelines use it
            "entries": [
                [e.request_id, e.num_new_tokens, e.num_context_tokens, e.is_prefill, e.samples_token]
                for e in batch.entries
            ],
        }
        self._open[(inst.instance_id, batch.batch_id)] = entry

    def end_iteration(
        self, inst: Any, batch_id: int, end_ns: int, tokens: list[int], kv_blocks: int, npu_mem_bytes: int
    ) -> None:
        entry = self._open.pop((inst.instance_id, batch_id))
        entry.update(end_ns=end_ns, tokens=tokens, kv_blocks_in_use=kv_blocks, npu_mem_bytes=npu_mem_bytes)
        self.iteration_file.write(json.dumps(entry, separators=(",", ":")) + "\n")

    def add_transfer(self, transfer: Any) -> None:
        self.transfers.append(
            {
                "request_id": transfer.request_id,
                "src_instance": transfer.src_instance,
                "dst_instance": transfer.dst_instance,
                "start_ns": transfer.start_ns,
                "end_ns": transfer.end_ns,
                "messages": [list(m) for m in transfer.messages],
                "transfer_id": transfer.transfer_id,
            }
        )

    def finish(self, loop: Any, result: Any) -> None:
        assert self.staging is not None
        self.iteration_file.close()
        self.iteration_file = None
        cluster = loop.cluster
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "cluster_config": str(cluster.source),
            "dtype": cluster.dtype,
            "link_bw": cluster.link_bw,
            "link_latency": cluster.link_latency,
            "total_npus": cluster.total_npus,
            "sim_end_ns": result.sim_end_ns,
            "instances": [
                {**record, "stats": asdict(summary.stats), "max_inflight_batches": summary.max_inflight_batches}
                for record, summary in zip(self.instances, result.instances, strict=True)
            ],
            "requests": [
                {
                    "request_id": r.request_id,
                    "arrival_ns": r.arrival_ns,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "instance_id": r.instance_id,
                    "first_scheduled_ns": r.first_scheduled_ns,
                    "num_preemptions": r.num_preemptions,
                    "num_cached_prompt_tokens": r.num_cached_prompt_tokens,
                }
                for r in result.requests
            ],
            "transfers": self.transfers,
        }
        write_atomic(self.staging / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        destination = self.directory
        with signals_held():  # the swap moves a previous DIR aside first: it must not stop half-way
            replace_folder(self.staging, destination.resolve())
        self.staging = None


# ---------------------------------------------------------------------------------------------------------
# Replaying
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ReplayedInstance:
    """What summarize() reads of an instance (the shape of loop.InstanceSummary)."""

    instance_id: int
    model_name: str
    pd_type: str | None
    num_npus: int
    pp_size: int
    num_gpu_blocks: int
    max_inflight_batches: int
    stats: SchedulerStats


@dataclass
class ReplayResult:
    requests: list[Request]
    iterations: list[IterationRecord]
    instances: list[ReplayedInstance]
    sim_end_ns: int
    backend: str
    max_abs_diff_ns: int  # largest |replayed - recorded| iteration end
    nodes_simulated: int = 0  # nodes of the iteration graphs replayed
    timeline: NodeTimeline | None = None  # with record_timeline: per-NPU node times


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file; give the folder `pipesim run --keep-traces DIR` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{path}: not a pipesim manifest ({exc}); rerun `pipesim run --keep-traces`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipesimError(f"{path}: not a pipesim serving-traces manifest (format {FORMAT!r} expected)")
    if manifest.get("version") != VERSION:
        raise PipesimError(f"{path}: manifest version {manifest.get('version')!r}; this pipesim reads {VERSION}")
    lines_path = Path(directory) / ITERATIONS
    try:
        with lines_path.open() as handle:
            iterations = [json.loads(line) for line in handle if line.strip()]
    except FileNotFoundError:
        raise PipesimError(
            f"{lines_path}: no such file; the trace folder is incomplete (rerun --keep-traces)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{lines_path}: not pipesim's iteration lines ({exc}); rerun --keep-traces") from None
    # Written as iterations ended; replayed in launch order.
    manifest["iterations"] = sorted(iterations, key=lambda it: (it["instance_id"], it["iteration_id"]))
    return manifest


def _instance_config(directory: Path, instance: dict[str, Any]) -> AstraConfig:
    folder = directory / _instance_folder(instance["instance_id"])
    if instance["num_npus"] > 1:
        groups = folder / COMM_GROUPS_FILE
        return load_astra_config(
            folder / SYSTEM_FILE, folder / NETWORK_FILE, folder / MEMORY_FILE, groups if groups.exists() else None
        )
    net = instance["network"]
    return AstraConfig(NetworkConfig(net["topology"], net["npus_count"], net["bandwidth"], net["latency"]))


def simulate_traces(
    directory: Path | str,
    backend: str = "builtin",
    options: Any = None,
    record_timeline: bool = False,
    timeline_window: TimeWindow | None = None,
    timeline_max_events: int | None = None,
) -> ReplayResult:
    """Replay a run's traces and recompute its metrics (see the module docstring for how). With
    record_timeline (builtin only), result.timeline gives the node times the run's timeline gives."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    instances = manifest["instances"]
    iterations = manifest["iterations"]
    timeline = None
    if record_timeline:
        timeline = NodeTimeline(manifest["total_npus"], timeline_window, timeline_max_events)
    if backend == "builtin":
        ends, nodes = _replay_builtin(directory, instances, iterations, timeline)
    else:
        if timeline is not None:
            raise PipesimError(
                f"--timeline: simulate records node times on the builtin backend only (it reproduces the run "
                f"exactly), not on {backend}; drop --backend, or run `pipesim replay --timeline` on one iteration"
            )
        ends, nodes = _replay_composed(directory, instances, iterations, backend, options)
    transfers_end = _replay_transfers(manifest, timeline)
    result = _rebuild(manifest, ends, transfers_end, backend)
    result.nodes_simulated = nodes
    result.timeline = timeline
    return result


def _read_iteration(directory: Path, iteration: dict[str, Any], npus: int) -> Workload:
    workload = read_workload(directory / iteration["prefix"])
    if len(workload.graphs) != npus:
        raise PipesimError(
            f"{directory / iteration['prefix']}.*.et: found {len(workload.graphs)} of the instance's {npus} per-NPU "
            "files; the trace folder is incomplete (rerun --keep-traces)"
        )
    return workload


def _replay_builtin(
    directory: Path, instances: list[dict], iterations: list[dict], timeline: NodeTimeline | None = None
) -> tuple[list[int], int]:
    """Each instance's iterations onto one running engine at their launch ticks: end tick per iteration."""
    ends: list[int | None] = [None] * len(iterations)
    nodes = 0
    by_instance: dict[int, list[int]] = {}
    for index, it in enumerate(iterations):
        by_instance.setdefault(it["instance_id"], []).append(index)
    for instance in instances:
        config = _instance_config(directory, instance)
        engine = Engine(config, npus=instance["num_npus"])
        npus = instance["num_npus"]
        if timeline is not None:
            timeline.add_engine(instance["instance_id"], config, npus, instance["npu_ids"])
        with paused_gc():
            for index in by_instance.get(instance["instance_id"], []):
                it = iterations[index]
                start = it["start_ns"]
                if start > engine.now:
                    engine.run_until(start)
                workload = _read_iteration(directory, it, instance["num_npus"])
                nodes += workload.node_count()
                if timeline is not None:
                    timeline.launched(
                        instance["instance_id"],
                        start,
                        f"batch {it['batch_id']}",
                        lambda it=it, n=npus: _read_iteration(directory, it, n).graphs,  # read again if replayed
                        workload.node_count(),
                        it.get("idle", False),
                    )
                handle = engine.add_workload(workload, start, label=it["prefix"])

                def done(_: Any, tick: int, index: int = index) -> None:
                    ends[index] = tick

                handle.on_done = done
            engine.run_until(None)
    return [end if end is not None else -1 for end in ends], nodes


def _replay_composed(
    directory: Path, instances: list[dict], iterations: list[dict], backend: str, options: Any
) -> tuple[list[int], int]:
    """One backend run per iteration; the driver chains them stage by stage (module docstring)."""
    from astra_driver.backends import ReplayRun, replay

    ends = [0] * len(iterations)
    by_instance: dict[int, list[int]] = {}
    for index, it in enumerate(iterations):
        by_instance.setdefault(it["instance_id"], []).append(index)
    for instance in instances:
        folder = directory / _instance_folder(instance["instance_id"])
        pp, tp = instance["pp_size"], instance["tp_size"]
        stage_free = [0] * pp  # when stage s finished its latest iteration
        finished: list[int] = []  # end of each iteration of this instance, in launch order
        for position, index in enumerate(by_instance.get(instance["instance_id"], [])):
            it = iterations[index]
            prefix = directory / it["prefix"]
            if instance["num_npus"] > 1:
                groups = folder / COMM_GROUPS_FILE
                run = ReplayRun(
                    workload=prefix,
                    system=folder / SYSTEM_FILE,
                    network=folder / NETWORK_FILE,
                    memory=folder / MEMORY_FILE,
                    comm_groups=groups if groups.exists() else None,
                    logging_folder=folder / "log",
                )
                finish = replay(run, backend, options).finish_ns
            else:  # ASTRA-Sim needs 2 NPUs per dimension; one NPU only replays its compute durations
                workload = _read_iteration(directory, it, 1)
                from astra_driver.engine import simulate

                finish = simulate(workload, _instance_config(directory, instance)).finish_ns
            stage_end = [max(finish[s * tp : (s + 1) * tp]) for s in range(pp)]
            busy = [stage_end[0]] + [stage_end[s] - stage_end[s - 1] for s in range(1, pp)]
            launch = max(it["start_ns"], stage_free[0] if pp > 1 else 0)
            if position >= pp:
                launch = max(launch, finished[position - pp])
            if pp == 1 and finished:
                launch = max(launch, finished[-1])
            previous = launch
            for s in range(pp):
                previous = max(previous, stage_free[s]) + busy[s]
                stage_free[s] = previous
            finished.append(previous)
            ends[index] = previous
    return ends, 0


def _replay_transfers(manifest: dict[str, Any], timeline: NodeTimeline | None = None) -> list[int]:
    """KV transfers on the cluster link, each at its recorded start: end tick per transfer (builtin engine)."""
    transfers = manifest["transfers"]
    if not transfers:
        return []
    from astra_driver.serving.loop import _transfer_graphs

    npus = manifest["total_npus"]
    engine = Engine(
        AstraConfig(
            NetworkConfig(["FullyConnected"], [npus], [float(manifest["link_bw"])], [float(manifest["link_latency"])])
        ),
        npus=npus,
    )
    if timeline is not None:
        timeline.add_engine("link", engine.config, npus, range(npus), link=True)
    ends: list[int] = [0] * len(transfers)
    for index, transfer in sorted(
        enumerate(transfers), key=lambda item: (item[1]["start_ns"], item[1].get("transfer_id", item[0]))
    ):
        if transfer["start_ns"] > engine.now:
            engine.run_until(transfer["start_ns"])
        messages = [tuple(m) for m in transfer["messages"]]
        graphs = _transfer_graphs(npus, messages, transfer.get("transfer_id", index))  # the run's tags
        if timeline is not None:
            count = sum(len(graph.nodes) for graph in graphs)
            prefix = f"kv {transfer['request_id']}"
            timeline.launched("link", transfer["start_ns"], prefix, lambda graphs=graphs: graphs, count, idle=False)
        handle = engine.add_workload(graphs, transfer["start_ns"])

        def done(_: Any, tick: int, index: int = index) -> None:
            ends[index] = tick

        handle.on_done = done
    engine.run_until(None)
    return ends


def _rebuild(manifest: dict[str, Any], ends: list[int], transfer_ends: list[int], backend: str) -> ReplayResult:
    requests = {
        r["request_id"]: Request(
            r["request_id"],
            r["arrival_ns"],
            r["input_tokens"],
            r["output_tokens"],
            instance_id=r["instance_id"],
            first_scheduled_ns=r["first_scheduled_ns"],
            num_preemptions=r["num_preemptions"],
            num_cached_prompt_tokens=r["num_cached_prompt_tokens"],
        )
        for r in manifest["requests"]
    }
    iterations = manifest["iterations"]
    order = sorted(range(len(iterations)), key=lambda i: (ends[i], i))
    records: list[IterationRecord] = []
    diff = 0
    for index in order:
        it = iterations[index]
        end = ends[index]
        diff = max(diff, abs(end - it["end_ns"]))
        prefill = decode = 0
        for rid, new, context, is_prefill, _samples in it["entries"]:
            if is_prefill:
                prefill += new
                request = requests[rid]
                if rid in it["tokens"] and context + new == request.input_tokens:
                    prefill += request.num_cached_prompt_tokens
        for rid in it["tokens"]:
            request = requests[rid]
            request.token_times_ns.append(end)
            request.num_generated += 1
            decode += 1
            if request.num_generated == request.output_tokens:
                request.finish_ns = end
                request.status = RequestStatus.FINISHED
        records.append(
            IterationRecord(
                it["instance_id"],
                it["batch_id"],
                it["start_ns"],
                end,
                prefill,
                decode,
                len(it["entries"]),
                it["kv_blocks_in_use"],
                it["npu_mem_bytes"],
            )
        )
    instances = [
        ReplayedInstance(
            i["instance_id"],
            i["model_name"],
            i["pd_type"],
            i["num_npus"],
            i["pp_size"],
            i["num_gpu_blocks"],
            i["max_inflight_batches"],
            SchedulerStats(**i["stats"]),
        )
        for i in manifest["instances"]
    ]
    sim_end = max([*ends, *transfer_ends, 0])
    return ReplayResult(list(requests.values()), records, instances, sim_end, backend, diff)
