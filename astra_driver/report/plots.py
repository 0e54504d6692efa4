"""Plots of a serving run (`pipesim report`): latency CDFs, throughput, batch size and KV use over time, and a
comparison with a second run or a `vllm bench serve --save-result` JSON.

Inputs, read and checked here (every problem is a PipesimError naming the file and the column or key):

- the run's per-request CSV (`pipesim run --output`, LLMServingSim's columns; times in ns);
- the interval log beside it (`<stem>.log.csv`, written by `pipesim run --log-interval`): per interval its end,
  prompt and decode tok/s, and per instance the batch size, the fullest NPU's memory and the KV blocks in use;
- optionally a compare file: another run's CSV (its own interval log is drawn too when present) or a vLLM bench
  result JSON (vllm/benchmarks/serve.py: per-request `ttfts`, `itls`, `latencies` in seconds, `output_lens`,
  `errors`; scalars `duration`, `request_throughput`, `mean_ttft_ms`, `p99_e2el_ms`, ...).

Metrics follow vllm bench serve's definitions (as astra_driver.serving.metrics does): TPOT is
(E2EL - TTFT) / (output - 1) over requests with more than one output token, ITL pools every gap of every
request, percentiles by numpy's linear interpolation. A vLLM JSON's own scalar keys are used where it has them,
so the table shows what vLLM printed; the rest are computed from its lists. Relative error is
(run - compare) / compare: the compare file is the reference.

Everything is rendered to bytes first and written at the end with write_atomic, so a failure leaves nothing.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra_driver.paths import check_output_path
from astra_driver.serving.metrics import NS_PER_MS, NS_PER_S, Distribution, interval_log_path
from llm_converter.errors import PipesimError, name_first
from llm_converter.io import write_atomic
from llm_converter.memory import MEM_GB

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The per-request CSV's columns the report reads (astra_driver.serving.metrics.CSV_COLUMNS, LLMServingSim's).
RUN_COLUMNS = ("instance id", "input", "output", "arrival", "end_time", "latency", "TTFT", "ITL")
LOG_COLUMNS = ("time_s", "prompt_tok_s", "decode_tok_s")
# The four per-request latency metrics, vllm bench's names, and how the plots title them.
LATENCY_METRICS = (
    ("ttft", "TTFT", "time to first token"),
    ("tpot", "TPOT", "time per output token (excl. 1st)"),
    ("itl", "ITL", "inter-token latency"),
    ("e2el", "E2EL", "end-to-end latency"),
)
THROUGHPUT_METRICS = ("completed", "duration", "request_throughput", "output_throughput", "total_token_throughput")
STAT_NAMES = ("mean", "median", "p90", "p99")  # the statistics compared per latency metric
MAX_CDF_POINTS = 4000  # points drawn per CDF curve (evenly spaced ranks); cdf_points itself keeps every value
RUN_COLOR = "#4C78A8"
COMPARE_COLOR = "#F58518"
_DPI = 120
_LINESTYLES = ("-", "--")  # the run solid, the compare file dashed (identical curves stay visible)


# ---------------------------------------------------------------------------------------------------------
# What a run is, once read
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntervalSeries:
    """The interval log of a run: interval i spans (edges_s[i], edges_s[i + 1]]; per-instance lists by instance."""

    source: Path
    edges_s: tuple[float, ...]
    prompt_tok_s: tuple[float, ...]
    decode_tok_s: tuple[float, ...]
    batch: tuple[tuple[int, ...], ...]  # [instance][interval]
    npu_mem_bytes: tuple[tuple[int, ...], ...]
    kv_blocks: tuple[tuple[int, ...], ...] | None  # None: a log written before KV blocks were saved

    @property
    def num_instances(self) -> int:
        return len(self.batch)


@dataclass(frozen=True)
class RunData:
    """One side of a report: its per-request latencies (ns), its summary metrics and, for a pipesim run with a
    log, its interval series."""

    label: str
    source: Path
    kind: str  # "pipesim" | "vllm"
    ttft_ns: tuple[float, ...]
    tpot_ns: tuple[float, ...]
    itl_ns: tuple[float, ...]
    e2el_ns: tuple[float, ...]
    metrics: dict[str, float]
    intervals: IntervalSeries | None = None
    notes: tuple[str, ...] = field(default=())
    first_arrival_s: float | None = None  # pipesim: the first request's arrival on the trace's clock
    # vLLM (with start_times): every output token's time, s after its first request was sent
    output_token_times_s: tuple[float, ...] | None = None

    def latencies_ns(self, name: str) -> tuple[float, ...]:
        return {"ttft": self.ttft_ns, "tpot": self.tpot_ns, "itl": self.itl_ns, "e2el": self.e2el_ns}[name]


def _latency_metrics(values_ns: dict[str, Sequence[float]]) -> dict[str, float]:
    """mean/median/std/pNN in ms per metric, by metrics.Distribution (vllm bench's numpy definitions)."""
    out: dict[str, float] = {}
    for name, _, _ in LATENCY_METRICS:
        dist = Distribution.of_ns(list(values_ns[name]))
        out[f"mean_{name}_ms"] = dist.mean
        out[f"median_{name}_ms"] = dist.median
        out[f"std_{name}_ms"] = dist.std
        for p, value in dist.percentiles:
            out[f"p{p}_{name}_ms"] = value
    return out


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise PipesimError(f"{path}: not found (given as {what}); give the path of an existing file")
    if path.is_dir():
        raise PipesimError(f"{path}: is a folder (given as {what}); give the path of a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PipesimError(f"{path}: not UTF-8 text (given as {what}); give a CSV or JSON file") from None


def _csv_rows(path: Path, text: str, required: Sequence[str], what: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        header = reader.fieldnames
        if not header:
            raise PipesimError(f"{path}: empty (no header line); {what}")
        missing = [column for column in required if column not in header]
        if missing:
            raise PipesimError(f"{path}: missing column(s) {name_first(missing)}; {what}")
        rows = list(reader)
    except csv.Error as exc:  # a NUL byte, an unterminated quote at the end
        raise PipesimError(f"{path}:{reader.line_num}: not a CSV ({exc}); {what}") from None
    return list(header), rows


def _number(path: Path, line: int, column: str, text: str | None, kind: type = int) -> Any:
    if text is None:  # csv.DictReader fills a short row with None
        raise PipesimError(f"{path}:{line}: column {column}: missing (the row has fewer cells than the header)")
    try:
        value = kind(text)
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise PipesimError(f"{path}:{line}: column {column}: {text!r} is not {expected}") from None
    if kind is float and not math.isfinite(value):
        raise PipesimError(f"{path}:{line}: column {column}: {text!r} is not a finite number")
    return value


def _parse_itl(path: Path, line: int, text: str | None) -> list[int]:
    """The ITL column: a Python-style list of ns gaps, "[11676476, 11678476]" ("[]" for one output token)."""
    body = (text or "").strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise PipesimError(f"{path}:{line}: column ITL: {text!r} is not a list like [12000, 12100]")
    inner = body[1:-1].strip()
    return [_number(path, line, "ITL", item.strip()) for item in inner.split(",")] if inner else []


_RUN_CSV_HINT = "give the per-request CSV `pipesim run --output` writes"


def load_run_csv(path: Path, label: str | None = None, what: str = "RUN.csv") -> RunData:
    """A pipesim run: its per-request CSV and, when present beside it, its interval log."""
    path = Path(path)
    return _run_from_csv_text(path, _read_text(path, what), label)


def _run_from_csv_text(path: Path, text: str, label: str | None) -> RunData:
    _, rows = _csv_rows(path, text, RUN_COLUMNS, _RUN_CSV_HINT)
    if not rows:
        raise PipesimError(f"{path}: no requests (a header and no rows); {_RUN_CSV_HINT} for a run that finished some")
    ttft: list[float] = []
    tpot: list[float] = []
    itl: list[float] = []
    e2el: list[float] = []
    end_ns = 0
    first_arrival_ns: int | None = None
    total_in = total_out = 0
    for index, row in enumerate(rows):
        line = index + 2  # the header is line 1
        values = {c: _number(path, line, c, row[c]) for c in RUN_COLUMNS if c != "ITL"}
        gaps = _parse_itl(path, line, row["ITL"])
        if values["output"] < 1:
            raise PipesimError(f"{path}:{line}: column output: {values['output']} must be >= 1")
        ttft.append(values["TTFT"])
        e2el.append(values["latency"])
        if values["output"] > 1:  # vllm bench's TPOT, not the CSV's floored TPOT column
            tpot.append((values["latency"] - values["TTFT"]) / (values["output"] - 1))
        itl.extend(gaps)
        end_ns = max(end_ns, values["end_time"])
        arrival = values["arrival"]
        first_arrival_ns = arrival if first_arrival_ns is None else min(first_arrival_ns, arrival)
        total_in += values["input"]
        total_out += values["output"]
    duration_s = end_ns / NS_PER_S  # from the trace's time origin, as metrics.summarize_requests

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else 0.0

    metrics: dict[str, float] = {
        "completed": len(rows),
        "duration": duration_s,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": per_s(len(rows)),
        "output_throughput": per_s(total_out),
        "total_token_throughput": per_s(total_in + total_out),
    }
    metrics.update(_latency_metrics({"ttft": ttft, "tpot": tpot, "itl": itl, "e2el": e2el}))
    log_path = interval_log_path(path)
    notes: list[str] = []
    intervals = None
    if log_path.is_file():
        intervals = load_interval_log(log_path)
    else:
        notes.append(
            f"{log_path}: not found, so {path.name} has no throughput, batch or KV plots; "
            "run `pipesim run --output ... --log-interval SECONDS` to write it"
        )
    return RunData(
        label=label or path.stem,
        source=path,
        kind="pipesim",
        ttft_ns=tuple(ttft),
        tpot_ns=tuple(tpot),
        itl_ns=tuple(itl),
        e2el_ns=tuple(e2el),
        metrics=metrics,
        intervals=intervals,
        notes=tuple(notes),
        first_arrival_s=(first_arrival_ns or 0) / NS_PER_S,
    )


def load_interval_log(path: Path) -> IntervalSeries:
    """The interval log `pipesim run --log-interval` saves beside its CSV (metrics.write_interval_csv)."""
    hint = "it is the interval log `pipesim run --log-interval` writes beside its CSV; rerun to rewrite it"
    header, rows = _csv_rows(path, _read_text(path, "interval log"), LOG_COLUMNS, hint)
    instances = 0
    while f"inst{instances}_batch" in header:
        instances += 1
    needed = [f"inst{i}_{c}" for i in range(max(instances, 1)) for c in ("batch", "npu_mem_bytes")]
    missing = [c for c in needed if c not in header]
    if missing:
        raise PipesimError(f"{path}: missing column(s) {name_first(missing)}; {hint}")
    has_kv = all(f"inst{i}_kv_blocks" in header for i in range(instances))
    if not rows:
        raise PipesimError(f"{path}: no intervals (a header and no rows); {hint}")
    edges = [0.0]
    prompt: list[float] = []
    decode: list[float] = []
    batch: list[list[int]] = [[] for _ in range(instances)]
    mem: list[list[int]] = [[] for _ in range(instances)]
    kv: list[list[int]] = [[] for _ in range(instances)]
    for index, row in enumerate(rows):
        line = index + 2
        end = _number(path, line, "time_s", row["time_s"], float)
        if end <= edges[-1]:
            raise PipesimError(f"{path}:{line}: column time_s: {end:g} is not after the previous interval's end")
        edges.append(end)
        prompt.append(_number(path, line, "prompt_tok_s", row["prompt_tok_s"], float))
        decode.append(_number(path, line, "decode_tok_s", row["decode_tok_s"], float))
        for i in range(instances):
            batch[i].append(_number(path, line, f"inst{i}_batch", row[f"inst{i}_batch"]))
            mem[i].append(_number(path, line, f"inst{i}_npu_mem_bytes", row[f"inst{i}_npu_mem_bytes"]))
            if has_kv:
                kv[i].append(_number(path, line, f"inst{i}_kv_blocks", row[f"inst{i}_kv_blocks"]))
    return IntervalSeries(
        source=path,
        edges_s=tuple(edges),
        prompt_tok_s=tuple(prompt),
        decode_tok_s=tuple(decode),
        batch=tuple(tuple(b) for b in batch),
        npu_mem_bytes=tuple(tuple(m) for m in mem),
        kv_blocks=tuple(tuple(k) for k in kv) if has_kv else None,
    )


def _json_list(path: Path, data: dict[str, Any], key: str, length: int | None) -> list[Any] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list) or (length is not None and len(value) != length):
        size = f" of {length} items (one per request, as ttfts)" if length is not None else ""
        raise PipesimError(f"{path}: key {key}: must be a list{size}; give the file `vllm bench serve` saved")
    return value


def _seconds(path: Path, key: str, index: int, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PipesimError(f"{path}: key {key}: item {index} is {value!r}, not a number of seconds")
    return float(value)


def load_vllm_result(path: Path, data: dict[str, Any], label: str | None = None) -> RunData:
    """A `vllm bench serve --save-result` JSON: per-request lists where present, its scalar metrics as saved."""
    ttfts = _json_list(path, data, "ttfts", None)
    n = len(ttfts) if ttfts is not None else None
    itls = _json_list(path, data, "itls", n)
    latencies = _json_list(path, data, "latencies", n)
    output_lens = _json_list(path, data, "output_lens", n)
    errors = _json_list(path, data, "errors", n)
    start_times = _json_list(path, data, "start_times", n)
    token_times: list[float] = []
    ttft: list[float] = []
    tpot: list[float] = []
    itl: list[float] = []
    e2el: list[float] = []
    for i in range(n or 0):
        if errors is not None and errors[i]:  # vllm: a failed request carries its error text and no timings
            continue
        first = _seconds(path, "ttfts", i, ttfts[i])  # type: ignore[index]
        gaps = itls[i] if itls is not None else []
        if not isinstance(gaps, list):
            raise PipesimError(f"{path}: key itls: item {i} is {gaps!r}, not a list of seconds")
        gaps_s = [_seconds(path, f"itls[{i}]", j, g) for j, g in enumerate(gaps)]
        # vllm's latency is the request's whole time; older results without `latencies`: TTFT + the gaps.
        whole = _seconds(path, "latencies", i, latencies[i]) if latencies is not None else first + sum(gaps_s)
        tokens = output_lens[i] if output_lens is not None else len(gaps_s) + 1
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise PipesimError(f"{path}: key output_lens: item {i} is {tokens!r}, not a token count")
        if start_times is not None and itls is not None:
            # vllm's own token clock (calculate_metrics' peak throughput): start + TTFT, then each gap
            at = _seconds(path, "start_times", i, start_times[i]) + first
            token_times.append(at)
            for gap in gaps_s:
                at += gap
                token_times.append(at)
        ttft.append(first * NS_PER_S)
        e2el.append(whole * NS_PER_S)
        itl.extend(g * NS_PER_S for g in gaps_s)
        if tokens > 1:
            tpot.append((whole - first) / (tokens - 1) * NS_PER_S)
    # What the lists can tell: E2EL and TPOT need latencies or the gaps, ITL needs the gaps.
    known = {"ttft"} if ttfts is not None else set()
    if ttfts is not None and (latencies is not None or itls is not None):
        known |= {"tpot", "e2el"}
    if ttfts is not None and itls is not None:
        known.add("itl")
    computed = _latency_metrics({"ttft": ttft, "tpot": tpot, "itl": itl, "e2el": e2el})
    metrics = {k: v for k, v in computed.items() if k.split("_")[1] in known}
    for key, value in data.items():  # vllm's own scalars win: they are what it printed
        if key in THROUGHPUT_METRICS or key in ("total_input_tokens", "total_output_tokens") or key.endswith("_ms"):
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                metrics[key] = float(value)
    return RunData(
        label=label or path.stem,
        source=path,
        kind="vllm",
        ttft_ns=tuple(ttft),
        tpot_ns=tuple(tpot) if "tpot" in known else (),
        itl_ns=tuple(itl) if "itl" in known else (),
        e2el_ns=tuple(e2el) if "e2el" in known else (),
        metrics=metrics,
        output_token_times_s=_from_first_start(token_times, start_times, errors) if token_times else None,
    )


def _from_first_start(token_times: list[float], start_times: list[Any], errors: list[Any] | None) -> tuple[float, ...]:
    """Token times relative to the first successful request's start (perf_counter values have no origin)."""
    origin = min(t for i, t in enumerate(start_times) if errors is None or not errors[i])
    return tuple(sorted(t - origin for t in token_times))


def load_compare(path: Path, label: str | None = None) -> RunData:
    """The --compare file: a pipesim run CSV or a vllm bench serve result JSON, told apart by content."""
    path = Path(path)
    text = _read_text(path, "--compare")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipesimError(
                f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}) (given as --compare)"
            ) from None
        if not isinstance(data, dict) or not ("ttfts" in data or "mean_ttft_ms" in data):
            raise PipesimError(
                f"{path}: a JSON object without key ttfts or mean_ttft_ms, so not a `vllm bench serve "
                "--save-result` result (given as --compare); give that file or a pipesim run CSV"
            )
        return load_vllm_result(path, data, label)
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error:
        header = []
    if not header or any(column not in header for column in RUN_COLUMNS):
        missing = [column for column in RUN_COLUMNS if column not in header]
        raise PipesimError(
            f"{path}: neither a pipesim run CSV (missing column(s) {name_first(missing)}) nor a `vllm bench "
            "serve --save-result` JSON (given as --compare); give one of those"
        )
    return _run_from_csv_text(path, text, label)


# ---------------------------------------------------------------------------------------------------------
# The numbers the plots and the table show
# ---------------------------------------------------------------------------------------------------------


def cdf_points(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF: the values sorted, and for the i-th (0-based) of n the fraction (i + 1) / n."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def cdf_series(run: RunData) -> dict[str, tuple[list[float], list[float]]]:
    """Per latency metric (ttft, tpot, itl, e2el), the CDF of the run's values in ms (empty when it has none)."""
    return {name: cdf_points([v / NS_PER_MS for v in run.latencies_ns(name)]) for name, _, _ in LATENCY_METRICS}


@dataclass(frozen=True)
class CompareRow:
    metric: str
    run: float
    compare: float

    @property
    def relative_error(self) -> float | None:
        """(run - compare) / compare; None when the reference is 0."""
        return (self.run - self.compare) / self.compare if self.compare != 0 else None


def compare_rows(run: RunData, other: RunData) -> list[CompareRow]:
    """The metrics both sides have, in a fixed order: throughput, then mean/median/p90/p99 per latency metric."""
    keys = list(THROUGHPUT_METRICS)
    keys += [f"{stat}_{name}_ms" for name, _, _ in LATENCY_METRICS for stat in STAT_NAMES]
    return [CompareRow(k, run.metrics[k], other.metrics[k]) for k in keys if k in run.metrics and k in other.metrics]


_THROUGHPUT_TITLES = {
    "completed": "completed requests",
    "duration": "duration (s)",
    "request_throughput": "request throughput (req/s)",
    "output_throughput": "output throughput (tok/s)",
    "total_token_throughput": "total token throughput (tok/s)",
}


def metric_title(key: str) -> str:
    """A metric key as a reader wants it: "p99_ttft_ms" -> "P99 TTFT (ms)", "duration" -> "duration (s)"."""
    if key in _THROUGHPUT_TITLES:
        return _THROUGHPUT_TITLES[key]
    stat, name, _ = key.split("_")
    return f"{stat.upper() if stat.startswith('p') else stat} {name.upper()} (ms)"


def _format_value(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4g}"  # vllm bench prints .2f; small values keep digits


def _format_error(error: float | None) -> str:
    return "n/a" if error is None else f"{100 * error:+.2f}%"


def format_compare_table(rows: Sequence[CompareRow], run_label: str, compare_label: str) -> str:
    """The table as printed: metric, both values, relative error in %."""
    widths = (
        max([len("metric")] + [len(metric_title(r.metric)) for r in rows]),
        max(12, len(run_label)),
        max(12, len(compare_label)),
    )
    head = f"{'metric':<{widths[0]}}  {run_label:>{widths[1]}}  {compare_label:>{widths[2]}}  {'rel. error':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{metric_title(r.metric):<{widths[0]}}  {_format_value(r.run):>{widths[1]}}  "
            f"{_format_value(r.compare):>{widths[2]}}"
            f"  {_format_error(r.relative_error):>10}"
        )
    return "\n".join(lines)


def compare_csv_bytes(rows: Sequence[CompareRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "run", "compare", "relative_error"])
    for r in rows:
        error = r.relative_error
        writer.writerow([r.metric, repr(r.run), repr(r.compare), "" if error is None else repr(error)])
    return buffer.getvalue().encode()


# ---------------------------------------------------------------------------------------------------------
# Drawing (matplotlib, Agg; each figure rendered to PNG bytes)
# ---------------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    # Imported on use: matplotlib costs a verb 0.2 s and more at start-up.
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    _pyplot().close(fig)
    return buffer.getvalue()


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    """At most MAX_CDF_POINTS of a CDF, evenly spaced by rank, first and last kept (a curve, not every point)."""
    n = len(xs)
    if n <= MAX_CDF_POINTS:
        return xs, ys
    picks = sorted({round(i * (n - 1) / (MAX_CDF_POINTS - 1)) for i in range(MAX_CDF_POINTS)})
    return [xs[i] for i in picks], [ys[i] for i in picks]


def _style(ax: Any) -> None:
    ax.grid(color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)
    for spine in ("top", "right"):
        ax.spines[spine].set_visible(False)


def draw_cdf(name: str, short: str, long: str, runs: Sequence[RunData]) -> bytes:
    """One latency CDF, every run on the same axes; median and p99 in each legend entry."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=_DPI)
    drawn = []
    for side, (run, color) in enumerate(zip(runs, (RUN_COLOR, COMPARE_COLOR), strict=False)):
        xs, ys = cdf_series(run)[name]
        if not xs:
            continue
        drawn.extend(xs)
        px, py = _thin(xs, ys)
        what = "gaps" if name == "itl" else "requests"
        median = run.metrics.get(f"median_{name}_ms")
        p99 = run.metrics.get(f"p99_{name}_ms")
        stats = f", median {median:,.2f} ms, p99 {p99:,.2f} ms" if median is not None and p99 is not None else ""
        ax.step(
            [px[0]] + px,
            [0.0] + py,
            where="post",
            color=color,
            linewidth=1.8,
            linestyle=_LINESTYLES[side],
            label=f"{run.label} ({len(xs)} {what}{stats})",
        )
    if not drawn:
        ax.text(0.5, 0.5, f"no {short} values in these runs", ha="center", va="center", transform=ax.transAxes)
    log_x = bool(drawn) and min(drawn) > 0 and max(drawn) > 100 * min(drawn)
    if log_x:
        ax.set_xscale("log")  # spans more than 100x (queueing): a linear axis would squash the body
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{short}: {long} (ms{', log scale' if log_x else ''})")
    ax.set_ylabel("fraction of values ≤ x")
    ax.set_title(f"{short} CDF")
    _style(ax)
    if drawn:  # below the axes: inside, a CDF's curve crosses every corner of some run
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize=9, frameon=False)
    fig.tight_layout()
    return _png(fig)


def _with_intervals(runs: Sequence[RunData]) -> list[tuple[RunData, IntervalSeries, str]]:
    return [
        (run, run.intervals, color)
        for run, color in zip(runs, (RUN_COLOR, COMPARE_COLOR), strict=False)
        if run.intervals is not None
    ]


def _interval_length_text(series: IntervalSeries) -> str:
    return f"{series.edges_s[1] - series.edges_s[0]:g} s"


def tokens_per_interval(token_times_s: Sequence[float], interval_s: float) -> tuple[list[float], list[float]]:
    """Tokens per second in consecutive intervals (start, end] of `interval_s` from 0, as the interval log
    counts them (a token exactly on a boundary belongs to the interval that boundary closes): (edges, rates)."""
    if not token_times_s:
        return [0.0], []
    count = max(1, math.ceil(max(token_times_s) / interval_s))
    edges = [i * interval_s for i in range(count + 1)]
    counts = [0] * count
    for t in token_times_s:
        counts[min(count - 1, max(0, bisect.bisect_left(edges, t) - 1))] += 1
    return edges, [c / interval_s for c in counts]


def draw_throughput(runs: Sequence[RunData]) -> bytes:
    """Prompt and decode tok/s per log interval (two panels, shared time axis); a vLLM result with start times
    adds its output tokens per interval of the run's length, its first request aligned with the run's."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), dpi=_DPI, sharex=True)
    drawn = _with_intervals(runs)
    bottom.set_xlabel("simulated time (s)")
    for side, (run, series, color) in enumerate(drawn):
        label = f"{run.label} (intervals of {_interval_length_text(series)})"
        style = {"color": color, "linewidth": 1.6, "linestyle": _LINESTYLES[side], "label": label}
        top.stairs(series.prompt_tok_s, series.edges_s, **style)
        bottom.stairs(series.decode_tok_s, series.edges_s, **style)
    vllm = [r for r in runs[1:] if r.output_token_times_s is not None]
    if drawn and vllm:
        run, series, _ = drawn[0]
        interval = series.edges_s[1] - series.edges_s[0]
        offset = run.first_arrival_s or 0.0
        edges, rates = tokens_per_interval([t + offset for t in vllm[0].output_token_times_s or ()], interval)
        label = f"{vllm[0].label} (output tokens per {interval:g} s, first request aligned with {run.label}'s)"
        bottom.stairs(rates, edges, color=COMPARE_COLOR, linewidth=1.6, linestyle=_LINESTYLES[1], label=label)
        bottom.set_xlabel(f"time (s): simulated for {run.label}, wall clock for {vllm[0].label}")
    top.set_title("Prompt throughput (prompt tokens of the iterations completed in each interval)", fontsize=10)
    top.set_ylabel("prompt tokens/s")
    bottom.set_title("Decode throughput (output tokens produced in each interval)", fontsize=10)
    bottom.set_ylabel("output tokens/s")
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        _style(ax)
    fig.suptitle("Throughput over time", fontsize=12)
    _legend_below(fig, bottom)
    return _png(fig)


def _per_instance(
    ax: Any,
    runs: Sequence[RunData],
    values: Callable[[IntervalSeries], Sequence[Sequence[float]] | None],
    baseline: float | None = 0,
) -> None:
    palette = ("#4C78A8", "#54A24B", "#B279A2", "#9D755D", "#72B7B2", "#EECA3B", "#E45756", "#BAB0AC")
    sides = _with_intervals(runs)
    for side, (run, series, _) in enumerate(sides):
        per_instance = values(series)
        if per_instance is None:
            continue
        for i, data in enumerate(per_instance):
            color = palette[i % len(palette)] if series.num_instances > 1 else (RUN_COLOR, COMPARE_COLOR)[side]
            name = f"{run.label}, instance {i}" if series.num_instances > 1 else run.label
            ax.stairs(
                data,
                series.edges_s,
                color=color,
                linewidth=1.6,
                linestyle=_LINESTYLES[side],
                label=name,
                baseline=baseline,
            )
    _style(ax)


def _legend_below(fig: Figure, ax: Any) -> None:
    """One legend for the figure, in a band under the axes (series fill the axes to their top and right edges,
    so a legend inside covers data), then the layout above it."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        fig.tight_layout()
        return
    columns = min(len(handles), 2 if max(len(label) for label in labels) > 40 else 4)
    rows = math.ceil(len(handles) / columns)
    band = (0.15 + 0.22 * rows) / fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, band, 1, 1))


def draw_batch_size(runs: Sequence[RunData]) -> bytes:
    """Requests in each instance's last iteration of every interval (0: no iteration completed in it)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=_DPI)
    _per_instance(ax, runs, lambda s: s.batch)
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Batch size over time (requests in the last iteration completed in each interval)", fontsize=11)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("requests per batch")
    _legend_below(fig, ax)
    return _png(fig)


def draw_kv_usage(runs: Sequence[RunData]) -> bytes:
    """KV blocks in use per instance (when the log has them) above the fullest NPU's memory (weights + KV)."""
    plt = _pyplot()
    with_kv = any(series.kv_blocks is not None for _, series, _ in _with_intervals(runs))
    if with_kv:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), dpi=_DPI, sharex=True)
        _per_instance(top, runs, lambda s: s.kv_blocks)
        top.set_ylim(bottom=0)
        top.set_title("KV cache blocks in use (after each instance's last iteration in the interval)", fontsize=10)
        top.set_ylabel("KV blocks")
    else:
        fig, bottom = plt.subplots(figsize=(9, 4.5), dpi=_DPI)
    # No baseline: the weights are most of it, so the axis spans the data and shows how the KV part moves.
    _per_instance(bottom, runs, lambda s: [[m / MEM_GB for m in inst] for inst in s.npu_mem_bytes], baseline=None)
    bottom.ticklabel_format(axis="y", useOffset=False, style="plain")
    bottom.set_title("Memory in use on the fullest NPU (weights + KV cache)", fontsize=10)
    bottom.set_ylabel("GiB (2^30 bytes)")
    bottom.set_xlabel("simulated time (s)")
    fig.suptitle("KV cache use over time", fontsize=12)
    _legend_below(fig, bottom)
    return _png(fig)


def draw_compare_table(rows: Sequence[CompareRow], run_label: str, compare_label: str) -> bytes:
    """The comparison as a table figure; the error cell is green under 5%, yellow under 20%, red beyond."""
    plt = _pyplot()
    height = 0.9 + 0.3 * (len(rows) + 1)
    fig, ax = plt.subplots(figsize=(9, height), dpi=_DPI)
    ax.axis("off")
    cells = [
        [metric_title(r.metric), _format_value(r.run), _format_value(r.compare), _format_error(r.relative_error)]
        for r in rows
    ]
    colors = []
    for r in rows:
        error = r.relative_error
        if error is None:
            shade = "#FFFFFF"
        else:
            shade = "#D9F0D3" if abs(error) < 0.05 else "#FFF2B2" if abs(error) < 0.2 else "#F8C9C4"
        colors.append(["#FFFFFF", "#FFFFFF", "#FFFFFF", shade])
    table = ax.table(
        cellText=cells or [["(no metric on both sides)", "", "", ""]],
        cellColours=colors or None,
        colLabels=["metric", run_label, compare_label, "relative error"],
        colWidths=[0.34, 0.22, 0.22, 0.18],
        bbox=(0, 0, 1, 1),
        cellLoc="right",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, col), cell in table.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#E8E8E8")
        if col == 0:
            cell.set_text_props(ha="left")
    ax.set_title(f"{run_label} vs {compare_label}: relative error = (run - compare) / compare", fontsize=11)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------


def _summary_json(
    run: RunData, other: RunData | None, rows: Sequence[CompareRow], files: Sequence[str], notes: Sequence[str]
) -> bytes:
    def side(data: RunData) -> dict[str, Any]:
        return {"label": data.label, "source": str(data.source), "kind": data.kind, "metrics": data.metrics}

    out: dict[str, Any] = {"run": side(run), "compare": side(other) if other is not None else None}
    if other is not None:
        out["relative_errors"] = {r.metric: r.relative_error for r in rows}
    out["files"] = list(files)
    out["notes"] = list(notes)
    return (json.dumps(out, indent=2) + "\n").encode()


def write_run_report(
    run_csv: Path,
    out_dir: Path,
    compare: Path | None = None,
    labels: Sequence[str] = (),
    emit: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the report of a run into `out_dir` and return the files written (PNGs, compare.csv, summary.json).

    labels: up to two names for the run and the compare file (default: their file stems). `emit` receives the
    comparison table and any notes (plots skipped for want of an interval log) as text."""
    out_dir = Path(out_dir)
    check_output_path(out_dir, "-o", folder=True)
    if len(labels) > 2:
        raise PipesimError(f"--label given {len(labels)} times: at most twice (the run, then the --compare file)")
    if len(labels) == 2 and compare is None:
        raise PipesimError("--label given twice without --compare: the second label names the --compare file")
    if len(set(labels)) < len(labels):
        raise PipesimError(f"--label {labels[0]!r} given twice: the run and the compare file need different labels")
    run = load_run_csv(Path(run_csv), labels[0] if labels else None)
    other = load_compare(Path(compare), labels[1] if len(labels) > 1 else None) if compare is not None else None
    if other is not None:
        other = distinct_label(run, other)
    runs = [run] if other is None else [run, other]
    notes = list(run.notes) + (list(other.notes) if other is not None else [])

    outputs: list[tuple[str, bytes]] = []
    for name, short, long in LATENCY_METRICS:
        outputs.append((f"{name}_cdf.png", draw_cdf(name, short, long, runs)))
    if _with_intervals(runs):
        outputs.append(("throughput.png", draw_throughput(runs)))
        outputs.append(("batch_size.png", draw_batch_size(runs)))
        outputs.append(("kv_usage.png", draw_kv_usage(runs)))
    rows: list[CompareRow] = []
    if other is not None:
        rows = compare_rows(run, other)
        outputs.append(("compare.csv", compare_csv_bytes(rows)))
        outputs.append(("compare_table.png", draw_compare_table(rows, run.label, other.label)))
        if emit is not None:
            emit(format_compare_table(rows, run.label, other.label))
    names = [name for name, _ in outputs] + ["summary.json"]
    outputs.append(("summary.json", _summary_json(run, other, rows, names, notes)))
    written = []
    for name, data in outputs:
        path = out_dir / name
        write_atomic(path, data)
        written.append(path)
    if emit is not None:
        for note in notes:
            emit(f"note: {note}")
    return written


def distinct_label(run: RunData, other: RunData) -> RunData:
    """`other`, relabelled when its label is the run's (two files named run.csv): legends must tell them apart."""
    if other.label != run.label:
        return other
    label = f"{other.label} ({other.kind})" if other.kind != run.kind else f"{other.label} (compare)"
    return replace(other, label=label)
