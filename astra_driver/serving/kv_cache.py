"""Paged KV cache with prefix caching, as vLLM v1's block pool and KV cache manager (one attention type).

Mirrors vllm/v1/core/block_pool.py (BlockPool, FreeKVCacheBlockQueue), kv_cache_utils.py (KVCacheBlock,
hash_block_tokens), single_type_kv_cache_manager.py (FullAttentionManager) and kv_cache_manager.py
(KVCacheManager.get_computed_blocks, allocate_slots, free). See docs/serving.md, "KV cache and prefix caching".

- Block 0 is vLLM's null block, never handed out: `num_gpu_blocks - 1` blocks hold KV.
- Free blocks wait in one queue (least recently freed first). Allocation takes from the front; a cached block taken
  from the front loses its hash (that is the LRU eviction of free cached blocks).
- A full block's hash chains its parent's hash and its token ids, so a hit on block i implies hits on 0..i-1.
- Requests without token ids are never cached nor hit (their content is unknown).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from astra_driver.serving.request import Request, RequestStatus
from llm_converter.errors import PipesimError

# The parent hash of a request's first block (vLLM seeds NONE_HASH from PYTHONHASHSEED or os.urandom; a constant
# keeps runs reproducible). Python's hash of a tuple of ints does not depend on PYTHONHASHSEED.
NONE_HASH = 0x5049504553494D  # "PIPESIM"


def hash_block_tokens(parent_hash: int, token_ids: tuple[int, ...]) -> int:
    """The hash of one full block: its parent's hash and its token ids (vLLM's hash_block_tokens, no extra keys)."""
    return hash((parent_hash, token_ids))


@dataclass(eq=False, slots=True)
class KVBlock:
    """One block of `block_size` token slots. `block_hash` is set while its full contents are in the prefix cache."""

    block_id: int
    ref_cnt: int = 0
    block_hash: int | None = None
    is_null: bool = False


class KVBlockPool:
    """All blocks of one instance, the free queue, and the prefix cache (hash -> blocks holding that content)."""

    def __init__(self, num_gpu_blocks: int, enable_caching: bool) -> None:
        if num_gpu_blocks < 2:
            raise PipesimError(
                f"num_gpu_blocks: {num_gpu_blocks} KV blocks leave none for requests (block 0 is reserved); "
                "give more NPU memory, a smaller model share per NPU, or a larger --num-gpu-blocks"
            )
        self.num_gpu_blocks = num_gpu_blocks
        self.enable_caching = enable_caching
        self.null_block = KVBlock(0, is_null=True)
        # vLLM's FreeKVCacheBlockQueue starts as blocks 1..N-1 in id order, and a freed block joins its back, so the
        # never-used blocks always form the front of the queue: they are kept as a counter (block objects are made
        # when first taken; a 75,000-block cache costs nothing up front), the freed ones in an insertion-ordered
        # dict (popitem(last=False) is the front; O(1) removal from the middle, as vLLM's doubly linked list).
        self._next_fresh = 1
        self.free_queue: OrderedDict[int, KVBlock] = OrderedDict()
        # vLLM's BlockHashToBlockMap: two requests may compute the same block at once; both copies are cached and a
        # lookup returns the first one still there. As vLLM does, a hash with one copy maps to the block itself and
        # only duplicates get a dict (block id -> block, insertion ordered): a dict per cached block costs 224 B.
        self.cached: dict[int, KVBlock | dict[int, KVBlock]] = {}
        self.num_evictions = 0

    @property
    def num_usable_blocks(self) -> int:
        return self.num_gpu_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return self.num_gpu_blocks - self._next_fresh + len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        """Blocks some request holds (ref_cnt > 0)."""
        return self.num_usable_blocks - self.num_free_blocks

    def free_block_ids(self) -> list[int]:
        """The free queue, front (next taken) first."""
        return list(range(self._next_fresh, self.num_gpu_blocks)) + list(self.free_queue)

    def get_cached_block(self, block_hash: int) -> KVBlock | None:
        copies = self.cached.get(block_hash)
        if copies is None or type(copies) is KVBlock:
            return copies
        return next(iter(copies.values()))

    def get_new_blocks(self, count: int) -> list[KVBlock]:
        """Take `count` blocks from the front of the free queue, evicting their cached contents."""
        if count > self.num_free_blocks:
            raise ValueError(f"cannot allocate {count} blocks with {self.num_free_blocks} free")
        fresh = min(count, self.num_gpu_blocks - self._next_fresh)
        taken = [KVBlock(i, ref_cnt=1) for i in range(self._next_fresh, self._next_fresh + fresh)]
        self._next_fresh += fresh
        for _ in range(count - fresh):
            block = self.free_queue.popitem(last=False)[1]
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt += 1
            taken.append(block)
        return taken

    def touch(self, blocks: list[KVBlock]) -> None:
        """A request starts using cached blocks: a free one leaves the free queue (no longer evictable)."""
        for block in blocks:
            if block.ref_cnt == 0 and not block.is_null:
                del self.free_queue[block.block_id]
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: list[KVBlock]) -> None:
        """Drop one reference from each block; those no longer used join the back of the free queue in this order
        (cached ones stay findable until a new allocation evicts them)."""
        for block in ordered_blocks:
            block.ref_cnt -= 1
        for block in ordered_blocks:
            if block.ref_cnt == 0 and not block.is_null:
                self.free_queue[block.block_id] = block

    def cache_full_block(self, block: KVBlock, block_hash: int) -> None:
        if block.block_hash is not None:
            return  # already cached (a prefix hit being re-registered)
        block.block_hash = block_hash
        copies = self.cached.get(block_hash)
        if copies is None:
            self.cached[block_hash] = block
        elif type(copies) is KVBlock:
            self.cached[block_hash] = {copies.block_id: copies, block.block_id: block}
        else:
            copies[block.block_id] = block

    def _evict(self, block: KVBlock) -> None:
        assert block.block_hash is not None
        copies = self.cached[block.block_hash]
        if type(copies) is KVBlock:
            del self.cached[block.block_hash]
        else:
            del copies[block.block_id]
            if len(copies) == 1:
                self.cached[block.block_hash] = next(iter(copies.values()))
        block.block_hash = None
        self.num_evictions += 1


class KVCacheManager:
    """Blocks per request over a KVBlockPool: prefix-cache lookup, slot allocation for new tokens, freeing."""

    def __init__(self, num_gpu_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size <= 0:
            raise PipesimError(f"block_size: {block_size} must be a positive number of tokens; vLLM's default is 16")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = KVBlockPool(num_gpu_blocks, enable_caching)
        self.req_to_blocks: dict[int, list[KVBlock]] = {}
        self.num_cached_block: dict[int, int] = {}  # leading blocks of each request already in the prefix cache
        self._hashes: dict[int, list[int]] = {}  # block hashes computed so far per request (grow as tokens do)

    # -- token contents -------------------------------------------------------------------------------------------

    def block_hashes(self, request: Request, num_blocks: int) -> list[int]:
        """Hashes of the request's first `num_blocks` full blocks (fewer when its token ids are not known that far).

        The sequence is the prompt ids followed by the output ids generated so far; a request with a prompt but no
        output ids gets a distinct made-up id per output position, so its own blocks can be found again after a
        preemption but never match another request's (generated text is almost never shared)."""
        if request.input_token_ids is None:
            return []
        hashes = self._hashes.setdefault(request.request_id, [])
        known_tokens = request.num_tokens
        num_blocks = min(num_blocks, known_tokens // self.block_size)
        size = self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else NONE_HASH
            hashes.append(hash_block_tokens(parent, self._token_ids(request, i * size, (i + 1) * size)))
        # Callers only read the result: the list itself when all of it is asked for (the usual case), not a copy.
        return hashes if len(hashes) == num_blocks else hashes[:num_blocks]

    @staticmethod
    def _token_ids(request: Request, start: int, end: int) -> tuple[int, ...]:
        # Ids are array('i') from the workload readers (tuples in some callers): hashed as a tuple of ints either way.
        prompt = request.input_token_ids
        assert prompt is not None
        if end <= len(prompt):
            return tuple(prompt[start:end])
        head = tuple(prompt[start:]) if start < len(prompt) else ()
        first, last = max(start, len(prompt)) - len(prompt), end - len(prompt)  # output positions [first, last)
        known = tuple(request.output_token_ids[first:last]) if request.output_token_ids is not None else ()
        # Made-up ids for outputs the workload does not give: -1 - (request_id << 32 | k), unique per (request, k).
        base = -1 - (request.request_id << 32)
        made_up = tuple(range(base - first - len(known), base - last, -1))
        return head + known + made_up

    # -- vLLM KVCacheManager API ----------------------------------------------------------------------------------

    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """The longest cached prefix of a new request: its blocks and token count.

        At most num_tokens - 1 tokens hit, so the last token is always computed (its logits are needed): a prompt of
        exactly 2 full blocks hits at most 1 (vLLM's max_cache_hit_length)."""
        if not self.enable_caching or request.input_token_ids is None:
            return [], 0
        max_hit_tokens = request.num_tokens - 1
        hits: list[KVBlock] = []
        for block_hash in self.block_hashes(request, max_hit_tokens // self.block_size):
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits, len(hits) * self.block_size

    def num_blocks_to_allocate(
        self, request: Request, num_tokens: int, new_computed_blocks: list[KVBlock] | tuple[KVBlock, ...] = ()
    ) -> int:
        """Free blocks needed to hold `num_tokens` tokens: new blocks plus cached hits that sit in the free queue
        (taking those out of the free queue costs a free block just as much)."""
        held = len(self.req_to_blocks.get(request.request_id, ()))
        required = -(-num_tokens // self.block_size)
        new_blocks = max(required - len(new_computed_blocks) - held, 0)
        evictable_hits = sum(1 for b in new_computed_blocks if b.ref_cnt == 0 and not b.is_null)
        return new_blocks + evictable_hits

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        num_new_computed_tokens: int = 0,
        new_computed_blocks: list[KVBlock] | tuple[KVBlock, ...] = (),
        full_sequence_must_fit: bool = False,
    ) -> list[KVBlock] | None:
        """Make room for `num_new_tokens` more tokens after the request's computed ones (and its new prefix hits).

        Returns the newly allocated blocks, or None (nothing changed) when too few blocks are free. With
        `full_sequence_must_fit` (vLLM's admission gate, scheduler_reserve_full_isl) the whole sequence so far must
        fit, not only this chunk. Full blocks are registered in the prefix cache as soon as they are scheduled, as
        vLLM does."""
        if num_new_tokens <= 0:
            raise ValueError("num_new_tokens must be positive")
        blocks = self.req_to_blocks.get(request.request_id)
        if blocks is not None and not new_computed_blocks and not full_sequence_must_fit:
            held = len(blocks)
            return blocks[held:] if self.grow_slots(request, num_new_tokens) else None
        free = self.pool.num_free_blocks
        if (
            full_sequence_must_fit
            and self.num_blocks_to_allocate(request, request.num_tokens, new_computed_blocks) > free
        ):
            return None
        num_computed = request.num_computed_tokens + num_new_computed_tokens
        num_tokens_need_slot = num_computed + num_new_tokens
        if self.num_blocks_to_allocate(request, num_tokens_need_slot, new_computed_blocks) > free:
            return None
        blocks = self.req_to_blocks.setdefault(request.request_id, [])
        if new_computed_blocks:
            assert not blocks, "prefix hits are only added to a request holding no blocks"
            self.pool.touch(list(new_computed_blocks))
            blocks.extend(new_computed_blocks)
            self.num_cached_block[request.request_id] = len(new_computed_blocks)
        required = -(-num_tokens_need_slot // self.block_size)
        new_blocks = self.pool.get_new_blocks(max(required - len(blocks), 0))
        blocks.extend(new_blocks)
        if self.enable_caching:
            self._cache_blocks(request, min(num_computed + num_new_tokens, request.num_tokens))
        return new_blocks

    def grow_slots(self, request: Request, num_new_tokens: int) -> bool:
        """allocate_slots for a request that holds blocks and has no new prefix hits (a running request's step),
        by a short path since it runs once per running request per step. False (nothing changed) when too few
        blocks are free."""
        size = self.block_size
        blocks = self.req_to_blocks[request.request_id]
        need = request.num_computed_tokens + num_new_tokens
        if need > len(blocks) * size:
            missing = (need + size - 1) // size - len(blocks)
            if missing > self.pool.num_free_blocks:
                return False
            blocks.extend(self.pool.get_new_blocks(missing))
        if self.enable_caching and request.input_token_ids is not None:
            num_tokens = min(need, request.input_tokens + request.num_generated)
            if num_tokens // size > self.num_cached_block.get(request.request_id, 0):
                self._cache_blocks(request, num_tokens)
        return True

    def _cache_blocks(self, request: Request, num_tokens: int) -> None:
        num_cached = self.num_cached_block.get(request.request_id, 0)
        num_full = num_tokens // self.block_size
        if num_cached >= num_full:
            return
        hashes = self.block_hashes(request, num_full)
        blocks = self.req_to_blocks[request.request_id]
        for i in range(num_cached, len(hashes)):
            self.pool.cache_full_block(blocks[i], hashes[i])
        self.num_cached_block[request.request_id] = len(hashes)

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first: the last blocks of a sequence are the least likely to be shared,
        so they are evicted first (vLLM's SingleTypeKVCacheManager.free)."""
        blocks = self.req_to_blocks.pop(request.request_id, [])
        self.pool.free_blocks(list(reversed(blocks)))
        self.num_cached_block.pop(request.request_id, None)
        if request.status is RequestStatus.FINISHED:
            self._hashes.pop(request.request_id, None)

    def num_blocks_of(self, request: Request) -> int:
        return len(self.req_to_blocks.get(request.request_id, ()))
