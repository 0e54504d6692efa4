"""A Gantt chart of a run (PNG, matplotlib): per NPU, what its compute and communication slots did over time.

Each row is one NPU with two lanes: compute on top (forward F, backward B, input-gradient I, weight-gradient W,
other compute; grey where the NPU computes nothing: idle), communication below (sends, collectives, memory
nodes, and a thin strip where receives are posted). Categories come from node types and, for compute, from
node names: the torch.distributed.pipelining action prefix pipesim's training graphs use (`2B0.mlp`), a token
like `F3` (`COMP_NODE_F3`), or words such as forward/backward/wgrad.

With more NPUs than `max_rows`, rows aggregate consecutive NPUs ("NPU 0-3"): each lane then shows, per time
bin, the fraction of those NPUs busy in each category, stacked (the rest is idle), so 128 NPUs stay readable.
Intervals narrower than a pixel are merged, so large runs draw quickly.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_driver.report.timeline import TimeWindow
from llm_converter.errors import PipesimError
from llm_converter.graph import NodeType
from llm_converter.io import write_atomic

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Category:
    key: str
    label: str
    color: str
    lane: str  # "compute" | "comm" | "recv"


# Colors: a colour-blind-safe palette (Tableau 10 / Okabe-Ito hues).
CATEGORIES = (
    Category("F", "forward (F)", "#4C78A8", "compute"),
    Category("B", "backward (B)", "#F58518", "compute"),
    Category("I", "input grad (I)", "#EECA3B", "compute"),
    Category("W", "weight grad (W)", "#54A24B", "compute"),
    Category("compute", "compute", "#72B7B2", "compute"),
    Category("send", "send", "#B279A2", "comm"),
    Category("collective", "collective", "#E45756", "comm"),
    Category("memory", "memory", "#9D755D", "comm"),
    Category("recv", "recv posted", "#BAB0AC", "recv"),
)
_BY_KEY = {category.key: category for category in CATEGORIES}
IDLE_COLOR = "#EFEFEF"
DEFAULT_MAX_ROWS = 32
_BINS = 1000  # time bins of an aggregated row
_WIDTH_PX = 1800  # figure width in pixels at the chosen dpi; intervals closer than a pixel merge

_ACTION = re.compile(r"^\d+([FIBW])\d+(?:\.|$)")  # C1/C2's Action notation: stage, letter, microbatch
_LETTER_TOKEN = re.compile(r"^([FIBW])\d*$")
_WORDS = (
    ("I", ("input_grad", "backward_input", "dgrad", "igrad")),
    ("W", ("weight_grad", "backward_weight", "wgrad")),
    ("B", ("backward", "bwd")),
    ("F", ("forward", "fwd")),
)


def category_of(name: str, node_type: int) -> str:
    """The chart category of one node."""
    if node_type == NodeType.COMM_SEND_NODE:
        return "send"
    if node_type == NodeType.COMM_RECV_NODE:
        return "recv"
    if node_type == NodeType.COMM_COLL_NODE:
        return "collective"
    if node_type in (NodeType.MEM_LOAD_NODE, NodeType.MEM_STORE_NODE):
        return "memory"
    match = _ACTION.match(name)
    if match:
        return match.group(1)
    for token in re.split(r"[^A-Za-z0-9]+", name):
        letter = _LETTER_TOKEN.match(token)
        if letter:
            return letter.group(1)
    lowered = name.lower()
    for key, words in _WORDS:
        if any(word in lowered for word in words):
            return key
    return "compute"


def _row_label(ranks: Sequence[int]) -> str:
    if len(ranks) == 1:
        return f"NPU {ranks[0]}"
    if ranks[-1] - ranks[0] == len(ranks) - 1:
        return f"NPU {ranks[0]}-{ranks[-1]}"
    return f"NPU {ranks[0]}..{ranks[-1]} ({len(ranks)})"


def _time_unit(span_ns: float) -> tuple[str, float]:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if span_ns >= 5 * scale:
            return unit, scale
    return "ns", 1.0


def _group_of(name: str) -> str:
    """What one outlined bar stands for: a pipeline action (`2B0` of `2B0.mlp`, all its steps), else the node."""
    return name.split(".", 1)[0] if _ACTION.match(name) else name


def _merge(intervals: list[tuple[int, int, str]], gap: float, outline: bool = False) -> list[tuple[int, int]]:
    """Union of (start, end, group) intervals, joining those closer than `gap` (a pixel). With outline, two
    touching intervals of different groups stay apart when both are a few pixels wide (consecutive microbatches
    keep their edges); the steps of one action always join."""
    if not intervals:
        return []
    intervals.sort()
    merged = [list(intervals[0])]
    for start, end, group in intervals[1:]:
        last = merged[-1]
        apart = outline and group != last[2] and end - start > 3 * gap and last[1] - last[0] > 3 * gap
        if start <= last[1] + gap and not (apart and start >= last[1]):
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, group])
    return [(start, end) for start, end, _ in merged]


def _coverage(intervals: list[tuple[int, int]], edges: np.ndarray) -> np.ndarray:
    """Busy time of disjoint `intervals` inside each bin [edges[k], edges[k+1])."""
    import numpy as np

    if not intervals:
        return np.zeros(len(edges) - 1)
    starts = np.array([start for start, _ in intervals], dtype=np.float64)
    ends = np.array([end for _, end in intervals], dtype=np.float64)
    # Busy time up to t: sum over intervals of clip(t - start, 0, end - start).
    order_s = np.sort(starts)
    order_e = np.sort(ends)
    cum_s = np.concatenate([[0.0], np.cumsum(order_s)])
    cum_e = np.concatenate([[0.0], np.cumsum(order_e)])
    n_s = np.searchsorted(order_s, edges, side="right")
    n_e = np.searchsorted(order_e, edges, side="right")
    busy = (n_s * edges - cum_s[n_s]) - (n_e * edges - cum_e[n_e])
    return np.diff(busy)


def draw_gantt(
    path: Path,
    node_times: Sequence[Sequence[Sequence[Any]]],
    window: TimeWindow | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    title: str | None = None,
    npus: Sequence[int] | None = None,
) -> int:
    """Draw the chart of per-rank (node_id, name, type, issue_ns, end_ns) into `path` (PNG, written atomically):
    every rank, or the ranks in `npus`. Returns the number of rows drawn."""
    if max_rows < 1:
        raise PipesimError(f"--timeline-rows {max_rows}: must be >= 1")
    # Imported here: numpy and matplotlib cost a verb 0.2 s and more at start-up when no chart is asked for.
    import matplotlib
    import numpy as np

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ranks = list(range(len(node_times))) if npus is None else sorted(npus)
    if not ranks:
        raise PipesimError(f"{path}: the run has no NPUs to draw")
    count = len(ranks)
    # Per drawn rank and category: its intervals (those overlapping the window).
    per_rank: list[dict[str, list[tuple[int, int, str]]]] = []
    finish = [0] * count
    for index, rank in enumerate(ranks):
        by_category: dict[str, list[tuple[int, int, str]]] = {}
        for _node_id, name, node_type, issue_ns, end_ns in node_times[rank]:
            finish[index] = max(finish[index], end_ns)
            if window is not None and not window.overlaps(issue_ns, end_ns):
                continue
            by_category.setdefault(category_of(name, node_type), []).append((issue_ns, end_ns, _group_of(name)))
        per_rank.append(by_category)
    t0 = window.start_ns if window is not None and window.start_ns is not None else 0
    t1 = window.end_ns if window is not None and window.end_ns is not None else max(finish)
    if t1 <= t0:
        t1 = t0 + 1
    unit, scale = _time_unit(t1 - t0)
    gap = (t1 - t0) / _WIDTH_PX
    group = math.ceil(count / max_rows)
    rows = math.ceil(count / group)

    height = min(2.0 + 0.42 * rows, 60.0)
    dpi = 120
    fig, ax = plt.subplots(figsize=(_WIDTH_PX / dpi, height), dpi=dpi)
    # Row r spans y in [r, r + 1), top to bottom; lanes inside it (fractions of the row).
    compute_lane = (0.08, 0.50)  # (offset from the row's top, height)
    comm_lane = (0.60, 0.24)
    recv_lane = (0.86, 0.08)
    lanes = {"compute": compute_lane, "comm": comm_lane, "recv": recv_lane}
    used: set[str] = set()
    labels: list[str] = []
    for row in range(rows):
        first = row * group
        last = min(count, first + group) - 1
        labels.append(_row_label(ranks[first : last + 1]))
        top = row
        # Idle background of the compute lane, up to the last of the row's NPUs to finish.
        row_finish = min(max(finish[first : last + 1]), t1)
        offset, lane_height = compute_lane
        ax.broken_barh(
            [(t0 / scale, max(0, row_finish - t0) / scale)],
            (top + offset, lane_height),
            facecolors=IDLE_COLOR,
            edgecolor="none",
        )
        if group == 1:
            for key, intervals in per_rank[first].items():
                category = _BY_KEY[key]
                merged = _merge([(max(s, t0), min(e, t1), g) for s, e, g in intervals], gap, outline=True)
                if not merged:
                    continue
                used.add(key)
                offset, lane_height = lanes[category.lane]
                # Bars at least 2 px wide (visible); only those wide enough to show it get a white edge.
                bars = [(s / scale, max(e - s, 2 * gap) / scale) for s, e in merged]
                wide = [bar for bar in bars if bar[1] * scale > 4 * gap]
                narrow = [bar for bar in bars if bar[1] * scale <= 4 * gap]
                for chosen, edge in ((wide, "white"), (narrow, "none")):
                    if chosen:
                        ax.broken_barh(
                            chosen,
                            (top + offset, lane_height),
                            facecolors=category.color,
                            edgecolor=edge if len(chosen) <= 400 else "none",
                            linewidth=0.6,
                        )
            continue
        # Aggregated: stacked busy fractions per time bin.
        edges = np.linspace(t0, t1, _BINS + 1)
        width = np.diff(edges)
        x = edges / scale
        for lane_name, (offset, lane_height) in lanes.items():
            bottom = np.zeros(_BINS)
            for category in CATEGORIES:
                if category.lane != lane_name:
                    continue
                busy = np.zeros(_BINS)
                for index in range(first, last + 1):
                    intervals = per_rank[index].get(category.key)
                    if intervals:
                        busy += _coverage(_merge(list(intervals), 0), edges)
                fraction = np.minimum(busy / (width * (last - first + 1)), 1.0 - bottom)
                if not fraction.any():
                    continue
                used.add(category.key)
                lower = top + offset + lane_height * (1 - bottom)
                upper = top + offset + lane_height * (1 - bottom - fraction)
                ax.fill_between(
                    x,
                    np.append(lower, lower[-1]),
                    np.append(upper, upper[-1]),
                    step="post",
                    color=category.color,
                    linewidth=0,
                )
                bottom = bottom + fraction
    ax.set_ylim(rows, 0)
    ax.set_xlim(t0 / scale, t1 / scale)
    step = max(1, math.ceil(rows / 64))
    ax.set_yticks([row + 0.5 for row in range(0, rows, step)])
    ax.set_yticklabels(labels[::step], fontsize=8 if rows > 16 else 9)
    ax.set_xlabel(f"time ({unit})")
    ax.grid(axis="x", color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)
    aggregated = f", rows of {group} NPUs: busy fraction per time bin" if group > 1 else ""
    shown = f"{count} NPUs" if count == len(node_times) else f"{count} of {len(node_times)} NPUs"
    fig.suptitle(
        title or f"{shown}: compute (top) and communication (bottom) per NPU{aggregated}",
        fontsize=10,
        y=1 - 0.06 / height,
        va="top",
    )
    handles = [Patch(color=IDLE_COLOR, label="idle")]
    handles += [Patch(color=c.color, label=c.label) for c in CATEGORIES if c.key in used]
    # Title and legend in a fixed band of inches above the axes, whatever the figure's height.
    top_band = 0.52 / height
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.3 / height),
        ncol=len(handles),
        frameon=False,
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - top_band))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return rows
