"""vLLM v1's scheduling policy (astra_driver.serving.scheduler) on small hand-computed runs: running requests first,
FCFS admission, chunked prefill, the token and sequence caps, KV capacity, recompute preemption of the last running
request, prefix hits, the pp in-flight cap, token accounting and the requests that can never run."""

from __future__ import annotations

import random

import pytest

from astra_driver.serving.request import Request, RequestStatus
from astra_driver.serving.scheduler import (
    BatchEntry,
    ScheduledBatch,
    Scheduler,
    SchedulerConfig,
    defaults_for,
)
from astra_driver.serving.workload import load_workload
from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration, PrefillChunk

STEP_NS = 10


def _req(rid: int, prompt: int, output: int, arrival: int = 0, ids: list[int] | None = None) -> Request:
    return Request(rid, arrival, prompt, output, input_token_ids=tuple(ids) if ids is not None else None)


def _run(scheduler: Scheduler, requests: list[Request], step_ns: int = STEP_NS) -> list[ScheduledBatch]:
    """Drive the scheduler like a loop with fixed-length batches: up to pp_size batches in flight, the oldest one
    finishing `step_ns` after it started; arrivals join at the next scheduling point."""
    pending = sorted(requests, key=lambda r: r.arrival_ns)
    batches: list[ScheduledBatch] = []
    inflight: list[tuple[int, ScheduledBatch]] = []
    now = 0
    while pending or scheduler.has_unfinished() or inflight:
        while pending and pending[0].arrival_ns <= now:
            scheduler.add_request(pending.pop(0))
        batch = scheduler.schedule(now)
        if batch is not None:
            batches.append(batch)
            inflight.append((now + step_ns * scheduler.config.pp_size, batch))
            continue
        if inflight:
            done_at, done = inflight.pop(0)
            now = max(now, done_at)
            scheduler.finish_batch(done, now)
        elif pending:
            now = pending[0].arrival_ns
        else:
            raise AssertionError("unfinished requests but nothing scheduled and nothing in flight")
    return batches


def test_entries_and_iteration_view():
    batch = ScheduledBatch(
        3,
        100,
        (
            BatchEntry(1, 1, 40, is_prefill=False, samples_token=True),
            BatchEntry(2, 24, 16, is_prefill=True, samples_token=False),
        ),
    )
    assert batch.num_tokens == 25 and batch.num_seqs == 2
    assert batch.iteration() == Iteration(prefill=(PrefillChunk(24, 16),), decode=(40,))


def test_chunked_prefill_splits_exactly_and_tokens_follow():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8), num_gpu_blocks=64)
    r = _req(0, 150, 3)
    batches = _run(s, [r])
    assert [
        (e.num_new_tokens, e.num_context_tokens, e.is_prefill, e.samples_token) for b in batches for e in b.entries
    ] == [
        (64, 0, True, False),
        (64, 64, True, False),
        (22, 128, True, True),  # last chunk: the first output token comes out when this batch finishes
        (1, 150, False, True),
        (1, 151, False, True),
    ]
    assert r.first_scheduled_ns == 0
    assert r.token_times_ns == [30, 40, 50]
    assert r.num_generated == 3 and r.finish_ns == 50 and r.status is RequestStatus.FINISHED
    assert s.stats.kv_blocks_in_use == 0 and s.stats.peak_kv_blocks == 10  # 152 tokens with KV -> 10 blocks


def test_running_first_then_waiting_fcfs_under_the_budget():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=10, max_num_seqs=8), num_gpu_blocks=64)
    for i in range(3):
        s.add_request(_req(i, 3, 5))
    first = s.schedule(0)
    assert [(e.request_id, e.num_new_tokens) for e in first.entries] == [(0, 3), (1, 3), (2, 3)]
    s.finish_batch(first, 10)
    s.add_request(_req(3, 20, 2))
    s.add_request(_req(4, 20, 2))
    second = s.schedule(10)
    # Three decodes first, then the oldest waiting request gets the 7 tokens left; the next one waits.
    assert [(e.request_id, e.num_new_tokens, e.is_prefill) for e in second.entries] == [
        (0, 1, False),
        (1, 1, False),
        (2, 1, False),
        (3, 7, True),
    ]
    assert s.num_waiting == 1 and s.num_running == 4


def test_max_num_seqs_caps_running_requests():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, max_num_seqs=2), num_gpu_blocks=64)
    for i in range(3):
        s.add_request(_req(i, 10, 2))
    batch = s.schedule(0)
    assert [e.request_id for e in batch.entries] == [0, 1]
    assert s.num_running == 2 and s.num_waiting == 1


def test_long_prefill_token_threshold_caps_each_chunk():
    cfg = SchedulerConfig(max_num_batched_tokens=100, max_num_seqs=4, long_prefill_token_threshold=30)
    s = Scheduler(cfg, num_gpu_blocks=64)
    batches = _run(s, [_req(0, 70, 1)])
    assert [b.entries[0].num_new_tokens for b in batches] == [30, 30, 10]


def test_without_chunked_prefill_a_prompt_over_the_budget_left_waits():
    cfg = SchedulerConfig(max_num_batched_tokens=50, max_num_seqs=4, enable_chunked_prefill=False)
    s = Scheduler(cfg, num_gpu_blocks=64)
    s.add_request(_req(0, 30, 3))
    s.add_request(_req(1, 30, 3))
    batch = s.schedule(0)
    assert [(e.request_id, e.num_new_tokens) for e in batch.entries] == [(0, 30)]  # 30 > 20 left: no split


def test_preemption_takes_the_last_running_request_and_recomputes_it():
    # 5 blocks of 16 = 4 usable. Two 16-token prompts, 40 output tokens each. Decode step k writes KV for 16 + k
    # tokens, so each request holds 2 blocks up to k = 16; at k = 17 request 0 needs a third block and none is
    # free, so request 1 (the last running) is preempted: KV freed, back at the front of the queue, computed 0.
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8), num_gpu_blocks=5)
    a, b = _req(0, 16, 40), _req(1, 16, 40)
    batches = _run(s, [a, b])
    assert s.stats.preemptions == 1
    assert (a.num_preemptions, b.num_preemptions) == (0, 1)
    # Batch 17 (the prefill, then 16 decodes before it) preempts b and schedules a alone.
    preempting = batches[17]
    assert [(e.request_id, e.num_context_tokens) for e in preempting.entries] == [(0, 32)]
    # b comes back only when a finishes (a's growth takes every block), recomputing prompt + 17 generated tokens.
    resumed = next(bt for bt in batches[18:] if any(e.request_id == 1 for e in bt.entries))
    assert [
        (e.request_id, e.num_new_tokens, e.num_context_tokens, e.is_prefill, e.samples_token) for e in resumed.entries
    ] == [(1, 33, 0, True, True)]
    assert resumed.scheduled_ns == a.finish_ns
    assert len(a.token_times_ns) == 40 and len(b.token_times_ns) == 40
    assert b.token_times_ns[:17] == a.token_times_ns[:17]  # generated together until the preemption
    assert b.num_cached_prompt_tokens == 0 and b.finish_ns > a.finish_ns
    assert s.stats.peak_kv_blocks == 4


def test_victim_is_the_latest_admitted_not_the_one_asking():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8), num_gpu_blocks=7)  # 6 usable
    reqs = [_req(i, 16, 40) for i in range(3)]
    batches = _run(s, reqs)
    # At decode step 17 request 0 asks first for a third block and preempts request 2 (the tail), not request 1,
    # which then gets the second freed block in the same step.
    assert [e.request_id for e in batches[16].entries] == [0, 1, 2]
    assert [e.request_id for e in batches[17].entries] == [0, 1]
    assert reqs[2].num_preemptions >= 1 and reqs[0].num_preemptions == 0
    assert all(r.is_finished for r in reqs)


def test_invariants_hold_on_a_random_workload():
    rng = random.Random(5)
    cfg = SchedulerConfig(max_num_batched_tokens=96, max_num_seqs=5, block_size=16, pp_size=2)
    num_gpu_blocks = 30
    s = Scheduler(cfg, num_gpu_blocks=num_gpu_blocks)
    openings = [[rng.randrange(1000) for _ in range(32)] for _ in range(3)]
    reqs = []
    for i in range(40):
        prompt, output, arrival = rng.randint(1, 200), rng.randint(1, 60), rng.randint(0, 2000)
        # Half the requests carry token ids, some starting with one of three shared 32-token openings.
        ids = None
        if i % 2 == 0:
            ids = (rng.choice(openings) + [rng.randrange(1000) for _ in range(prompt)])[:prompt]
        reqs.append(_req(i, prompt, output, arrival, ids))
    batches = _run(s, reqs)
    usable = num_gpu_blocks - 1
    for b in batches:
        assert 0 < b.num_tokens <= cfg.max_num_batched_tokens
        assert b.num_seqs <= cfg.max_num_seqs
        assert len({e.request_id for e in b.entries}) == b.num_seqs
    assert s.stats.peak_kv_blocks <= usable
    for r in reqs:
        assert r.is_finished and r.num_generated == r.output_tokens == len(r.token_times_ns)
        assert r.token_times_ns == sorted(r.token_times_ns)
        assert r.first_scheduled_ns >= r.arrival_ns
    assert s.stats.preemptions > 0  # the cache is small enough to force some
    assert s.stats.prefix_hit_tokens > 0 and s.stats.prefix_hit_tokens % cfg.block_size == 0
    assert s.stats.kv_blocks_in_use == 0 and not s.has_unfinished()


def test_prefix_hits_count_exact_tokens():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=8), num_gpu_blocks=64)
    shared = list(range(100, 140))
    a = _req(0, 50, 2, ids=shared + list(range(10)))
    b = _req(1, 60, 2, ids=shared + list(range(900, 920)))
    s.add_request(a)
    s.finish_batch(s.schedule(0), 10)
    s.add_request(b)
    batch = s.schedule(10)
    entry = next(e for e in batch.entries if e.request_id == 1)
    assert (entry.num_new_tokens, entry.num_context_tokens) == (28, 32)
    assert b.num_cached_prompt_tokens == 32 and a.num_cached_prompt_tokens == 0
    assert (s.stats.prefix_query_tokens, s.stats.prefix_hit_tokens) == (110, 32)
    assert s.stats.prefix_hit_rate == pytest.approx(32 / 110)


def test_no_prefix_caching_flag():
    cfg = SchedulerConfig(max_num_batched_tokens=512, max_num_seqs=8, enable_prefix_caching=False)
    s = Scheduler(cfg, num_gpu_blocks=64)
    ids = list(range(64))
    _run(s, [_req(0, 64, 1, ids=ids), _req(1, 64, 1, arrival=100, ids=ids)])
    assert s.stats.prefix_hit_tokens == 0


def test_pp_in_flight_cap_and_no_rescheduling_of_busy_requests():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, pp_size=2), num_gpu_blocks=64)
    long = _req(0, 150, 2)
    s.add_request(long)
    first = s.schedule(0)
    assert first.entries[0].num_new_tokens == 64
    assert s.schedule(0) is None  # its only request is in flight: the next chunk waits for this one's tokens
    s.add_request(_req(1, 10, 2))
    second = s.schedule(1)
    assert [e.request_id for e in second.entries] == [1]
    assert s.inflight == 2
    s.add_request(_req(2, 10, 2))
    assert s.schedule(2) is None  # inflight == pp_size: back-pressure
    s.finish_batch(first, 20)
    third = s.schedule(20)
    # 86 prompt tokens left: the next chunk takes the whole budget, request 2 keeps waiting.
    assert [(e.request_id, e.num_new_tokens, e.num_context_tokens) for e in third.entries] == [(0, 64, 64)]
    with pytest.raises(ValueError):
        s.finish_batch(first, 30)


def test_pp_run_never_exceeds_pp_size_in_flight():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=32, max_num_seqs=4, pp_size=2), num_gpu_blocks=100)
    seen = []
    original = s.schedule

    def watched(now):
        batch = original(now)
        seen.append(s.inflight)
        return batch

    s.schedule = watched  # type: ignore[method-assign]
    reqs = [_req(i, 40, 8, arrival=5 * i) for i in range(6)]
    _run(s, reqs)
    assert max(seen) == 2 and all(r.is_finished for r in reqs)


def test_output_of_one_token_finishes_at_prefill_end():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4), num_gpu_blocks=16)
    r = _req(0, 20, 1)
    batches = _run(s, [r])
    assert len(batches) == 1 and r.token_times_ns == [10] and r.finish_ns == 10


def test_request_longer_than_the_context_is_refused():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, max_model_len=100), num_gpu_blocks=64)
    r = _req(7, 90, 20)
    r.source = "trace.jsonl:8"
    with pytest.raises(PipesimError, match=r"trace.jsonl:8: request 7: .*110 exceeds .*max_model_len 100"):
        s.add_request(r)
    s.add_request(_req(8, 90, 10))  # exactly the context: accepted


def test_request_that_cannot_fit_the_whole_cache_is_refused():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, block_size=16), num_gpu_blocks=5)
    with pytest.raises(PipesimError, match=r"request 3: needs 5 KV blocks .* holds 4"):
        s.add_request(_req(3, 60, 6))  # 65 tokens with KV -> 5 blocks > 4 usable
    s.add_request(_req(4, 60, 5))  # 64 tokens -> 4 blocks: fits alone


def test_refusals_name_the_dataset_line_and_can_be_checked_up_front(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text(
        '{"input_toks": 10, "output_toks": 5, "arrival_time_ns": 0}\n'
        '{"input_toks": 300, "output_toks": 5, "arrival_time_ns": 9}\n'
    )
    requests = load_workload(path)
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, max_model_len=200), num_gpu_blocks=64)
    s.check_request(requests[0])
    with pytest.raises(PipesimError, match=rf"^{path}:2: request 1: input_toks \+ output_toks = 305 exceeds"):
        s.check_request(requests[1])
    assert s.num_waiting == 0  # checking queues nothing


def test_without_chunked_prefill_a_sequence_over_the_budget_is_refused():
    cfg = SchedulerConfig(max_num_batched_tokens=50, max_num_seqs=4, enable_chunked_prefill=False)
    s = Scheduler(cfg, num_gpu_blocks=64)
    s.add_request(_req(0, 30, 21))  # 50 tokens: a recompute after preemption still fits one step
    with pytest.raises(PipesimError, match=r"request 1: 51 tokens .* chunked prefill is off"):
        s.add_request(_req(1, 30, 22))
    with pytest.raises(PipesimError, match="--max-num-batched-tokens: 50 is below the model's context"):
        SchedulerConfig(max_num_batched_tokens=50, enable_chunked_prefill=False, max_model_len=100)


def test_duplicate_request_id_is_refused():
    s = Scheduler(SchedulerConfig(), num_gpu_blocks=64)
    s.add_request(_req(1, 4, 4))
    with pytest.raises(PipesimError, match="already queued"):
        s.add_request(_req(1, 4, 4))


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_num_batched_tokens", 0), ("max_num_seqs", -1), ("block_size", 0), ("pp_size", 0)],
)
def test_bad_scheduler_config(field, value):
    with pytest.raises(PipesimError, match=field.replace("_", "-")):
        SchedulerConfig(**{field: value})


def test_vllm_019_defaults():
    assert defaults_for(96, "NVIDIA RTX PRO 6000 Blackwell") == (8192, 1024)
    assert defaults_for(80, "NVIDIA A100-SXM4-80GB") == (2048, 256)
    assert defaults_for(24, "NVIDIA GeForce RTX 4090") == (2048, 256)
    assert defaults_for(141, "NVIDIA H200", usage="offline") == (16384, 1024)
    assert defaults_for(24, "", usage="offline") == (8192, 256)
    assert defaults_for(96, "", enable_chunked_prefill=False, max_model_len=512) == (512, 512)


def test_preempted_while_in_flight_its_work_is_discarded_and_it_waits_for_that_batch():
    # pp_size 2, 4 usable blocks of 16. C (32-token prompt) runs in batch 0, A (32 tokens) in batch 1. When batch 0
    # ends, C's first decode needs a third block: A, the tail of the running list, is preempted although batch 1
    # still computes it. Batch 1's result for A is dropped; A cannot come back before batch 1 ends, and then only
    # once C's blocks are free.
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=256, max_num_seqs=8, pp_size=2), num_gpu_blocks=5)
    c, a = _req(0, 32, 3), _req(1, 32, 3)
    s.add_request(c)
    batch0 = s.schedule(0)
    s.add_request(a)
    batch1 = s.schedule(1)
    assert [e.request_id for e in batch1.entries] == [1] and s.inflight == 2
    s.finish_batch(batch0, 10)
    batch2 = s.schedule(10)
    assert [(e.request_id, e.num_context_tokens) for e in batch2.entries] == [(0, 32)]
    assert a.status is RequestStatus.PREEMPTED and a.num_computed_tokens == 0 and s.stats.preemptions == 1
    assert s.schedule(10) is None  # C is in flight; A's batch 1 is still running
    assert s.finish_batch(batch1, 20) == [] and a.num_generated == 0 and a.token_times_ns == []
    assert s.schedule(20) is None  # A needs 2 free blocks, C holds 3 of 4
    s.finish_batch(batch2, 30)
    batch3 = s.schedule(30)
    assert [e.request_id for e in batch3.entries] == [0]
    assert s.finish_batch(batch3, 40) == [c]
    batch4 = s.schedule(40)
    assert [(e.request_id, e.num_new_tokens, e.num_context_tokens) for e in batch4.entries] == [(1, 32, 0)]
    s.finish_batch(batch4, 50)
    assert a.token_times_ns == [50] and a.first_scheduled_ns == 1


def test_admit_transferred_runs_as_a_decode():
    s = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=1), num_gpu_blocks=5)  # 4 usable
    r = _req(0, 40, 3)
    r.num_generated, r.token_times_ns, r.first_scheduled_ns = 1, [7], 0  # the prefill instance made token 1
    assert s.admit_transferred(r)
    assert s.kv.num_blocks_of(r) == 3 and r.num_computed_tokens == 40
    other = _req(1, 10, 3)
    other.num_generated = 1
    assert not s.admit_transferred(other)  # max_num_seqs 1: no seat
    batch = s.schedule(10)
    assert [(e.request_id, e.num_new_tokens, e.num_context_tokens, e.is_prefill) for e in batch.entries] == [
        (0, 1, 40, False)
    ]
    s.finish_batch(batch, 20)
    s.finish_batch(s.schedule(20), 30)
    assert r.is_finished and r.token_times_ns == [7, 20, 30] and s.stats.kv_blocks_in_use == 0
    big = _req(2, 70, 2)
    big.num_generated = 1
    assert not s.admit_transferred(big) and big.num_computed_tokens == 0  # 5 blocks > 4


def _check_kv_consistent(s: Scheduler) -> None:
    """Every held block's ref count is its number of holders; held + free = usable; free blocks hold no refs."""
    holders: dict[int, int] = {}
    blocks = {}
    for held in s.kv.req_to_blocks.values():
        for block in held:
            holders[block.block_id] = holders.get(block.block_id, 0) + 1
            blocks[block.block_id] = block
    assert all(blocks[i].ref_cnt == n for i, n in holders.items())
    assert len(holders) == s.kv.pool.num_used_blocks
    assert set(s.kv.pool.free_block_ids()).isdisjoint(holders)
    assert len(s.kv.pool.free_block_ids()) == s.kv.pool.num_free_blocks
    for request in s.running:
        assert s.kv.num_blocks_of(request) * s.config.block_size >= request.num_computed_tokens


@pytest.mark.parametrize("seed", range(8))  # 600 seeds pass too; 8 keep the suite fast
def test_random_configurations_finish_every_request_consistently(seed):
    rng = random.Random(seed)
    cfg = SchedulerConfig(
        max_num_batched_tokens=rng.choice([16, 48, 128]),
        max_num_seqs=rng.choice([1, 3, 8]),
        block_size=rng.choice([4, 16]),
        enable_chunked_prefill=rng.random() < 0.8,
        enable_prefix_caching=rng.random() < 0.8,
        pp_size=rng.choice([1, 2, 3]),
        long_prefill_token_threshold=rng.choice([0, 0, 20]),
        reserve_full_isl=rng.random() < 0.7,
    )
    s = Scheduler(cfg, num_gpu_blocks=rng.randint(12, 40))
    shared = [rng.randrange(50) for _ in range(40)]
    reqs = []
    for i in range(25):
        prompt = rng.randint(1, 60)
        output = rng.randint(1, 30)
        if not cfg.enable_chunked_prefill:  # prompt + output - 1 must fit one step (refused otherwise)
            prompt = min(prompt, cfg.max_num_batched_tokens)
            output = max(1, min(output, cfg.max_num_batched_tokens + 1 - prompt))
        while -(-(prompt + output - 1) // cfg.block_size) > s.kv.pool.num_usable_blocks:
            output = max(1, output // 2)
            prompt = max(1, prompt // 2)
        ids = (shared[: rng.randint(0, 40)] + [rng.randrange(50) for _ in range(prompt)])[:prompt] if i % 3 else None
        reqs.append(_req(i, prompt, output, arrival=rng.randint(0, 400), ids=ids))
    original = s.schedule

    def checked(now):
        batch = original(now)
        _check_kv_consistent(s)
        if batch is not None:
            assert batch.num_tokens <= cfg.max_num_batched_tokens and batch.num_seqs <= cfg.max_num_seqs
            assert s.inflight <= cfg.pp_size
        return batch

    s.schedule = checked  # type: ignore[method-assign]
    _run(s, reqs)
    for r in reqs:
        assert r.is_finished and len(r.token_times_ns) == r.output_tokens
    assert s.stats.kv_blocks_in_use == 0 and s.stats.peak_kv_blocks <= s.kv.pool.num_usable_blocks


def _batches_and_outcome(seed: int, fast_path: bool) -> tuple[list, list]:
    """A random configuration and workload (shared prefixes, known and unknown output ids, preemptions, pp > 1) run
    to the end: every batch's entries, and each request's tokens, preemptions and cached prompt tokens."""
    rng = random.Random(1000 + seed)
    cfg = SchedulerConfig(
        max_num_batched_tokens=rng.choice([16, 48, 128, 512]),
        max_num_seqs=rng.choice([2, 8, 64]),
        block_size=rng.choice([2, 4, 16]),
        enable_prefix_caching=rng.random() < 0.8,
        pp_size=rng.choice([1, 2, 3]),
        long_prefill_token_threshold=rng.choice([0, 0, 20]),
        reserve_full_isl=rng.random() < 0.7,
    )
    s = Scheduler(cfg, num_gpu_blocks=rng.randint(30, 120))
    s._fast_path = fast_path
    shared = [rng.randrange(20) for _ in range(64)]
    reqs = []
    for i in range(40):
        prompt, output = rng.randint(1, 80), rng.randint(1, 60)
        while -(-(prompt + output - 1) // cfg.block_size) > s.kv.pool.num_usable_blocks:
            prompt, output = max(1, prompt // 2), max(1, output // 2)
        ids = (shared[: rng.randint(0, 64)] + [rng.randrange(20) for _ in range(prompt)])[:prompt] if i % 4 else None
        r = _req(i, prompt, output, arrival=rng.randint(0, 600), ids=ids)
        if ids is not None and i % 3 == 0:
            r.output_token_ids = tuple(rng.randrange(20) for _ in range(output))
        reqs.append(r)
    batches = [(b.batch_id, b.scheduled_ns, b.entries) for b in _run(s, reqs)]
    outcome = [(r.token_times_ns, r.num_preemptions, r.num_cached_prompt_tokens, r.finish_ns) for r in reqs]
    return batches, outcome + [s.stats]


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_gives_the_batches_of_the_full_path(seed):
    # schedule() skips kv.grow_slots when a running request's blocks already hold its new tokens and no block fills;
    # with the shortcut off every step goes through the KV manager: every batch and every outcome must agree.
    fast, full = _batches_and_outcome(seed, True), _batches_and_outcome(seed, False)
    assert fast == full
    assert len(fast[0]) > 40  # a real run, not an empty one
