"""Per-layer work of one serving iteration on one tensor-parallel rank: FLOPs, memory bytes, parameters.

Layers follow vLLM's module boundaries (the ones LLMServingSim profiles), so a LayerOp can be timed either
by the roofline or by a measured profile bundle. Shapes are sharded the Megatron way: qkv/gate_up
column-parallel, o_proj/down_proj row-parallel (their outputs need a TP all-reduce), attention heads split
across ranks (KV heads replicated when there are fewer of them than ranks), vocab-parallel lm_head, norms
and the MoE router replicated. MoE experts are TP-sharded along their intermediate dimension (vLLM's
FusedMoE without expert parallelism).

Elementwise layers (norms, rotary, activation, sampler) carry nominal FLOP counts (documented below);
they are memory-bound, so their bytes are what matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration
from llm_converter.models import ModelSpec, dtype_bytes

BLOCK_LAYERS = (
    "input_layernorm",
    "qkv_proj",
    "rotary_emb",
    "attention",
    "o_proj",
    "post_attention_layernorm",
    "gate_up_proj",
    "act_fn",
    "down_proj",
)
PRE_LAYERS = ("embedding",)
POST_LAYERS = ("final_layernorm", "lm_head", "sampler")

# Per-architecture block variants. Qwen3 normalises q and k per head after the projection; GPT-2 has
# learned positions (no rotary) and an ungated MLP; MoE blocks route tokens (moe_gate) to experts that
# replace the gate_up_proj/act_fn/down_proj trio (the experts op covers all three and ends in the all-reduce).
QK_NORM_BLOCK_LAYERS = BLOCK_LAYERS[:2] + ("qk_norm",) + BLOCK_LAYERS[2:]
GPT2_BLOCK_LAYERS = (
    "input_layernorm",
    "qkv_proj",
    "attention",
    "o_proj",
    "post_attention_layernorm",
    "up_proj",
    "act_fn",
    "down_proj",
)
MOE_MLP_LAYERS = ("moe_gate", "experts")

# Layers whose output is a partial sum across TP ranks (all-reduced when tp > 1).
TP_ALL_REDUCE_LAYERS = frozenset({"o_proj", "down_proj", "experts"})
# vLLM under TP also all-reduces the vocab-parallel embedding's output (VocabParallelEmbedding: each rank looks up
# only its vocab shard, zeros elsewhere) and all-gathers lm_head's vocab-sharded logits before the sampler
# (LogitsProcessor._gather_logits, all-gather in the v1 engine).
TP_EMBEDDING_ALL_REDUCE = "embedding"
TP_ALL_GATHER_LAYERS = frozenset({"lm_head"})

# Op classes: the roofline gives each its own efficiencies and per-call overhead, because they run different
# kernels. gemm: cuBLAS matmuls that stream weights (compute-bound at large T); attention: FlashAttention plus
# the KV-cache write (several kernels, reads the KV cache); elementwise: one fused memory-bound kernel over
# activations the previous layer just wrote (norms, rotary, activation, embedding gather); sampler: a chain
# of small kernels over the float32 logits.
OP_CLASSES = ("gemm", "attention", "elementwise", "sampler")
LAYER_OP_CLASS: dict[str, str] = {
    **dict.fromkeys(
        ("qkv_proj", "o_proj", "gate_up_proj", "up_proj", "down_proj", "lm_head", "moe_gate", "experts"), "gemm"
    ),
    "attention": "attention",
    **dict.fromkeys(
        (
            "embedding",
            "input_layernorm",
            "post_attention_layernorm",
            "final_layernorm",
            "qk_norm",
            "rotary_emb",
            "act_fn",
        ),
        "elementwise",
    ),
    "sampler": "sampler",
    # Training only (llm_converter/training_ops.py): the vocab-parallel cross-entropy over the logits and the
    # Adam update, both memory-bound passes over large buffers.
    "cross_entropy": "elementwise",
    "optimizer_step": "elementwise",
}


def op_class(name: str) -> str:
    """The op class ("gemm", "attention", "elementwise" or "sampler") of layer `name`."""
    cls = LAYER_OP_CLASS.get(name)
    if cls is None:
        raise PipesimError(f"unknown layer {name!r}: no op class (known: {', '.join(sorted(LAYER_OP_CLASS))})")
    return cls


# Nominal FLOPs per element of the elementwise layers.
RMSNORM_FLOPS = 4  # square, accumulate, scale by rsqrt, multiply by weight
LAYERNORM_FLOPS = 5  # plus the mean subtraction
ROTARY_FLOPS = 3  # x*cos + rotate(x)*sin: two multiplies and an add
SILU_AND_MUL_FLOPS = 5  # sigmoid (~3), multiply by x, multiply by up
GELU_FLOPS = 8  # tanh approximation
SAMPLER_FLOPS = 5  # per vocab entry: softmax (max, exp, sum, divide) and the pick
LOGITS_BYTES = 4  # vLLM samples from float32 logits


@dataclass(frozen=True, slots=True)
class LayerOp:
    name: str
    scope: str  # "pre" | "block" | "post"
    tokens: int  # rows the layer processes (tokens, or sequences for lm_head/sampler)
    flops: int  # per TP rank
    bytes: int  # memory traffic per TP rank: weights + activations in/out + KV read/write
    params: int  # parameters per TP rank
    tp_all_reduce: bool  # output is all-reduced across the TP group (o_proj, down_proj, experts; tp > 1)
    tp_comm_bytes: int = 0  # size of that all-reduce (tokens x hidden x dtype bytes), 0 when none
    tile_flops: int = 0  # FLOPs the kernel executes, padding included (attention); 0: the same as flops
    ctas: int = 0  # thread blocks of the kernel's grid (attention; the roofline's SM occupancy); 0: fills the GPU
    # lm_head with tp > 1: bytes of this rank's logits shard (sequences x vocab/tp x dtype), all-gathered across
    # the TP group; 0 when none
    tp_gather_bytes: int = 0


def block_layer_names(model: ModelSpec) -> tuple[str, ...]:
    """The layers of one decoder block of `model`, in execution order."""
    if model.position_embedding == "learned":
        names = GPT2_BLOCK_LAYERS
    elif model.qk_norm:
        names = QK_NORM_BLOCK_LAYERS
    else:
        names = BLOCK_LAYERS
    if model.is_moe:
        mlp_start = names.index("post_attention_layernorm") + 1
        names = names[:mlp_start] + MOE_MLP_LAYERS
    return names


@dataclass(frozen=True, slots=True)
class _Shard:
    """Per-rank dimensions and parameter counts of one (model, tp, dtype); computed once and cached."""

    b: int  # dtype bytes
    h: int
    q: int  # query width per rank (heads/tp * head_dim)
    kv: int  # K (or V) width per rank
    heads: int  # query heads per rank
    kv_heads: int
    head_dim: int
    inter: int  # dense MLP intermediate per rank (gate or up half)
    expert_inter: int  # MoE expert intermediate per rank
    vocab: int  # vocab rows per rank (vocab-parallel, padded up)
    full_vocab: int
    norm_flops: int
    norm_params: int
    embedding_params: int
    qkv_params: int
    qk_norm_params: int
    o_params: int
    up_params: int  # gate_up_proj or up_proj
    down_params: int
    router_params: int
    expert_params: int  # all experts' weights on this rank
    expert_weight_bytes: int  # one expert's weights on this rank
    lm_head_params: int  # 0 when tied to the embedding (the weight is counted there)
    lm_head_weight_bytes: int
    learned_positions: bool
    gated: bool
    num_experts: int
    top_k: int
    tp: int


@lru_cache(maxsize=256)
def _shard(model: ModelSpec, tp: int, dtype: str) -> _Shard:
    b = dtype_bytes(dtype)
    if tp < 1:
        raise PipesimError(f"tp must be >= 1 (got {tp}); set tp_size to a positive integer")
    where = f"model {model.name} with tp={tp}"
    if model.num_attention_heads % tp:
        raise PipesimError(
            f"{where}: num_attention_heads ({model.num_attention_heads}) is not divisible by tp; choose a tp "
            f"that divides it"
        )
    if model.num_kv_heads >= tp and model.num_kv_heads % tp or model.num_kv_heads < tp and tp % model.num_kv_heads:
        raise PipesimError(f"{where}: num_kv_heads ({model.num_kv_heads}) and tp must divide one another")
    mlp_width = model.expert_intermediate_size if model.is_moe else model.intermediate_size
    if mlp_width % tp:
        raise PipesimError(f"{where}: MLP intermediate size ({mlp_width}) is not divisible by tp; change tp")
    h = model.hidden_size
    heads = model.num_attention_heads // tp
    kv_heads = max(1, model.num_kv_heads // tp)  # fewer KV heads than ranks: each rank keeps a replica
    q = heads * model.head_dim
    kv = kv_heads * model.head_dim
    inter = model.intermediate_size // tp
    expert_inter = model.expert_intermediate_size // tp if model.is_moe else 0
    vocab = -(-model.vocab_size // tp)
    bias = model.attention_bias
    up_width = 2 * inter if model.gated_mlp else inter
    embedding_params = vocab * h + (model.max_position_embeddings * h if model.position_embedding == "learned" else 0)
    lm_head_weight = vocab * h + (vocab if model.lm_head_bias else 0)
    return _Shard(
        b=b,
        h=h,
        q=q,
        kv=kv,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=model.head_dim,
        inter=inter,
        expert_inter=expert_inter,
        vocab=vocab,
        full_vocab=model.vocab_size,
        norm_flops=LAYERNORM_FLOPS if model.norm == "layernorm" else RMSNORM_FLOPS,
        norm_params=model.norm_params(),
        embedding_params=embedding_params,
        qkv_params=h * (q + 2 * kv) + ((q + 2 * kv) if bias else 0),
        qk_norm_params=2 * model.head_dim if model.qk_norm else 0,
        o_params=q * h + (h if bias else 0),
        up_params=h * up_width + (up_width if model.mlp_bias else 0),
        down_params=inter * h + (h if model.mlp_bias else 0),
        router_params=h * model.num_experts,
        expert_params=model.num_experts * 3 * h * expert_inter,
        expert_weight_bytes=3 * h * expert_inter * b,
        lm_head_params=0 if model.tie_word_embeddings else lm_head_weight,
        lm_head_weight_bytes=lm_head_weight * b,
        learned_positions=model.position_embedding == "learned",
        gated=model.gated_mlp,
        num_experts=model.num_experts,
        top_k=model.experts_per_token,
        tp=tp,
    )


def attention_pairs(iteration: Iteration) -> int:
    """(query, key) pairs the attention scores: causal within each prefill chunk, plus all cached context;
    each decode token attends to its `kv` cached tokens and itself."""
    pairs = 0
    for chunk in iteration.prefill:
        pairs += chunk.tokens * chunk.context + chunk.tokens * (chunk.tokens + 1) // 2
    for kv in iteration.decode:
        pairs += kv + 1
    return pairs


# FlashAttention-2 tiles. vLLM passes a paged KV cache (block table), which always runs FA2's split-KV
# kernel: kBlockM = 64 query rows per thread block, kBlockN = 128 keys per KV tile (head_dim <= 128).
QUERY_TILE = 64
KV_TILE = 128


@dataclass(frozen=True, slots=True)
class AttentionWork:
    """What one FlashAttention call does for a batch, per TP rank (see attention_work)."""

    pairs: int  # useful (query, key) pairs per query head
    tile_pairs: int  # (query row, key) pairs per query head the kernel computes, query tiles padded
    kv_reads: int  # KV rows read from device memory, per KV head
    ctas: int  # thread blocks of the grid


def attention_work(iteration: Iteration, heads: int, kv_heads: int) -> AttentionWork:
    """The tiles of vLLM's FlashAttention-2 call (one varlen call for the whole batch):

    - a prefill chunk of c tokens after k cached: ceil(c/64) query tiles per query head, tile i scoring
      k + min(64(i+1), c) keys (causal, at 64-row granularity); one thread block per (tile, query head);
    - decode-only batch (max query length 1): vLLM/FA2 packs the g = heads/kv_heads query heads sharing a KV
      head into one tile's rows (ceil(g/64) tiles per KV head) and splits the KV into up to one block per
      128-key tile to fill the GPU; the KV is read once per KV head;
    - a decode in a mixed batch: a 64-row tile holding one query, per query head (no packing, no split); the
      g heads of a group read the same KV, served once from device memory (their blocks run together and
      share it through L2; at very large batches they do not, see docs/models_and_latency.md).
    """
    pairs = 0
    tile_pairs = 0
    kv_reads = 0
    ctas = 0
    for chunk in iteration.prefill:
        c, k = chunk.tokens, chunk.context
        tiles = -(-c // QUERY_TILE)
        pairs += c * k + c * (c + 1) // 2
        # sum over tiles i < t of (k + min(64(i+1), c)) rows of 64: the last tile stops at c.
        tile_pairs += QUERY_TILE * (tiles * k + QUERY_TILE * tiles * (tiles - 1) // 2 + c)
        kv_reads += k + c
        ctas += heads * tiles
    n = len(iteration.decode)
    if n:
        decode_kv = sum(iteration.decode) + n  # each decode attends its cache and itself
        pairs += decode_kv
        group = heads // kv_heads
        if iteration.prefill:
            tile_pairs += QUERY_TILE * decode_kv
            kv_reads += decode_kv  # the group's heads run at once and share each KV tile through L2
            ctas += heads * n
        else:
            packed_tiles = -(-group // QUERY_TILE)
            tile_pairs += QUERY_TILE * packed_tiles * decode_kv // group  # per query head
            kv_reads += decode_kv
            ctas += kv_heads * packed_tiles * max(n, -(-decode_kv // KV_TILE))  # >= one split per decode
    return AttentionWork(pairs, tile_pairs, kv_reads, ctas)


def expected_active_experts(num_experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts hit when `tokens` tokens each pick `top_k` of `num_experts` uniformly at random."""
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def _norm(name: str, scope: str, s: _Shard, tokens: int) -> LayerOp:
    # vLLM fuses the residual add into the norm: reads x and residual, writes both.
    elems = tokens * s.h
    return LayerOp(name, scope, tokens, s.norm_flops * elems, (4 * elems + s.norm_params) * s.b, s.norm_params, False)


def _linear(name: str, s: _Shard, tokens: int, d_in: int, d_out: int, params: int) -> LayerOp:
    reduce = name in TP_ALL_REDUCE_LAYERS and s.tp > 1
    return LayerOp(
        name,
        "block",
        tokens,
        2 * tokens * d_in * d_out + (params - d_in * d_out) * tokens,  # bias adds, if any
        (params + tokens * (d_in + d_out)) * s.b,
        params,
        reduce,
        tokens * s.h * s.b if reduce else 0,
    )


def _block_op(name: str, s: _Shard, iteration: Iteration, tokens: int) -> LayerOp:
    b = s.b
    if name in ("input_layernorm", "post_attention_layernorm"):
        return _norm(name, "block", s, tokens)
    if name == "qkv_proj":
        return _linear(name, s, tokens, s.h, s.q + 2 * s.kv, s.qkv_params)
    if name == "qk_norm":
        elems = tokens * (s.heads + s.kv_heads) * s.head_dim
        return LayerOp(
            name, "block", tokens, RMSNORM_FLOPS * elems, (2 * elems + s.qk_norm_params) * b, s.qk_norm_params, False
        )
    if name == "rotary_emb":
        elems = tokens * (s.heads + s.kv_heads) * s.head_dim
        # Rotates q and k in place; reads one cos/sin row (head_dim values) per token.
        return LayerOp(name, "block", tokens, ROTARY_FLOPS * elems, (2 * elems + tokens * s.head_dim) * b, 0, False)
    if name == "attention":
        work = attention_work(iteration, s.heads, s.kv_heads)
        per_pair = 4 * s.heads * s.head_dim  # QK^T and PV, 2 FLOPs per MAC each, over all query heads
        kv_row = 2 * s.kv * b  # K and V of one token on this rank
        bytes_ = 2 * tokens * s.q * b + tokens * kv_row + work.kv_reads * kv_row
        return LayerOp(
            name,
            "block",
            tokens,
            per_pair * work.pairs,
            bytes_,
            0,
            False,
            tile_flops=per_pair * work.tile_pairs,
            ctas=work.ctas,
        )
    if name == "o_proj":
        return _linear(name, s, tokens, s.q, s.h, s.o_params)
    if name == "gate_up_proj" or name == "up_proj":
        return _linear(name, s, tokens, s.h, 2 * s.inter if s.gated else s.inter, s.up_params)
    if name == "act_fn":
        if s.gated:
            return LayerOp(
                name, "block", tokens, SILU_AND_MUL_FLOPS * tokens * s.inter, 3 * tokens * s.inter * b, 0, False
            )
        return LayerOp(name, "block", tokens, GELU_FLOPS * tokens * s.inter, 2 * tokens * s.inter * b, 0, False)
    if name == "down_proj":
        return _linear(name, s, tokens, s.inter, s.h, s.down_params)
    if name == "moe_gate":
        e = s.num_experts
        return LayerOp(
            name,
            "block",
            tokens,
            2 * tokens * s.h * e,
            (s.router_params + tokens * (s.h + e)) * b,
            s.router_params,
            False,
        )
    if name == "experts":
        routed = tokens * s.top_k
        i = s.expert_inter
        flops = routed * (6 * s.h * i + SILU_AND_MUL_FLOPS * i)  # gate_up (4hi) + down (2hi) per routed token
        active = expected_active_experts(s.num_experts, s.top_k, tokens)
        # Weights of the experts actually hit, token rows in/out, and the fused kernel's intermediate
        # (gate_up output 2i written and read, activation output i written and read) per routed token.
        bytes_ = round(active * s.expert_weight_bytes) + (2 * tokens * s.h + 6 * routed * i) * b
        reduce = s.tp > 1
        return LayerOp(name, "block", tokens, flops, bytes_, s.expert_params, reduce, tokens * s.h * b if reduce else 0)
    raise PipesimError(f"unknown block layer {name!r}")  # unreachable with block_layer_names


def iteration_ops(
    model: ModelSpec, iteration: Iteration, tp: int, dtype: str
) -> tuple[list[LayerOp], list[LayerOp], list[LayerOp]]:
    """(pre layers, ONE decoder block's layers, post layers) of `iteration` on one TP rank.

    Every block of the model does the same work, so callers replicate the block list.
    """
    s = _shard(model, tp, dtype)
    b = s.b
    tokens = iteration.tokens
    sequences = iteration.sequences

    # Embedding: gather `tokens` rows (plus position rows and an add for learned positions), write them.
    emb_rows = 2 if s.learned_positions else 1
    pre = [
        LayerOp(
            "embedding",
            "pre",
            tokens,
            tokens * s.h if s.learned_positions else 0,
            (emb_rows + 1) * tokens * s.h * b,
            s.embedding_params,
            s.tp > 1,  # TP_EMBEDDING_ALL_REDUCE
            tokens * s.h * b if s.tp > 1 else 0,
        )
    ]
    block = [_block_op(name, s, iteration, tokens) for name in block_layer_names(model)]
    # vLLM normalises every token, then computes logits only for each sequence's last token.
    post = [
        _norm("final_layernorm", "post", s, tokens),
        LayerOp(
            "lm_head",
            "post",
            sequences,
            2 * sequences * s.h * s.vocab,
            s.lm_head_weight_bytes + sequences * (s.h + s.vocab) * b,
            s.lm_head_params,
            False,
            tp_gather_bytes=sequences * s.vocab * b if s.tp > 1 else 0,  # TP_ALL_GATHER_LAYERS
        ),
        # The sampler sees the gathered full-vocab float32 logits: read them, write the probabilities.
        LayerOp(
            "sampler",
            "post",
            sequences,
            SAMPLER_FLOPS * sequences * s.full_vocab,
            2 * sequences * s.full_vocab * LOGITS_BYTES,
            0,
            False,
        ),
    ]
    return pre, block, post


def gemm_dims(model: ModelSpec, name: str, tp: int, dtype: str) -> tuple[int, int]:
    """(d_in, d_out) on one TP rank of a GEMM layer (block projections, moe_gate, lm_head; experts: one expert's
    gate_up). Training sizes its output tiles from them (training_ops)."""
    s = _shard(model, tp, dtype)
    dims = {
        "qkv_proj": (s.h, s.q + 2 * s.kv),
        "o_proj": (s.q, s.h),
        "gate_up_proj": (s.h, 2 * s.inter),
        "up_proj": (s.h, s.inter),
        "down_proj": (s.inter, s.h),
        "moe_gate": (s.h, s.num_experts),
        "experts": (s.h, 2 * s.expert_inter),
        "lm_head": (s.h, s.vocab),
    }
    if name not in dims:
        raise PipesimError(f"gemm_dims: {name!r} is not a GEMM layer (known: {', '.join(dims)})")
    return dims[name]
