"""llm_converter.memory: parameters and weight bytes per stage, KV bytes per token, usable memory, KV blocks
(LLMServingSim's formula) and the batch fit check, against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from astra_driver.cli import main
from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.memory import (
    batch_kv_tokens,
    check_batch_fits,
    kv_bytes_per_token,
    kv_cache_blocks,
    npu_memory_bytes,
    stage_params,
    weight_bytes_per_npu,
)
from llm_converter.models import get_model
from llm_converter.plan import ParallelPlan

# Llama-3.1-8B by hand (HF layout): h 4096, vocab 128256, 32 layers, 8 kv heads of 128, MLP 14336, untied head.
EMBEDDING = 128256 * 4096
BLOCK = 2 * 4096 + 4096 * (4096 + 2 * 1024) + 4096 * 4096 + 3 * 4096 * 14336
HEAD = 4096 + 128256 * 4096  # final norm + lm_head
LLAMA8B_BF16 = 2 * (EMBEDDING + 32 * BLOCK + HEAD)  # 16,060,522,496 bytes


def test_gpt2_in_four_stages_puts_the_embeddings_on_stage_zero() -> None:
    # Seed 002: GPT-2 124M split in 4 stages of 3 blocks: stage 0 holds ~60M params, the others ~21M.
    model = get_model("openai-community/gpt2")
    plan = ParallelPlan.even(tp=1, pp=4, num_blocks=model.num_layers)
    params = stage_params(model, plan)
    h, vocab, positions = 768, 50257, 1024
    block = 2 * 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h)
    assert block == 7_087_872
    assert params[0] == vocab * h + positions * h + 3 * block
    assert params[1] == params[2] == 3 * block
    assert params[3] == 3 * block + 2 * h  # ln_f; lm_head is tied to wte (counted on stage 0)
    assert round(params[0] / 1e6) == 61 and round(params[1] / 1e6) == 21
    assert sum(params) == model.total_params()
    assert weight_bytes_per_npu(model, plan, 2) == [2 * p for p in params]


def test_weight_bytes_shrink_with_tp() -> None:
    model = get_model("meta-llama/Llama-3.1-8B")
    plan = ParallelPlan.even(tp=4, pp=2, num_blocks=32)
    per_stage = stage_params(model, plan)
    assert weight_bytes_per_npu(model, plan, 2) == [-(-p // 4) * 2 for p in per_stage]
    assert sum(per_stage) == model.total_params()


def test_kv_bytes_per_token_is_the_stage_layers_times_the_rank_heads() -> None:
    model = get_model("meta-llama/Llama-3.1-8B")
    # whole model: 2 (K, V) * 32 layers * 8 heads * 128 * 2 B = 131,072 (models.py's own figure)
    one = ParallelPlan.even(tp=1, pp=1, num_blocks=32)
    assert kv_bytes_per_token(model, one, 0, 2) == 131_072 == model.kv_bytes_per_token("bfloat16")
    tp2_pp3 = ParallelPlan.even(tp=2, pp=3, num_blocks=32)  # 11, 11, 10 blocks; 4 heads per rank
    assert [kv_bytes_per_token(model, tp2_pp3, s, 2) for s in range(3)] == [2 * n * 4 * 128 * 2 for n in (11, 11, 10)]
    # tp 16 > 8 KV heads: vLLM replicates, each rank still holds one head
    tp16 = ParallelPlan.even(tp=16, pp=1, num_blocks=32)
    assert kv_bytes_per_token(model, tp16, 0, 1) == 2 * 32 * 1 * 128


def test_npu_memory_bytes_reads_mem_size_as_gib_like_llmservingsim() -> None:
    assert npu_memory_bytes(96, 0.9) == int(96 * 2**30 * 0.9) == 92_771_293_593
    assert npu_memory_bytes(80, 1.0) == 80 * 2**30
    with pytest.raises(PipesimError, match=r"npu_mem.mem_util: 1\.5 is outside \(0, 1\]"):
        npu_memory_bytes(96, 1.5)
    with pytest.raises(PipesimError, match="npu_mem.mem_size"):
        npu_memory_bytes(0, 0.9)


def test_kv_cache_blocks_reproduce_llmservingsim_for_one_npu() -> None:
    """LLMServingSim's MemoryModel on Llama-3.1-8B, tp 1, block 16, its mem_size 96 read as GiB at its default
    util 0.9: its per-rank weight (embedding + 32 blocks + ln_f + lm_head) is the model's, so the count is
    (int(96 * 2**30 * 0.9) - weights) // (131,072 * 16) exactly."""
    model = get_model("meta-llama/Llama-3.1-8B")
    plan = ParallelPlan.even(tp=1, pp=1, num_blocks=32)
    usable = int(96 * 1024**3 * 0.9)
    expected = (usable - LLAMA8B_BF16) // (131_072 * 16)
    assert expected == 36_578
    assert kv_cache_blocks(model, plan, 2, usable, 16) == expected
    # the cluster JSON's mem_size 96 at mem_util 0.9 is exactly those bytes
    assert kv_cache_blocks(model, plan, 2, npu_memory_bytes(96, 0.9), 16) == 36_578


def test_kv_cache_blocks_take_the_fullest_stage() -> None:
    """pp 2 (seed 000's single_node_pp_instance): stage 0 = embedding + 16 blocks, stage 1 = 16 blocks + norm +
    lm_head (heavier by 4096 params); both hold 16 layers of KV, so stage 1 sets the count."""
    model = get_model("meta-llama/Llama-3.1-8B")
    plan = ParallelPlan.even(tp=1, pp=2, num_blocks=32)
    usable = npu_memory_bytes(96, 0.9)
    per_block = 2 * 16 * 8 * 128 * 2 * 16
    stage1 = 2 * (16 * BLOCK + HEAD)
    assert kv_cache_blocks(model, plan, 2, usable, 16) == (usable - stage1) // per_block == 80_815
    with pytest.raises(PipesimError, match=r"stage 0 holds 7\.48 GB of weights per NPU, leaving -0\.03 GB"):
        kv_cache_blocks(model, plan, 2, 8 * 10**9, 16)


def test_batch_kv_tokens_count_the_new_tokens_too() -> None:
    batch = Iteration(prefill=(PrefillChunk(512, 128),), decode=(100, 200))
    assert batch_kv_tokens(batch) == 640 + 101 + 201


def test_check_batch_fits_boundary() -> None:
    model = get_model("meta-llama/Llama-3.1-8B")
    plan = ParallelPlan.even(tp=1, pp=1, num_blocks=32)
    batch = Iteration(decode=(999,))  # 1,000 tokens of KV
    need = LLAMA8B_BF16 + 1000 * 131_072
    check_batch_fits(model, plan, batch, 2, need, "--decode")
    with pytest.raises(PipesimError, match=r"^--decode: .* 14\.96 GB of weights \+ 0\.12 GB of KV cache"):
        check_batch_fits(model, plan, batch, 2, need - 1, "--decode")


def test_trace_refuses_a_batch_whose_kv_cache_cannot_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 6 item 4: 1000 requests of 131,072 tokens on two 96 GB RTXPRO6000 (tp 2): per NPU 7.48 GiB of weights
    + 1000 * 131,073 tokens * 65,536 B (2 * 32 layers * 4 heads * 128 * 2 B) = 8,000.06 GiB of KV cache."""
    args = ["trace", "--model", "Llama-3.1-8B", "--hardware", "RTXPRO6000", "--tp", "2"]
    args += ["--decode", "1000x131072", "--name", "big", "--out-dir", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    kv_gb = 1000 * 131_073 * (2 * 32 * 4 * 128 * 2) / 2**30
    assert f"{kv_gb:.2f}" == "8000.06"
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "7.48 GB of weights + 8000.06 GB of KV cache" in err and "mem_size * mem_util = 86.40 GB" in err
    assert list(tmp_path.iterdir()) == []
