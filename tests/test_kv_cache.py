"""The paged KV cache and prefix cache (astra_driver.serving.kv_cache) against hand-computed block layouts:
vLLM's null block, hash-chained full blocks, the `num_tokens - 1` hit cap, ref counts, reverse-order freeing and
LRU eviction of free cached blocks."""

from __future__ import annotations

import pytest

from astra_driver.serving.kv_cache import NONE_HASH, KVBlockPool, KVCacheManager, hash_block_tokens
from astra_driver.serving.request import Request, RequestStatus
from llm_converter.errors import PipesimError


def _req(rid: int, ids: list[int] | None, output: int = 4, n: int | None = None) -> Request:
    count = len(ids) if ids is not None else n
    assert count is not None
    return Request(rid, 0, count, output, input_token_ids=tuple(ids) if ids is not None else None)


def _admit(kv: KVCacheManager, request: Request) -> int:
    """Admit like the scheduler: look up the prefix, allocate the rest, mark the tokens computed."""
    hits, num_hit = kv.get_computed_blocks(request)
    assert kv.allocate_slots(request, request.num_tokens - num_hit, num_hit, hits) is not None
    request.num_computed_tokens = request.num_tokens
    return num_hit


def _finish(kv: KVCacheManager, request: Request) -> None:
    request.status = RequestStatus.FINISHED
    kv.free(request)


def test_block_zero_is_the_null_block():
    pool = KVBlockPool(8, enable_caching=True)
    assert pool.num_usable_blocks == 7 and pool.num_free_blocks == 7
    assert [b.block_id for b in pool.get_new_blocks(2)] == [1, 2]
    assert pool.free_block_ids() == [3, 4, 5, 6, 7]
    assert pool.num_used_blocks == 2
    with pytest.raises(ValueError):
        pool.get_new_blocks(6)
    with pytest.raises(PipesimError, match="num_gpu_blocks"):
        KVBlockPool(1, enable_caching=True)


def test_hashes_chain_parent_and_tokens():
    kv = KVCacheManager(10, block_size=4)
    r = _req(0, list(range(10)))
    first = hash_block_tokens(NONE_HASH, (0, 1, 2, 3))
    second = hash_block_tokens(first, (4, 5, 6, 7))
    assert kv.block_hashes(r, 5) == [first, second]  # 10 tokens: two full blocks
    # Same tokens after a different first block: a different hash.
    other = _req(1, [9, 9, 9, 9, 4, 5, 6, 7])
    assert kv.block_hashes(other, 2)[1] != second


def test_two_requests_sharing_40_tokens_hit_32_with_block_16():
    kv = KVCacheManager(20, block_size=16)
    shared = list(range(1000, 1040))
    a = _req(0, shared + list(range(10)))  # 50 tokens: 4 blocks, 3 full ones cached
    b = _req(1, shared + list(range(500, 520)))  # 60 tokens, differs from token 40 on
    assert _admit(kv, a) == 0
    assert kv.num_blocks_of(a) == 4
    assert _admit(kv, b) == 32  # blocks 0 and 1 match; block 2 holds tokens 32..47, which differ after 40
    assert kv.num_blocks_of(b) == 4  # 2 shared + 2 new (60 tokens)
    assert kv.pool.num_used_blocks == 6
    shared_blocks = kv.req_to_blocks[0][:2]
    assert kv.req_to_blocks[1][:2] == shared_blocks
    assert [blk.ref_cnt for blk in shared_blocks] == [2, 2]


def test_a_hit_never_covers_the_whole_prompt():
    kv = KVCacheManager(20, block_size=16)
    a = _req(0, list(range(48)))
    _admit(kv, a)
    same = _req(1, list(range(48)))  # the same 3 full blocks: at most 47 tokens may hit, i.e. 2 blocks
    assert kv.get_computed_blocks(same)[1] == 32
    longer = _req(2, list(range(48)) + [7])
    assert kv.get_computed_blocks(longer)[1] == 48


def test_freeing_tail_first_and_lru_eviction_order():
    kv = KVCacheManager(5, block_size=16)  # 4 usable blocks: ids 1..4
    a = _req(0, list(range(48)))
    _admit(kv, a)
    assert [b.block_id for b in kv.req_to_blocks[0]] == [1, 2, 3]
    _finish(kv, a)
    # Free queue: the untouched block 4, then a's blocks tail first (3, 2, 1).
    assert kv.pool.free_block_ids() == [4, 3, 2, 1]
    assert kv.pool.num_used_blocks == 0
    d = _req(1, list(range(2000, 2032)))  # takes blocks 4 and 3: a's last block is evicted
    _admit(kv, d)
    assert [b.block_id for b in kv.req_to_blocks[1]] == [4, 3]
    assert kv.pool.num_evictions == 1
    again = _req(2, list(range(48)) + [1])
    assert kv.get_computed_blocks(again)[1] == 32  # blocks 1 and 2 still cached
    e = _req(3, list(range(3000, 3016)))  # takes block 2
    _admit(kv, e)
    assert kv.get_computed_blocks(again)[1] == 16


def test_hit_on_a_free_cached_block_costs_a_free_block():
    kv = KVCacheManager(4, block_size=16)  # 3 usable
    a = _req(0, list(range(33)))  # 3 blocks: all of them
    _admit(kv, a)
    _finish(kv, a)
    b = _req(1, list(range(32)) + [99, 98])  # hits 2 blocks sitting in the free queue
    hits, num_hit = kv.get_computed_blocks(b)
    assert num_hit == 32
    assert kv.num_blocks_to_allocate(b, b.num_tokens, hits) == 3  # 1 new + 2 evictable hits
    assert kv.allocate_slots(b, 2, num_hit, hits) is not None
    assert kv.pool.num_free_blocks == 0
    assert [blk.ref_cnt for blk in kv.req_to_blocks[1]] == [1, 1, 1]


def test_allocation_failure_changes_nothing():
    kv = KVCacheManager(3, block_size=16)  # 2 usable
    a = _req(0, None, n=40)  # 3 blocks needed
    assert kv.allocate_slots(a, 40) is None
    assert kv.pool.num_free_blocks == 2 and kv.num_blocks_of(a) == 0
    assert kv.allocate_slots(a, 32) is not None
    assert kv.pool.num_free_blocks == 0


def test_full_sequence_gate():
    kv = KVCacheManager(4, block_size=16)  # 3 usable
    r = _req(0, None, n=64)
    assert kv.allocate_slots(r, 16, full_sequence_must_fit=True) is None  # 64 tokens need 4 blocks
    assert kv.allocate_slots(r, 16) is not None


def test_decode_slots_grow_one_block_at_a_time():
    kv = KVCacheManager(10, block_size=16)
    r = _req(0, None, n=16, output=40)
    assert len(kv.allocate_slots(r, 16)) == 1
    r.num_computed_tokens = 16
    r.num_generated = 1  # the first output token exists; its KV is written by the next step
    assert len(kv.allocate_slots(r, 1)) == 1  # token 17 opens block 2
    r.num_computed_tokens = 17
    r.num_generated = 2
    assert kv.allocate_slots(r, 1) == []


def test_requests_without_token_ids_never_hit_nor_cache():
    kv = KVCacheManager(10, block_size=16)
    a = _req(0, None, n=64)
    _admit(kv, a)
    assert kv.pool.cached == {}
    assert kv.get_computed_blocks(_req(1, None, n=64)) == ([], 0)


def test_prefix_caching_off():
    kv = KVCacheManager(10, block_size=16, enable_caching=False)
    a = _req(0, list(range(64)))
    _admit(kv, a)
    assert kv.pool.cached == {}
    assert kv.get_computed_blocks(_req(1, list(range(64)) + [5]))[1] == 0


def test_own_blocks_found_again_after_preemption_including_generated_tokens():
    kv = KVCacheManager(10, block_size=4)
    r = _req(0, [1, 2, 3, 4, 5, 6], output=10)
    kv.allocate_slots(r, 6)
    r.num_computed_tokens = 6
    for _ in range(4):  # four decodes: the sequence reaches 10 tokens, 9 with KV
        r.num_generated += 1
        kv.allocate_slots(r, 1)
        r.num_computed_tokens += 1
    r.num_generated += 1
    assert r.num_tokens == 11 and r.num_computed_tokens == 10
    r.status = RequestStatus.PREEMPTED
    kv.free(r)
    r.num_computed_tokens = 0
    # Two full blocks (8 tokens: 6 prompt + 2 made-up output ids) come back from the cache.
    assert kv.get_computed_blocks(r)[1] == 8


def test_two_copies_of_a_block_stay_findable_until_both_are_evicted():
    # vLLM's BlockHashToBlockMap: the first copy still cached answers a lookup; evicting it leaves the other.
    pool = KVBlockPool(5, enable_caching=True)
    a, b, c = pool.get_new_blocks(3)
    pool.cache_full_block(a, 7)
    pool.cache_full_block(b, 7)
    pool.cache_full_block(c, 8)
    assert pool.get_cached_block(7) is a and pool.get_cached_block(8) is c
    pool.free_blocks([a, b, c])  # free queue: the never-used block 4, then a, b, c
    assert pool.get_new_blocks(2)[1] is a and a.block_hash is None and pool.get_cached_block(7) is b
    assert pool.get_new_blocks(1) == [b] and pool.get_cached_block(7) is None
    assert pool.get_cached_block(8) is c and list(pool.cached) == [8] and pool.num_evictions == 2
