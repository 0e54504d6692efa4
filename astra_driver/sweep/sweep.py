"""`pipesim sweep`: every point of a spec run on an executor, one CSV row each, resumable (docs/sweep.md).

Points already in the output (same parameter cells) are skipped; finished rows are written atomically at most
every WRITE_INTERVAL_S and always when the sweep ends, however it ends (Ctrl-C included), so the file is always a
complete CSV of finished points.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from astra_driver.paths import check_output_path
from astra_driver.serving.progress import ServingProgress
from astra_driver.sweep.executors import make_executor
from astra_driver.sweep.grid import SweepSpec, load_spec
from astra_driver.sweep.results import BEST, ERROR, ResultTable, Row, best_row
from astra_driver.sweep.runner import run_point

WRITE_INTERVAL_S = 1.0  # a sweep of thousands of quick points does not rewrite the file thousands of times


@dataclass
class SweepOutcome:
    spec: SweepSpec
    output: Path
    points: int
    ran: int
    skipped: int
    failed: int  # points of the spec whose row has an error (this run's and earlier ones)
    executor: str
    rows: list[Row]
    best: Row | None

    def describe(self) -> str:
        text = (
            f"wrote {self.output} ({self.points} points: {self.ran} run on {self.executor}, {self.skipped} already "
            f"there, {self.failed} failed)"
        )
        failed = [row for row in self.rows if row.get(ERROR)]
        if failed:
            where = ", ".join(f"{name}={_short(failed[0][name])}" for name in self.spec.parameter_names)
            text += f"\nfirst failure ({where or 'the base'}): {_short(failed[0][ERROR], 300)}"
        capacity = self.spec.capacity
        if capacity is None:
            return text
        params = (
            ", ".join(f"{name}={_short(self.best[name])}" for name in self.spec.parameter_names) if self.best else ""
        )
        if capacity.rate is not None:
            found = (
                f"cheapest configuration meeting the SLO at {capacity.rate:g} req/s: {params or 'the base'} "
                f"({self.best['num_npus']} NPUs, P90 TTFT {float(self.best['p90_ttft_ms']):.2f} ms, P90 TPOT "
                f"{float(self.best['p90_tpot_ms']):.2f} ms)"
                if self.best
                else f"no configuration meets the SLO at {capacity.rate:g} req/s"
            )
        else:
            found = (
                f"most requests/s per NPU within the SLO: {params or 'the base'} ({float(self.best['max_rate']):.4g} "
                f"req/s on {self.best['num_npus']} NPUs)"
                if self.best
                else "no configuration meets the SLO at any rate"
            )
        return f"{text}\n{found}"


def run_sweep(
    spec_path: Path | str,
    output: Path | str,
    jobs: int | None = None,
    ray: str | None = None,
    retry_errors: bool = False,
    show_progress: bool | None = None,
    on_row: Callable[[int, dict[str, object]], None] | None = None,
) -> SweepOutcome:
    spec = load_spec(spec_path)
    output = Path(output)
    check_output_path(output, "-o")
    points = spec.points()
    table = ResultTable.load(output, spec.parameter_names)
    todo = [p for p in points if not table.has(p, retry_errors)]
    executor = make_executor(jobs, ray)
    ran = 0
    completed = False
    last_write = time.monotonic()
    try:
        # closing(): however the loop ends, the executor stops its workers or tasks before the final write
        results = executor.run(run_point, [(p.index, p.job) for p in todo])
        with (
            ServingProgress(len(points), enabled=show_progress, unit="points", show_sim_time=False) as progress,
            contextlib.closing(results),
        ):
            progress.update(len(points) - len(todo), 0)
            for index, metrics in results:
                table.put(points[index], metrics)
                ran += 1
                if on_row is not None:
                    on_row(index, metrics)
                progress.update(len(points) - len(todo) + ran, 0)
                if time.monotonic() - last_write >= WRITE_INTERVAL_S:
                    table.write(output, points, spec.capacity)
                    last_write = time.monotonic()
        completed = True
    finally:
        if completed or ran:  # also on Ctrl-C: every finished point is kept
            table.write(output, points, spec.capacity)
    rows = table.ordered(points)[: sum(1 for p in points if table.has(p))]
    best = best_row(rows, spec.capacity) if spec.capacity is not None else None
    return SweepOutcome(
        spec=spec,
        output=output,
        points=len(points),
        ran=ran,
        skipped=len(points) - len(todo),
        failed=sum(1 for row in rows if row.get(ERROR)),
        executor=executor.name,
        rows=[{k: v for k, v in row.items() if k != BEST} for row in rows],
        best=best,
    )


def _short(cell: str, width: int = 40) -> str:
    """A parameter cell for a message: whole objects (a list of instances) cut to a readable length."""
    return cell if len(cell) <= width else cell[: width - 3] + "..."
