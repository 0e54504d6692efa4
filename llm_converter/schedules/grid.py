"""The step x rank grid as text, in the layout of torch's `_format_pipeline_order`: a header of rank labels,
then one row per time step (`Step 03: 0F3 1F2 ...`), an empty cell where the rank is idle."""

from __future__ import annotations

from llm_converter.schedules.dry_run import DryRun


def format_grid(run: DryRun) -> str:
    """The dry run's timeline on unit steps (integer times; an action lasting d steps fills d rows)."""
    rows = run.step_rows()
    num_steps = max((len(r) for r in rows), default=0)
    step_labels = [f"Step {str(i).zfill(len(str(max(num_steps - 1, 0))))}" for i in range(num_steps)]
    cells = [[("" if i >= len(r) or r[i] is None else str(r[i])) for r in rows] for i in range(num_steps)]
    rank_labels = [f"Rank {r}" for r in range(len(rows))]
    widths = [max([len(rank_labels[r])] + [len(row[r]) for row in cells]) for r in range(len(rows))]
    label_width = len(step_labels[0]) if step_labels else 4
    header = " " * (label_width + 2) + " ".join(f"{lab:<{widths[r]}}" for r, lab in enumerate(rank_labels))
    lines = [header.rstrip()]
    for label, row in zip(step_labels, cells, strict=True):
        lines.append((f"{label}: " + " ".join(f"{c:<{widths[r]}}" for r, c in enumerate(row))).rstrip())
    return "\n".join(lines) + "\n"
