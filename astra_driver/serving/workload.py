"""Serving workloads: LLMServingSim's JSONL traces, read and checked line by line, and a seeded generator.

One request per line: {"input_toks": 10, "output_toks": 70, "arrival_time_ns": 46926808, "input_tok_ids": [...],
"output_tok_ids": [...]}; the token-id lists are optional (without input ids a request never uses the prefix cache).
Requests are numbered in file order from 0 and served in arrival order (a stable sort, as LLMServingSim's router
does). See docs/serving.md, "Workloads".
"""

from __future__ import annotations

import itertools
import json
import math
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from astra_driver.serving.request import Request, token_id_array
from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic

ARRIVALS = ("poisson", "gamma")
LENGTH_DISTRIBUTIONS = ("fixed", "uniform", "lognormal")
DEFAULT_VOCAB_SIZE = 32000


# -- reading ----------------------------------------------------------------------------------------------------------


def load_workload(path: Path) -> list[Request]:
    """Every request of a JSONL trace, in arrival order; a PipesimError "<file>:<line>: <field> ..." on the first
    bad line."""
    path = Path(path)
    requests: list[Request] = []
    try:
        # Line by line from the file: a 100,000-line trace is never held whole (only its requests are).
        with path.open("rb") as lines:
            for line_no, raw in enumerate(lines, start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{line_no}"
                fast = _fast_row(raw)
                if fast is not None:
                    row, ids = fast
                else:
                    row, ids = _parse_row(raw, where), {}
                requests.append(_request_from_row(row, where, len(requests), ids))
    except OSError as exc:
        raise PipesimError(f"{path}: cannot read the workload ({exc.strerror}); check the --dataset path") from None
    if not requests:
        raise PipesimError(f"{path}: the workload holds no requests; give one JSON object per line")
    requests.sort(key=lambda r: r.arrival_ns)  # stable: equal arrivals keep file order
    return requests


def _parse_row(raw: bytes, where: str) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PipesimError(f"{where}: not UTF-8 text; a workload is JSON lines") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipesimError(
            f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
        ) from None


_ID_FIELDS = ("input_tok_ids", "output_tok_ids")
_INT32_MAX = 2**31 - 1


def _fast_row(raw: bytes) -> tuple[dict[str, Any], dict[str, array]] | None:
    """The row with its token-id lists parsed by numpy straight into int32 (json.loads builds a Python int per id:
    3-4x slower on a 10,000-line ShareGPT trace and ~36 B per id while it lasts), or None to take json.loads.

    Only plain lists of non-negative ids without leading zeros, separated by "," or ", ", take this path; anything
    else (negative, float or bool ids, other spacing, a 0 id, ids past int32, a field given twice, bad JSON) goes
    through json.loads and its checks, so every line is accepted or refused exactly as json.loads would have it."""
    ids: dict[str, array] = {}
    rest = raw
    for name in _ID_FIELDS:
        key = f'"{name}"'.encode()
        at = rest.find(key)
        if at < 0:
            continue
        if rest.find(key, at + 1) >= 0:
            return None
        colon = at + len(key)
        while rest[colon : colon + 1] in (b" ", b"\t"):
            colon += 1
        if rest[colon : colon + 1] != b":":
            return None
        open_at = colon + 1
        while rest[open_at : open_at + 1] in (b" ", b"\t"):
            open_at += 1
        if rest[open_at : open_at + 1] != b"[":
            return None
        close_at = rest.find(b"]", open_at)
        if close_at < 0:
            return None
        body = rest[open_at + 1 : close_at].replace(b", ", b",")
        if (
            not body
            or body.translate(None, b"0123456789,")  # only digits and commas
            or body[:1] in (b",", b"0")
            or body[-1:] == b","
            or b",," in body
            or b",0" in body  # a leading zero or a 0 id: json.loads decides
        ):
            return None
        values = np.fromstring(body, dtype=np.int64, sep=",")  # text mode: digits and commas only, checked above
        if len(values) != body.count(b",") + 1 or (len(values) and int(values.max()) > _INT32_MAX):
            return None
        ids[name] = array("i", values.astype(np.int32).tobytes())
        rest = rest[:open_at] + b"null" + rest[close_at + 1 :]
    if not ids:
        return None
    try:
        row = json.loads(rest)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict) or any(name not in row or row[name] is not None for name in ids):
        return None  # the field names were inside a string, or the line is no object: json.loads decides
    return row, ids


def _request_from_row(row: Any, where: str, request_id: int, parsed_ids: dict[str, array] | None = None) -> Request:
    if not isinstance(row, dict):
        raise PipesimError(
            f"{where}: a {type(row).__name__} where a JSON object goes; each line is "
            '{"input_toks": N, "output_toks": N, "arrival_time_ns": T}'
        )
    input_toks = _token_count(row, "input_toks", where)
    output_toks = _token_count(row, "output_toks", where)
    arrival = _arrival_ns(row, where)
    parsed_ids = parsed_ids or {}
    input_ids = _token_ids(row, "input_tok_ids", input_toks, where, parsed_ids.get("input_tok_ids"))
    output_ids = _token_ids(row, "output_tok_ids", output_toks, where, parsed_ids.get("output_tok_ids"))
    return Request(
        request_id=request_id,
        arrival_ns=arrival,
        input_tokens=input_toks,
        output_tokens=output_toks,
        input_token_ids=input_ids,
        output_token_ids=output_ids,
        source=where,
    )


def _token_count(row: dict[str, Any], field: str, where: str) -> int:
    if field not in row:
        raise PipesimError(f"{where}: {field} is missing; every request needs input_toks, output_toks, arrival_time_ns")
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipesimError(f"{where}: {field} is {json.dumps(value)}, not a number of tokens; give an integer >= 1")
    if isinstance(value, float) and not value.is_integer():
        raise PipesimError(f"{where}: {field} is {value}, not a whole number of tokens; give an integer >= 1")
    count = int(value)
    if count < 0:
        raise PipesimError(f"{where}: {field} is {count}, a negative number of tokens; give an integer >= 1")
    if count == 0:
        raise PipesimError(f"{where}: {field} is 0; a request needs at least 1 prompt token and 1 output token")
    return count


def _arrival_ns(row: dict[str, Any], where: str) -> int:
    if "arrival_time_ns" not in row:
        raise PipesimError(f"{where}: arrival_time_ns is missing; give the arrival time in nanoseconds")
    value = row["arrival_time_ns"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PipesimError(f"{where}: arrival_time_ns is {json.dumps(value)}, not a number; give nanoseconds >= 0")
    if value < 0:
        raise PipesimError(f"{where}: arrival_time_ns is {value}, before time 0; give nanoseconds >= 0")
    return int(value)  # LLMServingSim truncates fractional nanoseconds the same way


def _token_ids(row: dict[str, Any], field: str, count: int, where: str, parsed: array | None) -> array | None:
    """The field's ids as array('i') (4 B per id; see request.py), from the fast parse when it had them."""
    value: Any = parsed if parsed is not None else row.get(field)
    if value is None:
        return None
    if parsed is None and (not isinstance(value, list) or not set(map(type, value)) <= {int}):
        raise PipesimError(f"{where}: {field} must be a list of integer token ids")  # bools and floats are not ids
    if len(value) != count:
        counted = "input_toks" if field == "input_tok_ids" else "output_toks"
        raise PipesimError(
            f"{where}: {field} holds {len(value)} ids but {counted} is {count}; make them agree or drop {field}"
        )
    if parsed is not None:
        return parsed
    try:
        return token_id_array(value)
    except OverflowError:
        raise PipesimError(
            f"{where}: {field} holds an id outside the 32-bit range (-2^31 .. 2^31-1); token ids are vocabulary indices"
        ) from None


# -- writing ----------------------------------------------------------------------------------------------------------


def workload_jsonl(requests: Sequence[Request]) -> bytes:
    """Requests as LLMServingSim JSONL, in the order given (token ids written when known)."""
    lines = []
    for r in requests:
        row: dict[str, Any] = {
            "input_toks": r.input_tokens,
            "output_toks": r.output_tokens,
            "arrival_time_ns": r.arrival_ns,
        }
        if r.input_token_ids is not None:
            row["input_tok_ids"] = list(r.input_token_ids)
        if r.output_token_ids is not None:
            row["output_tok_ids"] = list(r.output_token_ids)
        lines.append(json.dumps(row, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def write_workload_jsonl(path: Path, requests: Sequence[Request]) -> None:
    if not requests:
        raise PipesimError(f"{path}: no requests to write; ask for --num-requests >= 1")
    write_atomic(Path(path), workload_jsonl(requests))


# -- generating -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadSpec:
    """What `pipesim workload` generates. Same spec and seed, same requests, byte for byte."""

    num_requests: int
    rate: float = math.inf  # requests per second; inf: all arrive at time 0
    arrival: str = "poisson"  # or "gamma" (vLLM benchmark's burstiness as the shape)
    burstiness: float = 1.0  # gamma shape; 1 is Poisson, < 1 burstier (CV = 1/sqrt(burstiness)), inf even gaps
    input_len: int = 1024
    output_len: int = 128
    length_dist: str = "fixed"  # "uniform": [len*(1-r), len*(1+r)]; "lognormal": mean len, log-sd sigma
    range_ratio: float = 0.5
    length_sigma: float = 0.5
    lengths_from: Path | None = None  # resample (input, output) pairs from this JSONL instead
    shared_prefix_groups: int = 0  # > 0: each request joins one of G groups sharing its first prefix_len token ids
    prefix_len: int = 0
    token_ids: bool = True  # write input_tok_ids (needed for prefix caching)
    vocab_size: int = DEFAULT_VOCAB_SIZE
    seed: int = 0

    def check(self) -> None:
        if self.num_requests < 1:
            raise PipesimError(f"--num-requests: {self.num_requests}; ask for at least 1 request")
        if not (self.rate > 0):
            raise PipesimError(f"--rate: {self.rate} requests/s; give a rate > 0 (inf: all at time 0)")
        if self.arrival not in ARRIVALS:
            raise PipesimError(f"--arrival: {self.arrival!r} is not an arrival process; use {' or '.join(ARRIVALS)}")
        if not (self.burstiness > 0):
            raise PipesimError(f"--burstiness: {self.burstiness}; give a gamma shape > 0 (1 is Poisson, inf even gaps)")
        if self.arrival == "poisson" and self.burstiness != 1.0:
            raise PipesimError("--burstiness: only gamma arrivals have a burstiness; add --arrival gamma")
        if self.length_dist not in LENGTH_DISTRIBUTIONS:
            raise PipesimError(
                f"--length-dist: {self.length_dist!r} is not a distribution; use {', '.join(LENGTH_DISTRIBUTIONS)}"
            )
        for flag, value in (("--input-len", self.input_len), ("--output-len", self.output_len)):
            if value < 1:
                raise PipesimError(f"{flag}: {value}; a request needs at least 1 token")
        if not 0 <= self.range_ratio < 1:
            raise PipesimError(f"--range-ratio: {self.range_ratio}; give 0 <= ratio < 1")
        if not (self.length_sigma >= 0) or not math.isfinite(self.length_sigma):
            raise PipesimError(f"--length-sigma: {self.length_sigma}; give a finite sigma >= 0")
        if self.shared_prefix_groups < 0 or self.prefix_len < 0:
            raise PipesimError("--shared-prefix-groups / --prefix-len: give numbers >= 0")
        if (self.shared_prefix_groups > 0) != (self.prefix_len > 0):
            raise PipesimError("--shared-prefix-groups and --prefix-len go together; give both (> 0) or neither")
        if self.shared_prefix_groups > 0 and not self.token_ids:
            raise PipesimError("--shared-prefix-groups: shared prefixes are token ids; drop --no-token-ids")
        if self.vocab_size < 2:
            raise PipesimError(f"--vocab-size: {self.vocab_size}; give at least 2 token ids")


def generate_workload(spec: WorkloadSpec) -> list[Request]:
    """Requests with seeded arrivals, lengths and token ids (Python's random.Random: the stream is stable across
    platforms and Python versions)."""
    spec.check()
    rng = random.Random(spec.seed)
    arrivals = _arrival_times_ns(spec, rng)
    lengths = _lengths(spec, rng)
    vocab = range(spec.vocab_size)  # rng.choices over a range: uniform ids, 3x faster than randrange per id
    prefixes = [rng.choices(vocab, k=spec.prefix_len) for _ in range(spec.shared_prefix_groups)]
    requests = []
    for i, (arrival, (input_len, output_len)) in enumerate(zip(arrivals, lengths, strict=True)):
        ids: array | None = None
        if spec.token_ids:
            prefix: list[int] = []
            if prefixes:
                prefix = prefixes[rng.randrange(len(prefixes))]
                input_len = max(input_len, len(prefix) + 1)  # a group member always has its own last token
            ids = token_id_array(prefix)
            ids.extend(rng.choices(vocab, k=input_len - len(prefix)))
        requests.append(Request(i, arrival, input_len, output_len, input_token_ids=ids))
    return requests


def _arrival_times_ns(spec: WorkloadSpec, rng: random.Random) -> list[int]:
    """vLLM benchmark's arrivals (vllm/benchmarks/serve.py, get_request): every request, the first included, waits a
    gap drawn from a gamma distribution with shape `burstiness` and mean 1/rate (exponential, i.e. Poisson, for shape
    1; constant for an infinite shape); the cumulative times are then scaled so the last request arrives at exactly
    num_requests / rate, as vLLM does to steady the throughput across seeds."""
    n = spec.num_requests
    if math.isinf(spec.rate):
        return [0] * n
    shape = spec.burstiness if spec.arrival == "gamma" else 1.0
    if math.isinf(shape):
        gaps = [1.0 / spec.rate] * n
    else:
        scale = 1.0 / (spec.rate * shape)
        gaps = [rng.gammavariate(shape, scale) for _ in range(n)]
    times = list(itertools.accumulate(gaps))
    factor = (n / spec.rate) / times[-1] if times[-1] > 0 else 1.0
    return [round(t * factor * 1e9) for t in times]


def _lengths(spec: WorkloadSpec, rng: random.Random) -> list[tuple[int, int]]:
    if spec.lengths_from is not None:
        source = load_workload(spec.lengths_from)
        pairs = [(r.input_tokens, r.output_tokens) for r in source]
        return [pairs[rng.randrange(len(pairs))] for _ in range(spec.num_requests)]
    return [
        (_draw_length(spec, spec.input_len, rng), _draw_length(spec, spec.output_len, rng))
        for _ in range(spec.num_requests)
    ]


def _draw_length(spec: WorkloadSpec, mean: int, rng: random.Random) -> int:
    if spec.length_dist == "fixed":
        return mean
    if spec.length_dist == "uniform":
        low = max(1, math.floor(mean * (1 - spec.range_ratio)))
        high = max(low, math.ceil(mean * (1 + spec.range_ratio)))
        return rng.randint(low, high)
    # Lognormal with the given mean: mu = ln(mean) - sigma^2 / 2.
    sigma = spec.length_sigma
    return max(1, round(rng.lognormvariate(math.log(mean) - sigma * sigma / 2, sigma)))
