"""`pipesim inspect` and `pipesim validate`: look into .et files and check a workload before running it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.paths import check_output_path
from astra_driver.validate_job import is_single_et, validate_job
from llm_converter.chakra import inspect as chakra_inspect
from llm_converter.chakra.reader import read_graph, read_workload
from llm_converter.errors import PipesimError
from llm_converter.graph import Graph
from llm_converter.io import write_atomic


def load_graphs(file_or_prefix: str) -> list[Graph]:
    """One `.et` file, or every `<prefix>.<rank>.et` of a workload prefix."""
    if is_single_et(file_or_prefix):
        return [read_graph(file_or_prefix)]
    return read_workload(file_or_prefix).graphs


@app.command()
def inspect(
    file_or_prefix: Annotated[str, typer.Argument(help="An .et file, or a workload prefix (traces/x/llm).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON Lines: Chakra's jsonizer mapping, one document per node per line.")
    ] = False,
    dot: Annotated[bool, typer.Option("--dot", help="Graphviz DOT (data edges plain, ctrl edges tee).")] = False,
    graphml: Annotated[bool, typer.Option("--graphml", help="GraphML (edge attribute dependency).")] = False,
    summary_json: Annotated[bool, typer.Option("--summary-json", help="The summary as JSON.")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
) -> None:
    """Summarise .et files: nodes by type, compute time, bytes per peer, critical path."""
    if sum((as_json, dot, graphml, summary_json)) > 1:
        raise PipesimError("inspect: choose one of --json, --dot, --graphml, --summary-json")
    if output is not None:
        check_output_path(output, "-o/--output")
    graphs = load_graphs(file_or_prefix)
    if as_json:
        text = "".join(chakra_inspect.to_json(graph) for graph in graphs)
    elif dot:
        text = "".join(chakra_inspect.to_dot(graph) for graph in graphs)
    elif graphml:
        text = chakra_inspect.to_graphml(graphs)
    elif summary_json:
        text = json.dumps([chakra_inspect.summarize(graph).to_dict() for graph in graphs], indent=2) + "\n"
    else:
        text = "\n".join(chakra_inspect.format_summary(chakra_inspect.summarize(graph)) for graph in graphs) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        write_atomic(output, text.encode())


@app.command()
def validate(
    file_or_prefix: Annotated[
        str, typer.Argument(help="Workload prefix (reads <prefix>.0.et, <prefix>.1.et, ...) or one .et file.")
    ],
    comm_group_configuration: Annotated[
        Path | None,
        typer.Option("--comm-group-configuration", help="Groups file (default: comm_groups.json beside the files)."),
    ] = None,
    system_configuration: Annotated[
        Path | None, typer.Option("--system-configuration", help="system.json (default: beside the files).")
    ] = None,
    network_configuration: Annotated[
        Path | None, typer.Option("--network-configuration", help="network.yml (default: beside the files).")
    ] = None,
    remote_memory_configuration: Annotated[
        Path | None, typer.Option("--remote-memory-configuration", help="memory.json (default: beside the files).")
    ] = None,
    roofline: Annotated[bool, typer.Option(help="Also require num_ops and tensor_size on compute nodes.")] = False,
) -> None:
    """Check replay would load the workload and run it to completion (a dry run on the builtin engine when
    ASTRA-Sim's config is given or beside the files, else a structural one)."""
    report = validate_job(
        file_or_prefix,
        comm_groups=comm_group_configuration,
        system=system_configuration,
        network=network_configuration,
        memory=remote_memory_configuration,
        roofline=roofline,
    )
    if report.ok:
        typer.echo(report.summary())
        return
    # The problems are the report (stdout); stderr gets the one error line every failure gets.
    for problem in report.problems:
        typer.echo(str(problem))
    first = report.problems[0]
    raise PipesimError(f"{file_or_prefix}: {report.summary()}; first: {first}")
