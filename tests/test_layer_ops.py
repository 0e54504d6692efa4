"""Per-layer FLOPs / bytes / params against hand-computed closed forms."""

from __future__ import annotations

import pytest

from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.layer_ops import (
    BLOCK_LAYERS,
    OP_CLASSES,
    POST_LAYERS,
    PRE_LAYERS,
    attention_pairs,
    attention_work,
    block_layer_names,
    expected_active_experts,
    iteration_ops,
    op_class,
)
from llm_converter.models import get_model, list_models

LLAMA = get_model("Llama-3.1-8B")
MIXED = Iteration(prefill=(PrefillChunk(100, 20), PrefillChunk(7)), decode=(5, 300, 1000))


def by_name(ops):
    return {op.name: op for op in ops}


def test_layer_lists_per_architecture() -> None:
    assert block_layer_names(LLAMA) == BLOCK_LAYERS
    assert "qk_norm" in block_layer_names(get_model("Qwen3-32B"))
    gpt2 = block_layer_names(get_model("gpt2"))
    assert "rotary_emb" not in gpt2 and "up_proj" in gpt2 and "gate_up_proj" not in gpt2
    moe = block_layer_names(get_model("Mixtral-8x7B"))
    assert moe[-2:] == ("moe_gate", "experts") and "down_proj" not in moe
    pre, block, post = iteration_ops(LLAMA, MIXED, 1, "bfloat16")
    assert tuple(o.name for o in pre) == PRE_LAYERS and tuple(o.name for o in post) == POST_LAYERS
    assert {o.scope for o in pre} == {"pre"} and {o.scope for o in block} == {"block"}


@pytest.mark.parametrize("name", ["Llama-3.1-8B", "Qwen3-32B", "gpt2", "Mixtral-8x7B", "Llama-3.1-405B"])
def test_params_sum_to_model_total(name: str) -> None:
    model = get_model(name)
    pre, block, post = iteration_ops(model, MIXED, 1, "bfloat16")
    assert sum(o.params for o in pre + post) + model.num_layers * sum(o.params for o in block) == model.total_params()


def test_llama_tp1_closed_forms() -> None:
    pre, block, post = iteration_ops(LLAMA, MIXED, 1, "bfloat16")
    ops = by_name(pre + block + post)
    t, s, h = 110, 5, 4096  # tokens = 100 + 7 + 3 decodes; sequences = 2 prefills + 3 decodes
    assert ops["qkv_proj"].tokens == t and ops["lm_head"].tokens == s
    assert ops["qkv_proj"].flops == 2 * t * h * 6144
    assert ops["qkv_proj"].bytes == (h * 6144 + t * (h + 6144)) * 2
    assert ops["o_proj"].flops == 2 * t * h * h
    assert ops["gate_up_proj"].flops == 2 * t * h * 2 * 14336
    assert ops["down_proj"].params == 14336 * h
    assert ops["down_proj"].bytes == (14336 * h + t * (14336 + h)) * 2
    assert ops["act_fn"].bytes == 3 * t * 14336 * 2
    assert ops["input_layernorm"].bytes == (4 * t * h + h) * 2
    assert ops["rotary_emb"].bytes == (2 * t * 40 * 128 + t * 128) * 2
    assert ops["embedding"].bytes == 2 * t * h * 2 and ops["embedding"].flops == 0
    assert ops["lm_head"].flops == 2 * s * h * 128256
    assert ops["lm_head"].bytes == (128256 * h + s * (h + 128256)) * 2
    assert ops["sampler"].bytes == 2 * s * 128256 * 4
    assert not any(o.tp_all_reduce for o in pre + block + post)
    assert all(o.tp_comm_bytes == 0 for o in block)


def test_attention_flops_and_bytes() -> None:
    # Causal pairs: chunk 100 after 20 cached: 100*20 + 100*101/2; chunk 7 fresh: 7*8/2; decodes kv+1 each.
    pairs = 100 * 20 + 5050 + 28 + 6 + 301 + 1001
    assert attention_pairs(MIXED) == pairs
    _, block, _ = iteration_ops(LLAMA, MIXED, 1, "bfloat16")
    attn = by_name(block)["attention"]
    assert attn.flops == 4 * 32 * 128 * pairs
    kv_row = 2 * 8 * 128 * 2
    attended = 120 + 7 + (5 + 300 + 1000 + 3)
    assert attn.bytes == 2 * 110 * 4096 * 2 + 110 * kv_row + attended * kv_row
    # Decode-only batch: bytes dominated by reading the KV cache: kv_bytes_per_token / layers per token.
    decode = Iteration(decode=(4095,))
    _, block, _ = iteration_ops(LLAMA, decode, 1, "bfloat16")
    attn = by_name(block)["attention"]
    assert attn.bytes == 2 * 4096 * 2 + kv_row + 4096 * LLAMA.kv_bytes_per_token("bfloat16") // 32


def test_tp_sharding() -> None:
    ops1 = by_name(sum(iteration_ops(LLAMA, MIXED, 1, "bfloat16"), []))
    ops4 = by_name(sum(iteration_ops(LLAMA, MIXED, 4, "bfloat16"), []))
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "attention", "act_fn", "lm_head"):
        assert ops4[name].flops * 4 == ops1[name].flops, name
    assert ops4["qkv_proj"].params * 4 == ops1["qkv_proj"].params
    assert ops4["input_layernorm"].params == ops1["input_layernorm"].params  # replicated
    assert ops4["sampler"].flops == ops1["sampler"].flops  # samples the gathered full vocab
    reducers = {o.name for o in ops4.values() if o.tp_all_reduce}
    assert reducers == {"o_proj", "down_proj", "embedding"}  # VocabParallelEmbedding all-reduces under TP
    assert ops4["o_proj"].tp_comm_bytes == 110 * 4096 * 2
    assert ops4["embedding"].tp_comm_bytes == 110 * 4096 * 2
    # lm_head's logits (5 sequences x 128256 / 4 vocab rows per rank) are all-gathered before the sampler.
    assert ops4["lm_head"].tp_gather_bytes == 5 * 32064 * 2 and ops1["lm_head"].tp_gather_bytes == 0
    # 8 KV heads over tp=16: each rank keeps one replicated KV head (32 query heads -> 2 per rank).
    _, block, _ = iteration_ops(LLAMA, Iteration(decode=(99,)), 16, "bfloat16")
    qkv = by_name(block)["qkv_proj"]
    assert qkv.params == 4096 * (2 * 128 + 2 * 128)


def test_tp_errors() -> None:
    with pytest.raises(PipesimError, match="num_attention_heads"):
        iteration_ops(LLAMA, MIXED, 3, "bfloat16")
    with pytest.raises(PipesimError, match="tp must be"):
        iteration_ops(LLAMA, MIXED, 0, "bfloat16")
    with pytest.raises(PipesimError, match="dtype"):
        iteration_ops(LLAMA, MIXED, 1, "int4")


def test_moe_experts() -> None:
    mixtral = get_model("Mixtral-8x7B")
    it = Iteration(decode=(10,))
    _, block, _ = iteration_ops(mixtral, it, 2, "bfloat16")
    ops = by_name(block)
    i = 14336 // 2
    assert ops["experts"].flops == 2 * (6 * 4096 * i + 5 * i)  # one token, top-2
    # One token touches exactly its 2 experts' weights.
    assert expected_active_experts(8, 2, 1) == pytest.approx(2.0)
    assert ops["experts"].bytes == 2 * 3 * 4096 * i * 2 + (2 * 4096 + 6 * 2 * i) * 2
    assert ops["experts"].tp_all_reduce and ops["experts"].tp_comm_bytes == 4096 * 2
    assert ops["moe_gate"].params == 4096 * 8  # router replicated
    # Many tokens hit every expert.
    assert expected_active_experts(8, 2, 1000) == pytest.approx(8.0)


def test_gpt2_learned_positions() -> None:
    gpt2 = get_model("gpt2")
    pre, block, _ = iteration_ops(gpt2, Iteration(prefill=(PrefillChunk(10),)), 1, "float16")
    assert pre[0].flops == 10 * 768 and pre[0].bytes == 3 * 10 * 768 * 2
    ops = by_name(block)
    assert ops["up_proj"].flops == 2 * 10 * 768 * 3072 + 3072 * 10  # matmul plus bias adds
    assert ops["act_fn"].bytes == 2 * 10 * 3072 * 2


def test_empty_iteration_is_zero_work() -> None:
    for name in list_models():
        pre, block, post = iteration_ops(get_model(name), Iteration(), 1, "bfloat16")
        assert all(o.tokens == 0 for o in pre + block + post)
        assert sum(o.flops for o in pre + block + post) == 0


@pytest.mark.parametrize("name", list_models())
def test_every_layer_has_an_op_class(name: str) -> None:
    model = get_model(name)
    pre, block, post = iteration_ops(model, Iteration(prefill=(PrefillChunk(8),), decode=(16,)), 1, "bfloat16")
    classes = {op.name: op_class(op.name) for op in pre + block + post}
    assert set(classes.values()) <= set(OP_CLASSES)
    assert classes["attention"] == "attention" and classes["sampler"] == "sampler"
    assert classes["lm_head"] == classes["qkv_proj"] == classes["o_proj"] == "gemm"
    assert classes["final_layernorm"] == classes["embedding"] == "elementwise"
    if model.is_moe:
        assert classes["moe_gate"] == classes["experts"] == "gemm"
    else:
        assert classes["down_proj"] == "gemm" and classes["act_fn"] == "elementwise"
    with pytest.raises(PipesimError, match="no op class"):
        op_class("mystery")


def test_attention_work_pads_query_tiles_and_counts_ctas() -> None:
    # One prefill chunk of 100 tokens after 1000 cached, 32 heads / 8 KV heads: 2 query tiles of 64 rows,
    # tile 0 scores 1000 + 64 keys, tile 1 1000 + 100: 64 * (2 * 1000 + 64 * 1 + 100) pairs per head.
    work = attention_work(Iteration(prefill=(PrefillChunk(100, 1000),)), 32, 8)
    assert work.pairs == 100 * 1000 + 100 * 101 // 2
    assert work.tile_pairs == 64 * (2 * 1000 + 64 + 100)
    assert work.ctas == 32 * 2 and work.kv_reads == 1100
    # Decode-only: the 4 query heads of a group share one 64-row tile; KV split per 128-key tile.
    work = attention_work(Iteration(decode=(1023, 255)), 32, 8)
    assert work.tile_pairs == 64 * (1024 + 256) // 4
    assert work.ctas == 8 * max(2, (1024 + 256) // 128) and work.kv_reads == 1280
    # Mixed: each decode is one padded 64-row tile per query head, one block per query head.
    work = attention_work(Iteration(prefill=(PrefillChunk(64),), decode=(127,)), 32, 8)
    assert work.tile_pairs == 64 * 64 + 64 * 128
    assert work.ctas == 32 * 1 + 32 * 1 and work.kv_reads == 64 + 128
