"""`pipesim report`: the plots of a serving run, and its comparison with another run or a vLLM benchmark.

pipesim report outputs/pp2_run.csv -o report/
pipesim report outputs/pp2_run.csv -o report/ --compare vllm_result.json --label pipesim --label vLLM
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app


@app.command()
def report(
    run_csv: Annotated[Path, typer.Argument(help="Per-request CSV of `pipesim run --output` (its .log.csv beside).")],
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Folder for the PNGs and summary.json.")],
    compare: Annotated[
        Path | None,
        typer.Option("--compare", help="Another run's CSV, or a `vllm bench serve --save-result` JSON."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Name of the run, then of the --compare file (default: file names)."),
    ] = None,
) -> None:
    """Plot a serving run: latency CDFs, throughput, batch size and KV use over time, and a comparison table."""
    from astra_driver.report.plots import write_run_report

    written = write_run_report(run_csv, output_dir, compare=compare, labels=label or (), emit=typer.echo)
    typer.echo(f"wrote {len(written)} files to {output_dir}/: {', '.join(p.name for p in written)}")
