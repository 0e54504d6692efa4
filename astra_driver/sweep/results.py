"""The sweep's results CSV: one row per point, read back for resuming, rewritten atomically.

Columns: the swept fields (as written in the spec, in grid order), `error` (empty when the point ran), then the
metrics in the order they first appear (grid order), and with a `capacity:` section `best`. A point is identified by
its parameter cells (grid.format_value), so a rerun of the same spec skips every point already in the file.
Rows of points the spec no longer has are kept, after the spec's own, so resuming with a changed grid loses nothing.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from astra_driver.sweep.grid import CapacitySpec, Point, format_value
from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic

ERROR = "error"
BEST = "best"

Row = dict[str, str]
Key = tuple[str, ...]


def point_key(point: Point) -> Key:
    return tuple(format_value(value) for _, value in point.params)


class ResultTable:
    """Rows by point key; cells are text (as read from, or about to go to, the CSV)."""

    def __init__(self, parameter_names: Sequence[str]) -> None:
        self.parameter_names = list(parameter_names)
        self.rows: dict[Key, Row] = {}

    @classmethod
    def load(cls, path: Path, parameter_names: Sequence[str]) -> ResultTable:
        """The rows already in `path` (none when it does not exist or is empty)."""
        table = cls(parameter_names)
        if not path.exists():
            return table
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise PipesimError(f"{path}: cannot read the results to resume ({exc}); give another -o") from None
        if not text.strip():
            return table
        reader = csv.reader(io.StringIO(text))
        header = next(reader)
        if ERROR not in header:
            raise PipesimError(
                f"{path}: not a pipesim sweep result (no `{ERROR}` column); give another -o or remove the file"
            )
        params = header[: header.index(ERROR)]
        if sorted(params) != sorted(parameter_names):
            raise PipesimError(
                f"{path}: its points vary {', '.join(params) or 'nothing'}, this spec varies "
                f"{', '.join(parameter_names) or 'nothing'}; give another -o or remove the file"
            )
        for line, cells in enumerate(reader, start=2):
            if not cells:
                continue
            if len(cells) != len(header):
                raise PipesimError(
                    f"{path}:{line}: {len(cells)} cells for {len(header)} columns; the file was edited or cut; "
                    "fix or remove that line"
                )
            row = dict(zip(header, cells, strict=True))
            row.pop(BEST, None)  # recomputed over all rows on every write
            table.rows[tuple(row[name] for name in parameter_names)] = row
        return table

    def has(self, point: Point, retry_errors: bool = False) -> bool:
        row = self.rows.get(point_key(point))
        return row is not None and not (retry_errors and row.get(ERROR))

    def put(self, point: Point, metrics: dict[str, object]) -> None:
        row: Row = {name: format_value(value) for name, value in point.params}
        row[ERROR] = str(metrics.get(ERROR, "") or "")
        for name, value in metrics.items():
            if name != ERROR:
                row[name] = format_value(value)
        self.rows[point_key(point)] = row

    def ordered(self, points: Sequence[Point]) -> list[Row]:
        """The spec's points that have rows, in grid order, then rows of points the spec does not have."""
        keys = [point_key(p) for p in points]
        in_spec = set(keys)
        rows = [self.rows[k] for k in keys if k in self.rows]
        return rows + [row for key, row in self.rows.items() if key not in in_spec]

    def to_csv(self, points: Sequence[Point], capacity: CapacitySpec | None = None) -> str:
        rows = self.ordered(points)
        columns = [*self.parameter_names, ERROR]
        seen = set(columns)
        for row in rows:
            for name in row:
                if name not in seen:
                    seen.add(name)
                    columns.append(name)
        if capacity is not None:
            columns.append(BEST)
            best = best_row(rows, capacity)
            rows = [{**row, BEST: "true" if row is best else ""} for row in rows]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(name, "") for name in columns])
        return buffer.getvalue()

    def write(self, path: Path, points: Sequence[Point], capacity: CapacitySpec | None = None) -> None:
        write_atomic(path, self.to_csv(points, capacity).encode())


def best_row(rows: Sequence[Row], capacity: CapacitySpec) -> Row | None:
    """With a fixed rate: the point meeting the SLO on the fewest NPUs (then the lower P90 TTFT, then grid order).
    Without: the point with the highest max_rate per NPU (Vidur's best configuration: most QPS per dollar, the cost
    here being NPUs), then the fewer NPUs, then grid order."""
    candidates: list[tuple[tuple[float, ...], int, Row]] = []
    for order, row in enumerate(rows):
        if row.get(ERROR):
            continue
        if capacity.rate is not None:
            if row.get("meets_slo") != "true":
                continue
            rank = (_number(row.get("num_npus")), _number(row.get("p90_ttft_ms")))
        else:
            if not row.get("max_rate"):
                continue
            rank = (-_number(row.get("max_rate_per_npu")), _number(row.get("num_npus")))
        candidates.append((rank, order, row))
    return min(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None


def _number(text: str | None) -> float:
    try:
        return float(text) if text else math.inf
    except ValueError:
        return math.inf
