"""The step x rank grid as text, in the layout of torch's `_format_pipeline_order`: a header of rank labels,
then one row per time step (`Step 03: 0F3 1F2 ...`), an empty cell where the rank is idle."""

from __future__ import annotations

from llm_converter.errors import PipesimError
from llm_converter.schedules import build_schedule
from llm_converter.schedules.actions import PipelineSchedule
from llm_converter.schedules.dry_run import UNIT_TIMES, ActionTimes, DryRun, peak_inflight


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


def closed_form_bubble(schedule: PipelineSchedule) -> tuple[str, float] | None:
    """The textbook bubble fraction for uniform unit times and free transfers, where one is known:
    (p-1)/(m+p-1) for gpipe and 1f1b, (p-1)/(v*m+p-1) for interleaved-1f1b."""
    p, m, v = schedule.pp, schedule.microbatches, schedule.chunks
    if schedule.name not in ("gpipe", "1f1b", "interleaved-1f1b"):
        return None
    try:
        if build_schedule(schedule.name, p, m, v).actions != schedule.actions:  # a custom CSV of that name
            return None
    except PipesimError:
        return None
    if schedule.name in ("gpipe", "1f1b"):
        return "(p-1)/(m+p-1)", (p - 1) / (m + p - 1)
    if schedule.name == "interleaved-1f1b":
        return "(p-1)/(v*m+p-1)", (p - 1) / (v * m + p - 1)
    return None


def paper_bubble_time(schedule: PipelineSchedule, times: ActionTimes | None) -> tuple[str, float] | None:
    """The zero-bubble paper's bubble time per step (Qi et al. 2023, Table 1) for 1f1b, zb-h1 and zb-h2 with one
    stage per rank: (p-1)(F+B+W), (p-1)(F+B-W), (p-1)(F+B-2W), B being the input gradient (I) and W the
    weight gradient (1F1B runs them together as its full backward, B+W). The dry run reproduces them as rank
    0's idle time between its first and last action (`DryRun.span_bubble_time`); for 1f1b and zb-h1 that is
    also every rank's idle time in the synchronous step, for zb-h2 only once steps overlap (the paper's
    optimizer post-validation), which is what its "parallelogram" buys."""
    t = times or UNIT_TIMES
    p = schedule.pp
    if schedule.name not in ("1f1b", "zb-h1", "zb-h2") or schedule.chunks != 1:
        return None
    try:
        if build_schedule(schedule.name, p, schedule.microbatches).actions != schedule.actions:
            return None
    except PipesimError:
        return None
    if schedule.name == "1f1b":
        return "(p-1)(F+B+W)", (p - 1) * (t.forward + t.full_backward)
    f, b, w = t.forward, t.backward_input, t.backward_weight
    if schedule.name == "zb-h1":
        return "(p-1)(F+B-W)", (p - 1) * (f + b - w)
    return "(p-1)(F+B-2W)", (p - 1) * (f + b - 2 * w)


def summarize(run: DryRun, times: ActionTimes | None = None) -> dict[str, object]:
    """The dry run as JSON-ready data: the schedule, its timed grid and its bubble."""
    schedule = run.schedule
    closed = closed_form_bubble(schedule)
    paper = paper_bubble_time(schedule, times)
    return {
        "schedule": schedule.name,
        "pp": schedule.pp,
        "num_stages": schedule.num_stages,
        "chunks": schedule.chunks,
        "microbatches": schedule.microbatches,
        "stage_to_rank": list(schedule.stage_to_rank),
        "actions": [[str(a) for a in rank] for rank in schedule.actions],
        "step_time": run.step_time,
        "bubble_fraction": run.bubble_fraction,
        "closed_form_bubble": None if closed is None else {"formula": closed[0], "value": closed[1]},
        "overlapped_step_time": run.overlapped_step_time,
        "overlapped_bubble_fraction": run.overlapped_bubble_fraction,
        "paper_bubble_time": None if paper is None else {"formula": paper[0], "value": paper[1]},
        "per_rank": [
            {
                "rank": r,
                "busy": run.busy(r),
                "bubble_time": run.bubble_time(r),
                "span": run.span(r),
                "span_bubble_time": run.span_bubble_time(r),
            }
            for r in range(schedule.pp)
        ],
        "peak_inflight_microbatches": list(peak_inflight(schedule)),
        "timeline": [[[t.start, t.end, str(t.action)] for t in rank] for rank in run.timeline],
    }


def format_report(run: DryRun, times: ActionTimes | None = None) -> str:
    """The grid, then the bubble (in the synchronous step, and between each rank's first and last action) and the
    activations in flight, for `pipesim schedule`."""
    schedule = run.schedule
    per_rank = "1 stage" if schedule.chunks == 1 else f"{schedule.chunks} stages"
    lines = [
        f"schedule {schedule.name}: {schedule.pp} ranks, {schedule.num_stages} stages ({per_rank} per rank, "
        f"stage -> rank {list(schedule.stage_to_rank)}), {schedule.microbatches} microbatches",
        "",
        format_grid(run).rstrip("\n"),
        "",
        f"step time {run.step_time:g} steps; bubble {run.bubble_fraction:.2%} "
        f"(1 - busy / (ranks x step)); idle per rank "
        + ", ".join(f"{run.bubble_time(r):g}" for r in range(schedule.pp)),
    ]
    closed = closed_form_bubble(schedule)
    if closed is not None:
        lines.append(f"closed form for uniform times and free transfers {closed[0]} = {closed[1]:.2%}")
    lines.append(
        "idle between each rank's first and last action: "
        + ", ".join(f"{run.span_bubble_time(r):g}" for r in range(schedule.pp))
        + f"; steps overlapped (no end-of-step sync): step {run.overlapped_step_time:g}, "
        f"bubble {run.overlapped_bubble_fraction:.2%}"
    )
    paper = paper_bubble_time(schedule, times)
    if paper is not None:
        lines.append(
            f"zero-bubble paper's bubble {paper[0]} = {paper[1]:g} (B: input grad, W: weight grad); "
            f"rank 0's idle between first and last action: {run.span_bubble_time(0):g}"
        )
    lines.append("peak in-flight microbatches per stage: " + " ".join(str(n) for n in peak_inflight(schedule)))
    return "\n".join(lines) + "\n"
