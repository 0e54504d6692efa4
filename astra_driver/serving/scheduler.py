"""One instance's scheduler with vLLM v1's policy (vllm/v1/core/sched/scheduler.py, Scheduler.schedule).

Each step: running requests first, in admission order (a decode takes 1 token, an unfinished prefill its next
chunk), then waiting requests first-come first-served, under a token budget (max_num_batched_tokens) and a cap on
running requests (max_num_seqs). KV lives in paged blocks (kv_cache.KVCacheManager); when a running request cannot
get a block, the last running request is preempted (its KV freed, its computed tokens lost, back to the front of the
waiting queue) until it can, as vLLM's recompute preemption does.

With pipeline parallelism at most pp_size batches are in flight, and a request in an in-flight batch is not
scheduled again until that batch's tokens exist (finish_batch). See docs/serving.md, "Scheduler".
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from astra_driver.serving.kv_cache import KVCacheManager
from astra_driver.serving.request import Request, RequestStatus
from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration, PrefillChunk


def defaults_for(
    device_memory_gib: float,
    device_name: str = "",
    usage: str = "serve",
    enable_chunked_prefill: bool = True,
    max_model_len: int | None = None,
) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that vLLM 0.19 picks when the user gives neither.

    vllm/engine/arg_utils.py, EngineArgs._set_default_args: a GPU with >= 70 GiB that is not an A100 gets 8192
    tokens / 1024 seqs for the OpenAI server ("serve") and 16384 / 1024 for the LLM class ("offline"); other GPUs
    2048 / 256 and 8192 / 256. Without chunked prefill the token budget is max_model_len. max_num_seqs is capped by the
    token budget."""
    if usage not in ("serve", "offline"):
        raise ValueError(f"usage must be 'serve' or 'offline', not {usage!r}")
    large = device_memory_gib >= 70 and "a100" not in device_name.lower()
    if large:
        tokens, seqs = (8192, 1024) if usage == "serve" else (16384, 1024)
    else:
        tokens, seqs = (2048, 256) if usage == "serve" else (8192, 256)
    if not enable_chunked_prefill and max_model_len is not None:
        tokens = max_model_len
    return tokens, min(seqs, tokens)


@dataclass(frozen=True)
class SchedulerConfig:
    """vLLM's scheduler and cache flags, one instance's worth (defaults: vLLM 0.19's server on a large GPU)."""

    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024
    block_size: int = 16
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    pp_size: int = 1
    long_prefill_token_threshold: int = 0  # > 0: a prefill takes at most this many tokens per step
    reserve_full_isl: bool = True  # admit a waiting request only if its whole sequence so far fits (vLLM default)
    max_model_len: int | None = None  # prompt + output longer than this is refused (the model's context)

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "block_size", "pp_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise PipesimError(f"--{name.replace('_', '-')}: {value!r} must be a positive integer")
        if self.long_prefill_token_threshold < 0:
            raise PipesimError(
                f"--long-prefill-token-threshold: {self.long_prefill_token_threshold} must be >= 0 (0: no limit)"
            )
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise PipesimError(f"max_model_len: {self.max_model_len} must be a positive number of tokens")
        if (
            not self.enable_chunked_prefill
            and self.max_model_len is not None
            and self.max_num_batched_tokens < self.max_model_len
        ):
            # vLLM's SchedulerConfig refuses this too: a sequence that cannot be split must fit one step.
            raise PipesimError(
                f"--max-num-batched-tokens: {self.max_num_batched_tokens} is below the model's context "
                f"({self.max_model_len}) with chunked prefill off, so longer prompts could never run; raise it to "
                f"{self.max_model_len} or more, or keep chunked prefill on"
            )


class BatchEntry(NamedTuple):
    """One request's share of a batch. A NamedTuple: one is made per scheduled request per step, and a tuple costs a
    fifth of a frozen dataclass to build (fields read the same way; it also unpacks as its five values)."""

    request_id: int
    num_new_tokens: int
    num_context_tokens: int  # KV present before this step, cached prefix included
    is_prefill: bool  # prompt (or recompute after preemption) tokens, not a single decode token
    samples_token: bool  # this step reaches the end of the known sequence: an output token comes out


@dataclass(frozen=True)
class ScheduledBatch:
    batch_id: int
    scheduled_ns: int
    entries: tuple[BatchEntry, ...]

    @property
    def num_tokens(self) -> int:
        return sum(e.num_new_tokens for e in self.entries)

    @property
    def num_seqs(self) -> int:
        return len(self.entries)

    def iteration(self) -> Iteration:
        """The batch as the graph builder sees it: prefill chunks with their context, decodes with their KV."""
        prefill = tuple(PrefillChunk(e.num_new_tokens, e.num_context_tokens) for e in self.entries if e.is_prefill)
        decode = tuple(e.num_context_tokens for e in self.entries if not e.is_prefill)
        return Iteration(prefill=prefill, decode=decode)

    def describe(self) -> str:
        parts = [
            f"r{e.request_id}:{'P' if e.is_prefill else 'D'}{e.num_new_tokens}@{e.num_context_tokens}"
            + ("*" if e.samples_token else "")
            for e in self.entries
        ]
        return f"batch {self.batch_id} t={self.scheduled_ns} [{' '.join(parts)}]"


@dataclass(frozen=True)
class SchedulerStats:
    preemptions: int
    prefix_query_tokens: int  # prompt tokens looked up in the prefix cache at first admission
    prefix_hit_tokens: int  # of those, tokens found cached
    kv_blocks_in_use: int
    peak_kv_blocks: int
    num_gpu_blocks: int  # as configured; one (vLLM's null block) never holds KV

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0


class Scheduler:
    """vLLM v1's scheduling policy for one instance (FCFS), driven by the serving loop."""

    def __init__(self, config: SchedulerConfig, num_gpu_blocks: int) -> None:
        self.config = config
        self.kv = KVCacheManager(num_gpu_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order; the last one is the preemption victim
        self.requests: dict[int, Request] = {}
        self._inflight: dict[int, list[tuple[Request, int]]] = {}  # batch id -> (request, preemptions at schedule)
        self._busy: set[int] = set()  # request ids in an in-flight batch
        self._next_batch_id = 0
        self._preemptions = 0
        self._query_tokens = 0
        self._hit_tokens = 0
        self._peak_blocks = 0

    # Tests turn the schedule() fast path off to check it gives the same batches as the full path.
    _fast_path = True

    # -- admission ------------------------------------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue an arrived request; refuse one that could never run on this instance (check_request)."""
        self.check_request(request)
        if request.request_id in self.requests:
            raise PipesimError(f"{request.describe()}: request id {request.request_id} is already queued")
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def check_request(self, request: Request) -> None:
        """PipesimError naming the request (and its dataset line) if it could never run here: longer than the
        model's context, or more KV than the whole cache holds even alone. A loop may check a whole workload up
        front with it, before simulating anything."""
        cfg = self.config
        total = request.input_tokens + request.output_tokens
        if cfg.max_model_len is not None and total > cfg.max_model_len:
            raise PipesimError(
                f"{request.describe()}: input_toks + output_toks = {total} exceeds the model's context "
                f"(max_model_len {cfg.max_model_len}); shorten the request or use a model with a longer context"
            )
        if not cfg.enable_chunked_prefill and total - 1 > cfg.max_num_batched_tokens:
            # Without chunking a prompt, or its recompute after a preemption (prompt + generated tokens), is one step.
            raise PipesimError(
                f"{request.describe()}: {total - 1} tokens (input_toks + output_toks - 1) may have to run in one "
                f"step but --max-num-batched-tokens is {cfg.max_num_batched_tokens} and chunked prefill is off; "
                "raise the budget or keep chunked prefill on"
            )
        # The last output token is sampled but never fed back, so its KV is never written.
        needed = -(-(total - 1) // cfg.block_size)
        usable = self.kv.pool.num_usable_blocks
        if needed > usable:
            raise PipesimError(
                f"{request.describe()}: needs {needed} KV blocks of {cfg.block_size} tokens "
                f"({total - 1} tokens) but the whole KV cache holds {usable}; shorten the request or give the "
                "instance more KV memory (mem_size, more NPUs, --num-gpu-blocks)"
            )

    def admit_transferred(self, request: Request) -> bool:
        """P/D decode side: admit a request whose prompt KV arrived from a prefill instance (its first token already
        generated there): it takes blocks for its prompt and runs as a decode from the next step. False (nothing
        changed) while it finds no seat (max_num_seqs) or too few free blocks; the caller retries after a batch."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        if request.request_id in self.requests:
            raise PipesimError(f"{request.describe()}: request id {request.request_id} is already on this instance")
        computed = request.num_computed_tokens
        request.num_computed_tokens = 0
        if self.kv.allocate_slots(request, request.input_tokens) is None:
            request.num_computed_tokens = computed
            return False
        request.num_computed_tokens = request.input_tokens
        request.status = RequestStatus.RUNNING
        self.requests[request.request_id] = request
        self.running.append(request)
        self._peak_blocks = max(self._peak_blocks, self.kv.pool.num_used_blocks)
        return True

    # -- one step -------------------------------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, now_ns: int) -> ScheduledBatch | None:
        """The next batch, or None when pp_size batches are in flight or nothing can run now.

        None with no batch in flight means no request is queued: a lone request always fits (add_request refused
        those that cannot), so a loop may wait for the next arrival."""
        cfg = self.config
        if len(self._inflight) >= cfg.pp_size:
            return None
        budget = cfg.max_num_batched_tokens
        entries: list[BatchEntry] = []
        members: list[tuple[Request, int]] = []  # (request, its preemption count), to spot victims at finish_batch
        preempted_any = False

        # Running requests, in admission order. A request's computed tokens advance as soon as it is scheduled, as
        # in vLLM (_update_after_schedule): the KV is being written from then on. Victims come from the tail, so
        # none of them was scheduled earlier in the step.
        kv, busy, threshold, running = self.kv, self._busy, cfg.long_prefill_token_threshold, self.running
        # Fast path (most steps of most requests): when the request's blocks already hold the new tokens and no block
        # fills up to be registered in the prefix cache, kv.grow_slots would change nothing and succeed, so it is not
        # called. The same test grow_slots makes, read from the KV manager's tables directly.
        fast = self._fast_path
        size, req_blocks, num_cached = kv.block_size, kv.req_to_blocks, kv.num_cached_block
        caching = kv.enable_caching
        make_entry = tuple.__new__  # BatchEntry(...) without the Python-level NamedTuple constructor: 1 per entry
        # Victims are popped from the tail, never before the current request, so iterating the list as it shrinks
        # visits exactly the requests still running (the iterator stops at the new end).
        for request in running:
            request_id = request.request_id
            if request_id in busy:
                continue
            computed = request.num_computed_tokens
            num_tokens = request.input_tokens + request.num_generated
            num_new = num_tokens - computed
            if num_new <= 0:
                continue
            if num_new > 1:  # a decode (1 token) is never capped: threshold and budget are >= 1
                if 0 < threshold < num_new:
                    num_new = threshold
                if num_new > budget:
                    num_new = budget
            need = computed + num_new
            if not (
                fast
                and need <= len(req_blocks[request_id]) * size
                and (not caching or request.input_token_ids is None or need // size <= num_cached.get(request_id, 0))
            ):
                victim_was_self = False
                while not kv.grow_slots(request, num_new):
                    victim = running.pop()
                    self._preempt(victim)
                    preempted_any = True
                    if victim is request:
                        victim_was_self = True
                        break
                if victim_was_self:
                    break
            is_decode = num_new == 1 and computed == num_tokens - 1 and request.num_generated > 0
            entries.append(make_entry(BatchEntry, (request_id, num_new, computed, not is_decode, need == num_tokens)))
            request.num_computed_tokens = need
            busy.add(request_id)
            members.append((request, request.num_preemptions))
            budget -= num_new
            if budget <= 0:
                break

        # Waiting requests, first come first served; none when this step preempted (vLLM does the same).
        if not preempted_any:
            while self.waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
                request = self.waiting[0]
                if request.request_id in self._busy:
                    break  # preempted while in flight: its batch has not finished yet
                hit_blocks, num_hit = self.kv.get_computed_blocks(request)
                num_new = request.num_tokens - num_hit
                if 0 < cfg.long_prefill_token_threshold < num_new:
                    num_new = cfg.long_prefill_token_threshold
                if not cfg.enable_chunked_prefill and num_new > budget:
                    break
                num_new = min(num_new, budget)
                if self.kv.allocate_slots(request, num_new, num_hit, hit_blocks, cfg.reserve_full_isl) is None:
                    break
                self.waiting.popleft()
                first_admission = request.first_scheduled_ns is None
                if first_admission:
                    request.first_scheduled_ns = now_ns
                    request.num_cached_prompt_tokens = num_hit
                    self._query_tokens += request.num_tokens
                    self._hit_tokens += num_hit
                request.status = RequestStatus.RUNNING
                request.num_computed_tokens = num_hit + num_new
                self.running.append(request)
                entries.append(
                    BatchEntry(request.request_id, num_new, num_hit, True, num_hit + num_new == request.num_tokens)
                )
                busy.add(request.request_id)
                members.append((request, request.num_preemptions))
                budget -= num_new

        self._peak_blocks = max(self._peak_blocks, self.kv.pool.num_used_blocks)
        if not entries:
            return None
        batch = ScheduledBatch(self._next_batch_id, now_ns, tuple(entries))
        self._inflight[batch.batch_id] = members
        self._next_batch_id += 1
        return batch

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self._preemptions += 1
        self.waiting.appendleft(request)

    # -- results --------------------------------------------------------------------------------------------------

    def finish_batch(self, batch: ScheduledBatch, now_ns: int) -> list[Request]:
        """The batch's tokens exist at now_ns: sampled tokens are appended; returns the requests that finished."""
        members = self._inflight.pop(batch.batch_id, None)
        if members is None:
            raise ValueError(f"batch {batch.batch_id} is not in flight")
        finished: list[Request] = []
        busy = self._busy
        for (request, preemptions), entry in zip(members, batch.entries, strict=True):
            busy.discard(request.request_id)
            if request.num_preemptions != preemptions or not entry.samples_token:
                continue  # preempted while in flight (the work is lost, it recomputes from scratch), or no token
            generated = request.num_generated + 1
            request.num_generated = generated
            request.token_times_ns.append(now_ns)
            if generated >= request.output_tokens:
                request.status = RequestStatus.FINISHED
                request.finish_ns = now_ns
                self.kv.free(request)
                del self.requests[request.request_id]
                # Its token ids served the prefix cache only (the cache keeps hashes, not ids): dropped, so a long run
                # holds ids for the requests in progress, not for every request served so far.
                request.input_token_ids = request.output_token_ids = None
                finished.append(request)
        if finished:  # one pass over the running list, not one list.remove per finished request
            self.running[:] = [r for r in self.running if r.status is not RequestStatus.FINISHED]
        return finished

    @property
    def stats(self) -> SchedulerStats:
        return SchedulerStats(
            preemptions=self._preemptions,
            prefix_query_tokens=self._query_tokens,
            prefix_hit_tokens=self._hit_tokens,
            kv_blocks_in_use=self.kv.pool.num_used_blocks,
            peak_kv_blocks=self._peak_blocks,
            num_gpu_blocks=self.kv.pool.num_gpu_blocks,
        )
