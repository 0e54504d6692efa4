"""Training work per layer, memory and Megatron's FLOPs count, against hand-computed values."""

from __future__ import annotations

import pytest

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType
from llm_converter.graphs.training import split_training_stages
from llm_converter.hardware import get_hardware
from llm_converter.latency.roofline import RooflineModel
from llm_converter.models import get_model
from llm_converter.training_ops import (
    Compute,
    TpCollective,
    build_stage_steps,
    layer_activation_bytes,
    megatron_model_flops,
    param_memory,
    stage_layer_list,
    step_ns,
    training_layers,
)

# GPT-2 124M by HF module: two LayerNorms (2 x 2h), c_attn (h x 3h + 3h), attn c_proj (h x h + h),
# c_fc (h x 4h + 4h), mlp c_proj (4h x h + h) with h = 768.
GPT2_BLOCK = 2 * 2 * 768 + (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768)
GPT2_EMBEDDINGS = 50257 * 768 + 1024 * 768  # wte + wpe


def _steps(recompute: str = "none", tp: int = 1, sp: bool = False):
    model = get_model("gpt2")
    pre, block, post = training_layers(model, 2, 256, tp, "bfloat16", sequence_parallel=sp)
    layers = stage_layer_list(pre, block, post, range(0, 2), False, False)
    return build_stage_steps(layers, RooflineModel(get_hardware("A100-80G")), recompute), layers


def test_gpt2_block_params_match_the_module_sizes() -> None:
    _, block, _ = training_layers(get_model("gpt2"), 1, 128, 1, "bfloat16")
    assert sum(layer.params for layer in block) == GPT2_BLOCK == 7_087_872


def test_backward_is_twice_the_forward_for_every_gemm() -> None:
    _, block, post = training_layers(get_model("gpt2"), 4, 512, 2, "bfloat16")
    for layer in block + post:
        if layer.name in ("qkv_proj", "o_proj", "up_proj", "down_proj", "lm_head"):
            assert layer.input_grad.flops == layer.forward.flops
            assert layer.weight_grad.flops == layer.forward.flops
    attention = next(layer for layer in block if layer.name == "attention")
    assert attention.weight_grad is None and attention.input_grad.flops == round(2.5 * attention.forward.flops)


def test_tp_collectives_follow_megatron() -> None:
    plain, _ = _steps(tp=2)
    kinds = [s.kind for s in plain.forward if isinstance(s, TpCollective)]
    assert kinds == [CollectiveType.ALL_REDUCE] * 4  # o_proj and down_proj of two blocks
    assert [s.kind for s in plain.input_grad if isinstance(s, TpCollective)] == [CollectiveType.ALL_REDUCE] * 4
    assert not [s for s in plain.weight_grad if isinstance(s, TpCollective)]
    sp, _ = _steps(tp=2, sp=True)
    kinds = [s.kind for s in sp.forward if isinstance(s, TpCollective)]
    assert kinds == [CollectiveType.ALL_GATHER, CollectiveType.REDUCE_SCATTER] * 4
    sizes = {s.kind: s.size for s in sp.forward if isinstance(s, TpCollective)}
    tokens_hidden_bytes = 2 * 256 * 768 * 2
    assert sizes == {
        CollectiveType.ALL_GATHER: tokens_hidden_bytes // 2,
        CollectiveType.REDUCE_SCATTER: tokens_hidden_bytes,
    }


def test_full_recompute_adds_the_blocks_forward_and_selective_the_attention() -> None:
    none, layers = _steps("none")
    full, _ = _steps("full")
    assert step_ns(full.backward) - step_ns(none.backward) == step_ns(none.forward)
    assert step_ns(full.input_grad) - step_ns(none.input_grad) == step_ns(none.forward)
    selective, _ = _steps("selective")
    roofline = RooflineModel(get_hardware("A100-80G"))
    from llm_converter.iteration import Iteration

    attention_ns = sum(
        roofline.layer_ns(layer.forward, Iteration()) for _, layer in layers if layer.name == "attention"
    )
    assert step_ns(selective.backward) - step_ns(none.backward) == attention_ns
    assert all(isinstance(s, Compute) for s in none.weight_grad)


def test_megatron_flops_reduce_to_the_gpt_closed_form() -> None:
    # GPT (MHA, 4h GELU MLP): 72 B s l h^2 (1 + s/(6h) + V/(12 l h)) (Narayanan et al. 2021 without recompute),
    # and with full recompute 96 B s l h^2 (1 + s/(6h) + V/(16 l h)).
    model = get_model("gpt2")
    batch, s, layers, h, vocab = 8, 1024, 12, 768, 50257
    expected = 72 * batch * s * layers * h * h * (1 + s / (6 * h) + vocab / (12 * layers * h))
    assert megatron_model_flops(model, batch, s) == pytest.approx(expected, rel=1e-12)
    with_recompute = 96 * batch * s * layers * h * h * (1 + s / (6 * h) + vocab / (16 * layers * h))
    assert megatron_model_flops(model, batch, s, "full") == pytest.approx(with_recompute, rel=1e-12)


def test_param_memory_is_megatrons_18_and_6_plus_12_over_d_bytes() -> None:
    plain = param_memory(1_000_000, dp=8, distributed_optimizer=False)
    assert plain.total == 18_000_000
    sharded = param_memory(1_000_000, dp=8, distributed_optimizer=True)
    assert (sharded.weight_bytes, sharded.grad_bytes, sharded.optimizer_bytes) == (2_000_000, 4_000_000, 1_500_000)


def test_activation_memory_is_korthikantis_formula() -> None:
    model = get_model("gpt2")  # h 768, a 12
    s, b, h, a, t = 1024, 2, 768, 12, 4
    sbh = s * b * h
    assert layer_activation_bytes(model, b, s, t, False, "none") == 10 * sbh + 24 * sbh // t + 5 * a * s * sbh // (
        h * t
    )
    assert layer_activation_bytes(model, b, s, t, True, "none") == 34 * sbh // t + 5 * a * s * sbh // (h * t)
    assert layer_activation_bytes(model, b, s, t, True, "selective") == 34 * sbh // t
    assert layer_activation_bytes(model, b, s, 1, False, "none") == sbh * (34 + 5 * a * s // h)
    assert layer_activation_bytes(model, b, s, t, False, "full") == 2 * sbh


def test_stage_split_rules() -> None:
    assert split_training_stages(12, 4, 1) == ((0, 3), (3, 6), (6, 9), (9, 12))
    assert split_training_stages(10, 4, 1) == ((0, 3), (3, 6), (6, 8), (8, 10))
    # Llama 3's 126 layers on 16 ranks x 2 chunks: 32 stages of 4, the first and last of 3.
    bounds = split_training_stages(126, 16, 2)
    sizes = [end - start for start, end in bounds]
    assert sizes[0] == sizes[-1] == 3 and set(sizes[1:-1]) == {4} and bounds[-1][1] == 126
    with pytest.raises(PipesimError, match="--pp 13: 13 pipeline stages but the model has 12"):
        split_training_stages(12, 13, 1)
    with pytest.raises(PipesimError, match="--chunks 2: 12 layers on 4 ranks"):
        split_training_stages(12, 4, 2)
