"""What a serving run measured: per-iteration records, the per-request CSV, the interval log and the summary.

Three outputs, each following the system users compare against:

- the per-request CSV has LLMServingSim's columns, in its order, with its definitions (its
  `Scheduler.save_output` and `Request.add_latency`); times in ns;
- the interval log prints the seed's line every `--log-interval` simulated seconds (LLMServingSim's throughput
  log: prompt and generated tokens counted when their iteration completes, divided by the interval);
- the summary carries the metrics `vllm bench serve` prints, with its definitions (vllm/benchmarks/serve.py,
  `calculate_metrics`): TPOT excludes the first token, ITL pools every inter-token gap of every request,
  percentiles by numpy's default (linear) interpolation, durations from the trace's time origin.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_converter.io import write_atomic
from llm_converter.memory import MEM_GB  # bytes in every memory GB pipesim prints (2^30, as mem_size)

if TYPE_CHECKING:
    from astra_driver.serving.request import Request
    from astra_driver.serving.scheduler import ScheduledBatch

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000

# LLMServingSim's per-request CSV header, verbatim (serving/core/scheduler.py, save_output).
CSV_COLUMNS = (
    "instance id",
    "request id",
    "model",
    "input",
    "output",
    "arrival",
    "end_time",
    "latency",
    "queuing_delay",
    "TTFT",
    "TPOT",
    "ITL",
)
# The summary's percentiles besides the median (vllm bench serve's --metric-percentiles, here 90 and 99).
PERCENTILES = (90, 99)


# ---------------------------------------------------------------------------------------------------------
# One iteration, as the loop saw it
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IterationRecord:
    """One batch of one instance, from the moment it was scheduled to the moment its tokens existed.

    prefill_tokens: prompt tokens the iteration accounts for, as LLMServingSim's prompt throughput counts them:
        every prefill chunk's new tokens, plus a request's prefix-cache hit tokens on the chunk that completes
        its prompt (vLLM's prompt-throughput gauge also counts the whole prompt, cached part included).
    decode_tokens: output tokens the iteration produced, one per request that sampled (each request's first
        token included, as LLMServingSim's generation throughput and vLLM's num_generation_tokens count it).
    num_seqs: requests in the batch. kv_blocks_in_use: the instance's allocated KV blocks after scheduling it.
    npu_mem_bytes: weights + KV cache in use on the instance's fullest NPU at that moment.
    """

    instance_id: int
    batch_id: int
    start_ns: int
    end_ns: int
    prefill_tokens: int
    decode_tokens: int
    num_seqs: int
    kv_blocks_in_use: int
    npu_mem_bytes: int

    @classmethod
    def for_batch(
        cls,
        instance_id: int,
        batch: ScheduledBatch,
        start_ns: int,
        end_ns: int,
        kv_blocks_in_use: int,
        npu_mem_bytes: int,
        requests: Mapping[int, Request],
    ) -> IterationRecord:
        """The record of a scheduled batch. The prefill entry that samples at exactly input_tokens of KV
        completes its request's prompt (a recompute after generating samples further on) and also counts the
        request's prefix-cache hit tokens."""
        prefill = 0
        decode = 0
        for entry in batch.entries:
            if entry.is_prefill:
                prefill += entry.num_new_tokens
                request = requests[entry.request_id]
                if entry.samples_token and entry.num_context_tokens + entry.num_new_tokens == request.input_tokens:
                    prefill += request.num_cached_prompt_tokens
            if entry.samples_token:
                decode += 1
        return cls(
            instance_id=instance_id,
            batch_id=batch.batch_id,
            start_ns=start_ns,
            end_ns=end_ns,
            prefill_tokens=prefill,
            decode_tokens=decode,
            num_seqs=len(batch.entries),
            kv_blocks_in_use=kv_blocks_in_use,
            npu_mem_bytes=npu_mem_bytes,
        )


# ---------------------------------------------------------------------------------------------------------
# Per-request metrics (LLMServingSim's definitions for the CSV, vLLM bench's for the summary)
# ---------------------------------------------------------------------------------------------------------


def _check_finished(request: Request) -> None:
    if request.finish_ns is None or not request.token_times_ns:
        raise ValueError(f"request {request.request_id} has not finished; metrics are defined on finished requests")


def ttft_ns(request: Request) -> int:
    """Arrival to the first output token (at the prefill instance under P/D)."""
    _check_finished(request)
    return request.token_times_ns[0] - request.arrival_ns


def latency_ns(request: Request) -> int:
    """Arrival to the last output token: LLMServingSim's latency, vLLM bench's E2EL."""
    _check_finished(request)
    return request.finish_ns - request.arrival_ns


def queuing_delay_ns(request: Request) -> int:
    """Arrival to the first time the scheduler put the request in a batch (vLLM's queued -> scheduled time).

    LLMServingSim restamps it at every prefill chunk, so there it is the last chunk's scheduling; pipesim keeps
    the first, which is what a queue wait is."""
    _check_finished(request)
    return request.first_scheduled_ns - request.arrival_ns


def itl_ns(request: Request) -> list[int]:
    """Gaps between consecutive output tokens (output_tokens - 1 values): LLMServingSim's per-request ITL list."""
    _check_finished(request)
    times = request.token_times_ns
    return [times[i] - times[i - 1] for i in range(1, len(times))]


def _gaps(request: Request) -> np.ndarray:
    """itl_ns as an int64 array (no Python int per gap: the pooled ITL of a long run is millions of gaps)."""
    _check_finished(request)
    return np.diff(np.asarray(request.token_times_ns, dtype=np.int64))


def tpot_ns_floor(request: Request) -> int:
    """LLMServingSim's TPOT column: (latency - TTFT) // (output - 1), integer ns, 0 for a one-token output."""
    if request.output_tokens <= 1:
        return 0
    return (latency_ns(request) - ttft_ns(request)) // (request.output_tokens - 1)


def tpot_ns(request: Request) -> float | None:
    """vLLM bench's TPOT: (E2EL - TTFT) / (output - 1); None (left out of the statistics) for one output token."""
    if request.output_tokens <= 1:
        return None
    return (latency_ns(request) - ttft_ns(request)) / (request.output_tokens - 1)


def _finished(requests: Iterable[Request]) -> list[Request]:
    return [r for r in requests if r.finish_ns is not None]


def write_requests_csv(path: Path, requests: Iterable[Request], model_names: Mapping[int, str]) -> None:
    """The per-request CSV, one row per finished request, grouped by instance and in finish order within one
    (LLMServingSim writes each instance's done list in turn). ITL is the list of gaps, as LLMServingSim prints
    a Python list."""
    rows = sorted(_finished(requests), key=lambda r: (r.instance_id, r.finish_ns, r.request_id))

    def chunks(rows_per_chunk: int = 512) -> Iterator[bytes]:
        # Encoded a few hundred rows at a time: the whole file (ITL lists of every request) is never in memory.
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for index, r in enumerate(rows, start=1):
            writer.writerow(
                [
                    r.instance_id,
                    r.request_id,
                    model_names[r.instance_id],
                    r.input_tokens,
                    r.output_tokens,
                    r.arrival_ns,
                    r.finish_ns,
                    latency_ns(r),
                    queuing_delay_ns(r),
                    ttft_ns(r),
                    tpot_ns_floor(r),
                    "[" + ", ".join(map(str, _gaps(r).tolist())) + "]",
                ]
            )
            if index % rows_per_chunk == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()

    write_atomic(path, chunks())


# ---------------------------------------------------------------------------------------------------------
# The interval log
# ---------------------------------------------------------------------------------------------------------


def format_rate(tokens_per_s: float) -> str:
    """A throughput as the seed's log prints it: 540, 1.4k, 2.3M."""
    if round(tokens_per_s) < 1000:
        return f"{tokens_per_s:.0f}"
    if round(tokens_per_s / 1e3, 1) < 1000:
        return f"{tokens_per_s / 1e3:.1f}k"
    return f"{tokens_per_s / 1e6:.1f}M"


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One log interval: (start_ns, end_ns], its token counts and rates, and each instance's state at its end.

    step: iterations completed by end_ns (all instances). batch: per instance, the requests in its last
    iteration that completed in the interval (0 if none did). npu_mem_bytes: per instance, weights + KV in use on
    its fullest NPU after its last completed iteration. partial: the run's last interval, shorter than the rest
    (its rates are over its own length). kv_blocks_in_use: per instance, its allocated KV blocks after its last
    completed iteration (the report's KV plot reads them)."""

    start_ns: int
    end_ns: int
    step: int
    prompt_tokens: int
    decode_tokens: int
    batch: tuple[int, ...]
    npu_mem_bytes: tuple[int, ...]
    partial: bool = False
    kv_blocks_in_use: tuple[int, ...] = ()

    @property
    def prompt_tok_s(self) -> float:
        return self.prompt_tokens * NS_PER_S / (self.end_ns - self.start_ns)

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens * NS_PER_S / (self.end_ns - self.start_ns)

    def line(self) -> str:
        """The seed's line; with several instances, one batch and one npu_mem per instance (LLMServingSim)."""
        rates = f"prompt_t={format_rate(self.prompt_tok_s)} tok/s decode_t={format_rate(self.decode_tok_s)} tok/s"
        if len(self.batch) == 1:
            memory = self.npu_mem_bytes[0] / MEM_GB
            return f"[INFO] step={self.step} batch={self.batch[0]} {rates} npu_mem={memory:.1f} GB"
        batches = " ".join(f"inst{i}_batch={b}" for i, b in enumerate(self.batch))
        mems = ", ".join(f"{m / MEM_GB:.1f} GB" for m in self.npu_mem_bytes)
        return f"[INFO] step={self.step} {batches} {rates} npu_mem=[{mems}]"


class IntervalLog:
    """Every interval_ns of simulated time, one IntervalRow, its line passed to `emit`.

    Feed it each IterationRecord when the iteration completes (in completion order); a record's tokens belong
    to the interval its end_ns falls in ((start, end]). `close(end_ns)` ends the run: the last, partial interval
    is kept and emitted too. Rows are kept for `write_interval_csv` (plots read them)."""

    def __init__(
        self,
        interval_ns: int,
        emit: Callable[[str], None] | None = None,
        num_instances: int = 1,
        idle_npu_mem_bytes: Sequence[int] | None = None,
    ) -> None:
        if interval_ns <= 0:
            raise ValueError(f"interval_ns must be > 0, got {interval_ns}")
        self.interval_ns = interval_ns
        self.emit = emit
        self.num_instances = num_instances
        self.rows: list[IntervalRow] = []
        self._start = 0
        self._steps = 0
        self._prompt = 0
        self._decode = 0
        self._batch = [0] * num_instances
        # Before an instance's first iteration completes, its NPUs hold its weights only.
        self._mem = list(idle_npu_mem_bytes) if idle_npu_mem_bytes is not None else [0] * num_instances
        self._kv = [0] * num_instances
        self._closed = False

    def observe(self, record: IterationRecord) -> None:
        while record.end_ns > self._start + self.interval_ns:
            self._end_interval(self._start + self.interval_ns, partial=False)
        self._steps += 1
        self._prompt += record.prefill_tokens
        self._decode += record.decode_tokens
        self._batch[record.instance_id] = record.num_seqs
        self._mem[record.instance_id] = record.npu_mem_bytes
        self._kv[record.instance_id] = record.kv_blocks_in_use

    def close(self, end_ns: int) -> None:
        """End of the run at end_ns: emit the full intervals up to it, then the partial one (if it has length)."""
        if self._closed:
            return
        self._closed = True
        while end_ns > self._start + self.interval_ns:
            self._end_interval(self._start + self.interval_ns, partial=False)
        if end_ns > self._start:
            self._end_interval(end_ns, partial=end_ns < self._start + self.interval_ns)

    def _end_interval(self, end_ns: int, partial: bool) -> None:
        row = IntervalRow(
            start_ns=self._start,
            end_ns=end_ns,
            step=self._steps,
            prompt_tokens=self._prompt,
            decode_tokens=self._decode,
            batch=tuple(self._batch),
            npu_mem_bytes=tuple(self._mem),
            partial=partial,
            kv_blocks_in_use=tuple(self._kv),
        )
        self.rows.append(row)
        if self.emit is not None:
            self.emit(row.line())
        self._start = end_ns
        self._prompt = 0
        self._decode = 0
        self._batch = [0] * self.num_instances


def interval_log_path(output: Path) -> Path:
    """Where the interval rows go beside the per-request CSV: outputs/run.csv -> outputs/run.log.csv."""
    return output.with_name(output.stem + ".log.csv")


def write_interval_csv(path: Path, rows: Sequence[IntervalRow]) -> None:
    """The interval rows as CSV: time in s at the interval's end, counts, rates, then per instance batch,
    npu_mem (bytes) and KV blocks in use."""
    num_instances = len(rows[0].batch) if rows else 1
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["time_s", "step", "prompt_tokens", "decode_tokens", "prompt_tok_s", "decode_tok_s", "partial"]
    for i in range(num_instances):
        header += [f"inst{i}_batch", f"inst{i}_npu_mem_bytes", f"inst{i}_kv_blocks"]
    writer.writerow(header)
    for row in rows:
        values: list[Any] = [
            f"{row.end_ns / NS_PER_S:.9g}",
            row.step,
            row.prompt_tokens,
            row.decode_tokens,
            f"{row.prompt_tok_s:.6g}",
            f"{row.decode_tok_s:.6g}",
            int(row.partial),
        ]
        for b, m, kv in zip(row.batch, row.npu_mem_bytes, row.kv_blocks_in_use, strict=True):
            values += [b, m, kv]
        writer.writerow(values)
    write_atomic(path, buffer.getvalue().encode())


# ---------------------------------------------------------------------------------------------------------
# The summary (vllm bench serve's metrics, plus what a simulator knows)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Distribution:
    """Mean, median, std and the PERCENTILES of one metric, in ms (numpy's defaults, as vllm bench)."""

    mean: float
    median: float
    std: float
    percentiles: tuple[tuple[int, float], ...]

    @classmethod
    def of_ns(cls, values_ns: Sequence[float]) -> Distribution:
        # vllm bench takes np.mean(values or 0): an empty list reads as 0.
        data = np.asarray(values_ns if len(values_ns) else [0.0], dtype=np.float64) / NS_PER_MS
        return cls(
            mean=float(np.mean(data)),
            median=float(np.median(data)),
            std=float(np.std(data)),
            percentiles=tuple((p, float(np.percentile(data, p))) for p in PERCENTILES),
        )


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """One instance's share of the summary."""

    instance_id: int
    num_npus: int
    pp_size: int
    num_gpu_blocks: int
    peak_kv_blocks: int
    max_inflight_batches: int
    preemptions: int
    iterations: int
    pd_type: str | None = None  # "prefill" / "decode" under P/D

    @property
    def peak_kv_usage(self) -> float:
        return self.peak_kv_blocks / self.num_gpu_blocks if self.num_gpu_blocks else 0.0


@dataclass(frozen=True)
class ServingSummary:
    """A run's summary: vllm bench serve's metrics over the finished requests, then the simulator's own."""

    completed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2el: Distribution
    preemptions: int
    prefix_query_tokens: int
    prefix_hit_tokens: int
    iterations: int
    instances: tuple[InstanceStats, ...] = field(default=())
    nodes_simulated: int = 0  # graph nodes the engine ran (all iterations, all NPUs)

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Hit tokens / queried tokens (vLLM's PrefixCacheStats hit rate); 0 when nothing was queried."""
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0

    @property
    def peak_kv_usage(self) -> float:
        """The highest share of its KV blocks any instance had allocated at once."""
        return max((i.peak_kv_usage for i in self.instances), default=0.0)

    def to_json(self) -> dict[str, Any]:
        """vllm bench serve's result keys (duration, completed, ..., mean_ttft_ms, p99_itl_ms), then ours."""
        out: dict[str, Any] = {
            "duration": self.duration_s,
            "completed": self.completed,
            "failed": 0,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_output_tokens_per_s": self.max_output_tokens_per_s,
            "max_concurrent_requests": self.max_concurrent_requests,
        }
        for name, dist in (("ttft", self.ttft), ("tpot", self.tpot), ("itl", self.itl), ("e2el", self.e2el)):
            out[f"mean_{name}_ms"] = dist.mean
            out[f"median_{name}_ms"] = dist.median
            out[f"std_{name}_ms"] = dist.std
            for p, value in dist.percentiles:
                out[f"p{p}_{name}_ms"] = value
        out.update(
            {
                "preemptions": self.preemptions,
                "prefix_query_tokens": self.prefix_query_tokens,
                "prefix_hit_tokens": self.prefix_hit_tokens,
                "prefix_cache_hit_rate": self.prefix_cache_hit_rate,
                "peak_kv_usage": self.peak_kv_usage,
                "iterations": self.iterations,
                "nodes_simulated": self.nodes_simulated,
                "instances": [
                    {
                        "instance_id": i.instance_id,
                        "pd_type": i.pd_type,
                        "num_npus": i.num_npus,
                        "pp_size": i.pp_size,
                        "num_gpu_blocks": i.num_gpu_blocks,
                        "peak_kv_blocks": i.peak_kv_blocks,
                        "peak_kv_usage": i.peak_kv_usage,
                        "max_inflight_batches": i.max_inflight_batches,
                        "preemptions": i.preemptions,
                        "iterations": i.iterations,
                    }
                    for i in self.instances
                ],
            }
        )
        return out

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def format(self) -> str:
        """The summary in vllm bench serve's layout ("{:<40} {:<10}" rows under 50-wide rules)."""
        lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

        def row(label: str, value: object, fmt: str = "") -> None:
            lines.append(("{:<40} {:<10" + fmt + "}").format(label, value))

        row("Successful requests:", self.completed)
        row("Failed requests:", 0)
        row("Benchmark duration (s):", self.duration_s, ".2f")
        row("Total input tokens:", self.total_input_tokens)
        row("Total generated tokens:", self.total_output_tokens)
        row("Request throughput (req/s):", self.request_throughput, ".2f")
        row("Output token throughput (tok/s):", self.output_throughput, ".2f")
        row("Peak output token throughput (tok/s):", self.max_output_tokens_per_s, ".2f")
        row("Peak concurrent requests:", self.max_concurrent_requests, ".2f")
        row("Total token throughput (tok/s):", self.total_token_throughput, ".2f")
        for short, header, dist in (
            ("TTFT", "Time to First Token", self.ttft),
            ("TPOT", "Time per Output Token (excl. 1st token)", self.tpot),
            ("ITL", "Inter-token Latency", self.itl),
            ("E2EL", "End-to-end Latency", self.e2el),
        ):
            lines.append("{s:{c}^{n}}".format(s=header, n=50, c="-"))
            row(f"Mean {short} (ms):", dist.mean, ".2f")
            row(f"Median {short} (ms):", dist.median, ".2f")
            for p, value in dist.percentiles:
                row(f"P{p} {short} (ms):", value, ".2f")
        lines.append("{s:{c}^{n}}".format(s="Simulation", n=50, c="-"))
        row("Iterations:", self.iterations)
        row("Preemptions:", self.preemptions)
        row("Prefix cache hit rate (%):", 100 * self.prefix_cache_hit_rate, ".2f")
        row("Peak KV cache usage (%):", 100 * self.peak_kv_usage, ".2f")
        for i in self.instances:
            if i.pd_type:
                row(f"Instance {i.instance_id} role:", i.pd_type)  # P/D: which one prefills, which decodes
            row(f"Instance {i.instance_id} peak KV blocks:", f"{i.peak_kv_blocks}/{i.num_gpu_blocks}")
            row(f"Instance {i.instance_id} max in-flight batches:", f"{i.max_inflight_batches} (pp {i.pp_size})")
        lines.append("=" * 50)
        return "\n".join(lines)


def _peak_output_tokens_per_s(requests: Sequence[Request]) -> float:
    """vllm bench's peak: output tokens counted in 1 s buckets from the first arrival; the fullest bucket."""
    if not requests:
        return 0.0
    start = min(r.arrival_ns for r in requests)
    end = max(r.finish_ns for r in requests)
    buckets = np.zeros(int(math.ceil((end - start) / NS_PER_S)) + 1)
    times = np.fromiter((t - start for r in requests for t in r.token_times_ns), dtype=np.int64)
    np.add.at(buckets, times // NS_PER_S, 1)
    return float(buckets.max())


def _peak_concurrency(requests: Sequence[Request]) -> int:
    """vllm bench's peak concurrent requests: a sweep over [arrival, finish), departures before arrivals."""
    events = sorted([(r.arrival_ns, 1) for r in requests] + [(r.finish_ns, -1) for r in requests])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def summarize_requests(
    requests: Iterable[Request],
    iterations: Sequence[IterationRecord] = (),
    instances: Sequence[InstanceStats] = (),
    prefix_query_tokens: int = 0,
    prefix_hit_tokens: int = 0,
    nodes_simulated: int = 0,
) -> ServingSummary:
    """The summary of finished requests. Duration runs from the trace's time origin (arrival_ns 0, where vllm
    bench starts its clock before sending the first request) to the last request's last token."""
    done = _finished(requests)
    duration_s = max((r.finish_ns for r in done), default=0) / NS_PER_S
    total_in = sum(r.input_tokens for r in done)
    total_out = sum(r.output_tokens for r in done)
    tpots = [t for t in (tpot_ns(r) for r in done) if t is not None]

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else 0.0

    return ServingSummary(
        completed=len(done),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=per_s(len(done)),
        output_throughput=per_s(total_out),
        total_token_throughput=per_s(total_in + total_out),
        max_output_tokens_per_s=_peak_output_tokens_per_s(done),
        max_concurrent_requests=_peak_concurrency(done),
        ttft=Distribution.of_ns([ttft_ns(r) for r in done]),
        tpot=Distribution.of_ns(tpots),
        itl=Distribution.of_ns(np.concatenate([_gaps(r) for r in done]) if done else []),
        e2el=Distribution.of_ns([latency_ns(r) for r in done]),
        preemptions=sum(r.num_preemptions for r in done),
        prefix_query_tokens=prefix_query_tokens,
        prefix_hit_tokens=prefix_hit_tokens,
        iterations=len(iterations),
        instances=tuple(instances),
        nodes_simulated=nodes_simulated,
    )


def summarize(result: Any) -> ServingSummary:
    """The summary of a ServingResult (astra_driver.serving.loop): its requests, iterations and instances."""
    iterations_per_instance: dict[int, int] = {}
    for record in result.iterations:
        iterations_per_instance[record.instance_id] = iterations_per_instance.get(record.instance_id, 0) + 1
    instances = []
    query = hit = 0
    for inst in result.instances:
        stats = inst.stats
        query += stats.prefix_query_tokens
        hit += stats.prefix_hit_tokens
        instances.append(
            InstanceStats(
                instance_id=inst.instance_id,
                num_npus=inst.num_npus,
                pp_size=inst.pp_size,
                num_gpu_blocks=stats.num_gpu_blocks,
                peak_kv_blocks=stats.peak_kv_blocks,
                max_inflight_batches=inst.max_inflight_batches,
                preemptions=stats.preemptions,
                iterations=iterations_per_instance.get(inst.instance_id, 0),
                pd_type=getattr(inst, "pd_type", None),
            )
        )
    nodes = getattr(result, "nodes_simulated", 0)
    return summarize_requests(result.requests, result.iterations, instances, query, hit, nodes)
