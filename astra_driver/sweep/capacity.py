"""Capacity search: the highest request rate a serving configuration sustains within an SLO (docs/sweep.md).

The rate of a workload is changed by rescaling its arrivals, arrival_ns * base_rate / rate, where base_rate is
the dataset's own (requests / last arrival, which is exactly the rate of a workload generated at that rate, since
vLLM's benchmark puts the last arrival at n / rate). Same requests, same order, same lengths: only the load moves.

The search follows Vidur's capacity search (vidur/config_optimizer/config_explorer/capacity_search.py): a run per
probed rate, a P90 SLO on TTFT and TPOT, bisection between the highest rate known to pass and the lowest known to
fail, stopped when the two are within a relative tolerance (Vidur: --min-search-granularity 2.5%) or after a
bounded number of runs (Vidur: --max-iterations 20). Where Vidur starts from a configured QPS with an upper bound
of twice that, pipesim brackets first (doubling up from the dataset's rate while the SLO holds, halving down while
it does not), so no starting guess is needed; and it bisects only between probes it has run, so the rate reported
was run and met the SLO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from astra_driver.cluster_config import ClusterConfig, load_cluster_config
from astra_driver.serving.metrics import ServingSummary
from astra_driver.serving.request import Request
from astra_driver.serving.run_job import RunRequest, check_flags, serve
from astra_driver.serving.workload import load_workload
from llm_converter.errors import PipesimError

MAX_BRACKET_STEPS = 16  # doublings (or halvings) of the rate tried before giving up: 65,536 x either way
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Slo:
    """P90 bounds in ms; None: not bounded."""

    ttft_p90_ms: float | None = None
    tpot_p90_ms: float | None = None

    def check(self, where: str = "--slo-ttft-p90-ms / --slo-tpot-p90-ms") -> None:
        if self.ttft_p90_ms is None and self.tpot_p90_ms is None:
            raise PipesimError(f"{where}: give a TTFT bound, a TPOT bound or both")
        for name, value in (("TTFT", self.ttft_p90_ms), ("TPOT", self.tpot_p90_ms)):
            if value is not None and not value > 0:
                raise PipesimError(f"{where}: the P90 {name} bound {value} ms must be > 0")

    def met_by(self, summary: ServingSummary) -> bool:
        metrics = summary.to_json()
        return (self.ttft_p90_ms is None or metrics["p90_ttft_ms"] <= self.ttft_p90_ms) and (
            self.tpot_p90_ms is None or metrics["p90_tpot_ms"] <= self.tpot_p90_ms
        )

    def to_json(self) -> dict[str, Any]:
        return {"p90_ttft_ms": self.ttft_p90_ms, "p90_tpot_ms": self.tpot_p90_ms}


@dataclass(frozen=True)
class Probe:
    """One run of the search."""

    rate: float
    p90_ttft_ms: float
    p90_tpot_ms: float
    meets_slo: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "p90_ttft_ms": self.p90_ttft_ms,
            "p90_tpot_ms": self.p90_tpot_ms,
            "meets_slo": self.meets_slo,
        }


@dataclass
class CapacityResult:
    rate: float  # the highest rate probed that met the SLO
    lowest_failing_rate: float  # the lowest rate probed that did not; rate < this <= rate * (1 + rtol) when converged
    base_rate: float
    slo: Slo
    rtol: float
    converged: bool  # False: max_steps ran out before the bracket narrowed to rtol
    summary: ServingSummary  # the run at `rate`
    probes: list[Probe] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "lowest_failing_rate": self.lowest_failing_rate,
            "base_rate": self.base_rate,
            "slo": self.slo.to_json(),
            "rtol": self.rtol,
            "converged": self.converged,
            "probes": [p.to_json() for p in self.probes],
            "summary": self.summary.to_json(),
        }

    def format(self) -> str:
        lines = [f"{'rate (req/s)':>14}  {'P90 TTFT (ms)':>14}  {'P90 TPOT (ms)':>14}  SLO"]
        for p in self.probes:
            mark = "met" if p.meets_slo else "missed"
            lines.append(f"{p.rate:>14.4g}  {p.p90_ttft_ms:>14.2f}  {p.p90_tpot_ms:>14.2f}  {mark}")
        slo = " and ".join(
            f"P90 {name} <= {value:g} ms"
            for name, value in (("TTFT", self.slo.ttft_p90_ms), ("TPOT", self.slo.tpot_p90_ms))
            if value is not None
        )
        runs = len(self.probes)
        within = f"within {self.rtol:.1%}" if self.converged else f"not converged to {self.rtol:.1%} in {runs} runs"
        lines.append(
            f"capacity: {self.rate:.4g} req/s meets {slo} ({self.rate / self.base_rate:.3g} x the dataset's "
            f"{self.base_rate:.4g} req/s); {self.lowest_failing_rate:.4g} req/s does not ({within})"
        )
        lines.append(f"the run at {self.rate:.4g} req/s:")
        lines.append(self.summary.format())
        return "\n".join(lines)


def base_rate(requests: list[Request], where: str) -> float:
    """The dataset's request rate: requests / last arrival (vLLM bench's last arrival is at n / rate)."""
    if not requests:
        raise PipesimError(f"{where}: the dataset has no requests")
    last_ns = max(r.arrival_ns for r in requests)
    if last_ns <= 0:
        raise PipesimError(
            f"{where}: every request arrives at time 0, so the dataset has no rate to rescale; give a dataset with "
            "arrival times (pipesim workload --rate R)"
        )
    return len(requests) * NS_PER_S / last_ns


def rescaled(requests: list[Request], base: float, rate: float) -> list[Request]:
    """Fresh copies of the requests (a run mutates its requests) with arrivals rescaled to `rate` requests/s."""
    factor = base / rate
    return [
        Request(
            r.request_id,
            round(r.arrival_ns * factor),
            r.input_tokens,
            r.output_tokens,
            input_token_ids=r.input_token_ids,
            output_token_ids=r.output_token_ids,
            source=r.source,
        )
        for r in requests
    ]


def search_capacity(
    run_at: Callable[[float], ServingSummary],
    start_rate: float,
    slo: Slo,
    rtol: float = 0.025,
    max_steps: int = 20,
    base: float | None = None,
    where: str = "capacity",
) -> CapacityResult:
    """The highest rate meeting `slo`, by bracketing from `start_rate` then bisecting to `rtol` (at most `max_steps`
    runs in all, the bracket's included, beyond which the best bracket so far is returned, converged=False)."""
    if not rtol > 0:
        raise PipesimError(f"{where}: rtol {rtol}: give a relative tolerance > 0, e.g. 0.025")
    if max_steps < 2:
        raise PipesimError(f"{where}: max steps {max_steps}: a search needs at least 2 runs")
    probes: list[Probe] = []
    summaries: dict[float, ServingSummary] = {}

    def probe(rate: float) -> bool:
        summary = run_at(rate)
        metrics = summary.to_json()
        ok = slo.met_by(summary)
        probes.append(Probe(rate, metrics["p90_ttft_ms"], metrics["p90_tpot_ms"], ok))
        summaries[rate] = summary
        return ok

    # Bracket: lo met the SLO, hi did not.
    rate = start_rate
    if probe(rate):
        lo, hi = rate, None
        for _ in range(MAX_BRACKET_STEPS):
            if len(probes) >= max_steps:
                break
            rate *= 2
            if probe(rate):
                lo = rate
            else:
                hi = rate
                break
        if hi is None:
            raise PipesimError(
                f"{where}: the SLO still holds at {lo:.4g} req/s ({lo / start_rate:g} x the starting rate): the "
                "dataset has too few requests to load this cluster; give a longer dataset or a tighter SLO"
            )
    else:
        lo, hi = None, rate
        for _ in range(MAX_BRACKET_STEPS):
            if len(probes) >= max_steps:
                break
            rate /= 2
            if probe(rate):
                lo = rate
                break
            hi = rate
        if lo is None:
            worst = probes[-1]
            raise PipesimError(
                f"{where}: no rate meets the SLO, down to {hi:.4g} req/s (P90 TTFT {worst.p90_ttft_ms:.2f} ms, "
                f"P90 TPOT {worst.p90_tpot_ms:.2f} ms there): even a lightly loaded run misses it; loosen the SLO or "
                "give a faster cluster"
            )
    # Bisect (arithmetic midpoints, as Vidur) until hi is within rtol of lo.
    while hi > lo * (1 + rtol) and len(probes) < max_steps:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(
        rate=lo,
        lowest_failing_rate=hi,
        base_rate=base if base is not None else start_rate,
        slo=slo,
        rtol=rtol,
        converged=hi <= lo * (1 + rtol),
        summary=summaries[lo],
        probes=probes,
    )


def find_capacity(
    request: RunRequest,
    slo: Slo,
    rtol: float = 0.025,
    max_steps: int = 20,
    cluster: ClusterConfig | None = None,
    requests: list[Request] | None = None,
) -> CapacityResult:
    """`pipesim capacity`: the highest rate of request.dataset's arrivals (rescaled) at which a `pipesim run` with
    request's flags meets `slo`. `cluster` / `requests` replace reading the files (sweeps pass edited ones)."""
    slo.check()
    check_flags(request)
    if cluster is None:
        cluster = load_cluster_config(request.cluster_config, dtype=request.dtype)
    if requests is None:
        requests = load_workload(request.dataset)
    base = base_rate(requests, str(request.dataset))

    def run_at(rate: float) -> ServingSummary:
        return serve(request, cluster=cluster, requests=rescaled(requests, base, rate)).summary

    return search_capacity(run_at, base, slo, rtol, max_steps, base=base, where=str(request.dataset))
