"""`pipesim replay`: ASTRA-Sim's command line, run on the builtin engine, a local binary or a docker image.

Takes ASTRA-Sim's own flags and prints ASTRA-Sim's own per-rank result lines, so scripts written around
the binary work unchanged:

    pipesim replay --workload-configuration=traces/x/llm --system-configuration=system.json \\
        --network-configuration=network.yml --remote-memory-configuration=memory.json
    sys[0] finished, 1020031 cycles, exposed communication 20031 cycles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.astra_output import NodeTime
from astra_driver.backends import (
    BACKENDS,
    DEFAULT_DOCKER_BINARY,
    DEFAULT_TIMEOUT_S,
    BackendOptions,
    BackendResult,
    ReplayRun,
    replay,
)
from astra_driver.cli import app
from astra_driver.paths import check_output_path
from astra_driver.report.gantt import DEFAULT_MAX_ROWS
from astra_driver.report.outputs import (
    TimelineFlag,
    TimelineMaxEventsFlag,
    TimelineNpusFlag,
    TimelinePngFlag,
    TimelineRequest,
    TimelineRowsFlag,
    TimelineWindowFlag,
    write_timelines,
)
from astra_driver.report.timeline import DEFAULT_MAX_EVENTS, node_facts
from llm_converter.chakra.reader import read_workload
from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic

NODE_TIMES_HEADER = "rank,node_id,name,type,issue_ns,end_ns"


def _csv_field(text: str) -> str:
    # Node names are free text; quote them the way the csv module would when they hold a separator.
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def node_times_csv(node_times: list[list[NodeTime]]) -> str:
    """`rank,node_id,name,type,issue_ns,end_ns`, one row per node, rank then node id order."""
    rows = [NODE_TIMES_HEADER]
    for rank, times in enumerate(node_times):
        for entry in sorted(times, key=lambda item: item.node_id):
            rows.append(
                f"{rank},{entry.node_id},{_csv_field(entry.name)},{int(entry.type)},{entry.issue_ns},{entry.end_ns}"
            )
    return "\n".join(rows) + "\n"


def write_node_times(path: Path, result: BackendResult) -> None:
    if result.node_times is None:
        raise PipesimError(f"{path}: the {result.backend} backend returned no node times")
    write_atomic(path, node_times_csv(result.node_times).encode())


def write_replay_timelines(request: TimelineRequest, run: ReplayRun, result: BackendResult) -> None:
    """The timeline files of a replay: node times from the backend, bytes and peers from the workload's files."""
    if result.node_times is None:
        raise PipesimError(f"--timeline: the {result.backend} backend returned no node times")
    facts = node_facts(read_workload(run.workload, npus=len(result.node_times))) if request.json_path else None
    metadata = {"workload": str(run.workload), "backend": result.backend, "finish_ns": result.finish_ns}
    write_timelines(request, result.node_times, facts=facts, metadata=metadata)


# Named explicitly: the function must not shadow the library call `replay`.
@app.command(name="replay")
def replay_command(
    workload_configuration: Annotated[
        str, typer.Option("--workload-configuration", help="Workload prefix: reads PREFIX.<rank>.et for every NPU.")
    ],
    system_configuration: Annotated[Path, typer.Option("--system-configuration", help="ASTRA-Sim system.json.")],
    network_configuration: Annotated[
        Path, typer.Option("--network-configuration", help="ASTRA-Sim analytical network.yml.")
    ],
    remote_memory_configuration: Annotated[
        Path, typer.Option("--remote-memory-configuration", help="ASTRA-Sim memory.json.")
    ],
    comm_group_configuration: Annotated[
        Path | None, typer.Option("--comm-group-configuration", help="groups.json: group id -> ranks.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help=f"One of: {', '.join(BACKENDS)}.")] = "builtin",
    astra_sim_bin: Annotated[
        str | None, typer.Option("--astra-sim-bin", help="ASTRA-Sim binary (default: $ASTRA_SIM_BIN).")
    ] = None,
    docker_image: Annotated[
        str | None, typer.Option("--docker-image", help="Image holding ASTRA-Sim (default: $PIPESIM_DOCKER_IMAGE).")
    ] = None,
    docker_binary: Annotated[
        str | None, typer.Option("--docker-binary", help=f"Binary inside the image (default {DEFAULT_DOCKER_BINARY}).")
    ] = None,
    logging_folder: Annotated[
        Path | None,
        typer.Option("--logging-folder", help="Logs go here (binaries default to ./log, like ASTRA-Sim)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Kill a binary run after this many seconds (0: no limit).")
    ] = DEFAULT_TIMEOUT_S,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"finish_ns": [...], "exposed_comm_ns": [...]} instead.')
    ] = False,
    node_times: Annotated[
        Path | None, typer.Option("--node-times", help="Write rank,node_id,name,type,issue_ns,end_ns to this CSV.")
    ] = None,
    injection_scale: Annotated[
        float | None, typer.Option("--injection-scale", help="ASTRA-Sim's: multiplies endpoint-delay (default 1).")
    ] = None,
    comm_scale: Annotated[float | None, typer.Option("--comm-scale", help="ASTRA-Sim's (unused by it).")] = None,
    compute_scale: Annotated[
        float | None, typer.Option("--compute-scale", help="ASTRA-Sim's; binaries only unless 1.")
    ] = None,
    num_queues_per_dim: Annotated[
        int | None, typer.Option("--num-queues-per-dim", help="ASTRA-Sim's; binaries only unless 1.")
    ] = None,
    rendezvous_protocol: Annotated[
        str | None, typer.Option("--rendezvous-protocol", help="ASTRA-Sim's true/false; binaries only unless false.")
    ] = None,
    logging_configuration: Annotated[
        Path | None, typer.Option("--logging-configuration", help="ASTRA-Sim's spdlog config (binaries only).")
    ] = None,
    timeline: TimelineFlag = None,
    timeline_png: TimelinePngFlag = None,
    timeline_window: TimelineWindowFlag = None,
    timeline_npus: TimelineNpusFlag = None,
    timeline_max_events: TimelineMaxEventsFlag = DEFAULT_MAX_EVENTS,
    timeline_rows: TimelineRowsFlag = DEFAULT_MAX_ROWS,
) -> None:
    """Run a workload like ASTRA-Sim and print its per-rank 'finished' lines."""
    if not (math.isfinite(timeout) and timeout >= 0):
        raise PipesimError(f"--timeout {timeout:g}: must be >= 0 seconds (0: no limit)")
    if backend not in BACKENDS:
        raise PipesimError(f"--backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    # Where results go is checked before a run that may take hours.
    if node_times is not None:
        check_output_path(node_times, "--node-times")
    if logging_folder is not None:
        check_output_path(logging_folder, "--logging-folder", folder=True)
    timelines = TimelineRequest.from_flags(
        timeline, timeline_png, timeline_window, timeline_npus, timeline_max_events, timeline_rows
    )
    run = ReplayRun(
        workload=Path(workload_configuration),
        system=system_configuration,
        network=network_configuration,
        memory=remote_memory_configuration,
        comm_groups=comm_group_configuration,
        logging_folder=logging_folder,
        timeout_s=timeout or None,
        record_node_times=node_times is not None or timelines.wanted,
        injection_scale=injection_scale,
        comm_scale=comm_scale,
        compute_scale=compute_scale,
        num_queues_per_dim=num_queues_per_dim,
        rendezvous_protocol=rendezvous_protocol,
        logging_configuration=logging_configuration,
    )
    options = BackendOptions(astra_sim_bin=astra_sim_bin, docker_image=docker_image, docker_binary=docker_binary)
    result = replay(run, backend, options)
    if node_times is not None:
        write_node_times(node_times, result)
    if timelines.wanted:
        write_replay_timelines(timelines, run, result)
    if as_json:
        typer.echo(json.dumps({"finish_ns": result.finish_ns, "exposed_comm_ns": result.exposed_comm_ns}))
    else:
        for line in result.finish_lines():
            typer.echo(line)
