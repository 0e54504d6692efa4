"""ModelSpec arithmetic against published parameter totals and closed-form KV sizes; catalog and HF parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_converter import models
from llm_converter.errors import PipesimError
from llm_converter.models import ModelSpec, dtype_bytes, get_model, list_models
from tests.conftest import SHARED

HF_MODELS = SHARED / "models"

# Published totals (model cards / papers).
PUBLISHED_PARAMS = {
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "meta-llama/Llama-3.1-70B": 70.6e9,
    "meta-llama/Llama-3.1-405B": 405.9e9,
    "Qwen/Qwen3-32B": 32.8e9,
    "openai-community/gpt2": 124.4e6,
    "mistralai/Mixtral-8x7B-v0.1": 46.7e9,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_total_params_match_published(name: str) -> None:
    assert get_model(name).total_params() == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_gpt2_params_exact() -> None:
    # wte 50257*768 + wpe 1024*768 + 12 blocks of 7,087,872 + ln_f 1536 (lm_head tied): 124,439,808.
    gpt2 = get_model("gpt2")
    assert gpt2.embedding_params() == 50257 * 768 + 1024 * 768
    assert gpt2.block_params() == 2 * 1536 + (768 * 2304 + 2304 + 768 * 768 + 768) + (2 * 768 * 3072 + 3072 + 768)
    assert gpt2.lm_head_params() == 0
    assert gpt2.total_params() == 124_439_808


def test_llama_8b_breakdown() -> None:
    m = get_model("meta-llama/Llama-3.1-8B")
    assert m.embedding_params() == 128256 * 4096
    assert m.lm_head_params() == 128256 * 4096
    assert m.final_norm_params() == 4096
    attn = 4096 * (4096 + 2 * 1024) + 4096 * 4096
    mlp = 3 * 4096 * 14336
    assert m.block_params() == 2 * 4096 + attn + mlp
    assert m.weight_bytes("bfloat16") == 2 * m.total_params()
    assert m.weight_bytes("fp8") == m.total_params()


def test_kv_bytes_per_token() -> None:
    assert get_model("Llama-3.1-8B").kv_bytes_per_token("bfloat16") == 2 * 32 * 8 * 128 * 2 == 131072
    assert get_model("Llama-3.1-70B").kv_bytes_per_token("float16") == 2 * 80 * 8 * 128 * 2
    assert get_model("Qwen3-32B").kv_bytes_per_token("fp8") == 2 * 64 * 8 * 128 * 1
    assert get_model("gpt2").kv_bytes_per_token("bfloat16") == 2 * 12 * 768 * 2


def test_mixtral_active_params() -> None:
    # Mixtral 8x7B: 12.9B parameters used per token (top-2 of 8 experts).
    m = get_model("Mixtral-8x7B")
    assert m.is_moe and m.num_experts == 8 and m.experts_per_token == 2
    assert m.active_params() == pytest.approx(12.9e9, rel=0.01)


def test_lookup_forms_and_errors() -> None:
    assert get_model("llama-3.1-8b") is get_model("meta-llama/Llama-3.1-8B")
    assert get_model("GPT2").name == "openai-community/gpt2"
    assert len(list_models()) >= 6
    with pytest.raises(PipesimError, match="config.json") as exc:
        get_model("Llama-9")
    assert "meta-llama/Llama-3.1-8B" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(PipesimError, match="dtype"):
        dtype_bytes("int3")
    with pytest.raises(PipesimError, match="num_kv_heads"):
        ModelSpec("x/y", "llama", 64, 128, 2, 6, 4, 16, 100, False)


def test_config_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.yaml").write_text(
        "name: org/Tiny\narchitecture: llama\nhidden_size: 64\nintermediate_size: 128\nnum_layers: 2\n"
        "num_attention_heads: 4\nnum_kv_heads: 2\nhead_dim: 16\nvocab_size: 100\ntie_word_embeddings: true\n"
    )
    monkeypatch.setenv("PIPESIM_CONFIG_DIR", str(tmp_path))
    tiny = get_model("tiny")
    # emb 100*64 + 2 * (2*64 + 64*(64+2*32) + 64*64 + 3*64*128) + 64, tied head.
    assert tiny.total_params() == 6400 + 2 * (128 + 64 * 128 + 4096 + 3 * 64 * 128) + 64
    assert list_models() == ["org/Tiny"]
    (tmp_path / "models" / "bad.yaml").write_text("name: org/Bad\nwidth: 3\n")
    models._catalog.cache_clear()
    with pytest.raises(PipesimError, match="bad.yaml.*width"):
        get_model("tiny")
    models._catalog.cache_clear()


def test_gpt2_from_hf_config(tmp_path: Path) -> None:
    # GPT-2's own config.json naming (n_embd / n_layer / n_head / n_positions).
    path = tmp_path / "openai-community" / "gpt2" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {
                "model_type": "gpt2",
                "n_embd": 768,
                "n_layer": 12,
                "n_head": 12,
                "n_inner": None,
                "n_positions": 1024,
                "vocab_size": 50257,
            }
        )
    )
    parsed = get_model(str(path))
    assert parsed == get_model("gpt2")


def test_bad_hf_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(PipesimError, match="num_attention_heads"):
        get_model(str(path))
    path.write_text("{not json")
    with pytest.raises(PipesimError, match="JSON"):
        get_model(str(path))
    with pytest.raises(PipesimError, match="no such"):
        get_model(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("relpath", "catalog_name"),
    [
        ("meta-llama/Llama-3.1-8B.json", "Llama-3.1-8B"),
        ("meta-llama/Llama-3.1-70B.json", "Llama-3.1-70B"),
        ("Qwen/Qwen3-32B.json", "Qwen3-32B"),
        ("mistralai/Mixtral-8x7B-v0.1.json", "Mixtral-8x7B"),
    ],
)
def test_hf_config_agrees_with_catalog(shared_dir: Path, relpath: str, catalog_name: str) -> None:
    parsed = get_model(str(HF_MODELS / relpath))
    assert parsed == get_model(catalog_name)


def test_hf_moe_configs(shared_dir: Path) -> None:
    # Qwen3-30B-A3B: 30.5B total, 3.3B active (model card); 128 experts of width 768, top-8.
    qwen = get_model(str(HF_MODELS / "Qwen/Qwen3-30B-A3B-Instruct-2507.json"))
    assert (qwen.num_experts, qwen.experts_per_token, qwen.expert_intermediate_size) == (128, 8, 768)
    assert qwen.qk_norm and qwen.total_params() == pytest.approx(30.5e9, rel=0.01)
    assert qwen.active_params() == pytest.approx(3.3e9, rel=0.03)
    # Phi-mini-MoE: 7.6B total, 2.4B active; LayerNorm, biased attention and lm_head.
    phi = get_model(str(HF_MODELS / "microsoft/Phi-mini-MoE-instruct.json"))
    assert (phi.num_experts, phi.experts_per_token, phi.norm) == (16, 2, "layernorm")
    assert phi.attention_bias and phi.lm_head_bias
    assert phi.total_params() == pytest.approx(7.6e9, rel=0.01)
    assert phi.active_params() == pytest.approx(2.4e9, rel=0.02)
