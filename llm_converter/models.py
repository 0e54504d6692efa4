"""Model dimensions (ModelSpec), their parameter and KV-cache arithmetic, and the model catalog.

A ModelSpec comes from the YAML catalog in `llm_converter/catalog/models/` (package data, read with
importlib.resources so an installed wheel finds it; written from the models' published
dimensions) or from a HuggingFace `config.json`. Parameter counts follow the HF module layout exactly so
they match published totals; everything else in pipesim (layer work, memory, stage splits) builds on them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from llm_converter.errors import PipesimError

DTYPE_BYTES: dict[str, int] = {"float16": 2, "bfloat16": 2, "fp8": 1}

NORM_KINDS = ("rmsnorm", "layernorm")
POSITION_KINDS = ("rope", "learned")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise PipesimError(f"unknown dtype {dtype!r}: set dtype to one of {', '.join(DTYPE_BYTES)}") from None


def catalog_dir(kind: str) -> Traversable:
    """Where a catalog's YAML files live: `llm_converter/catalog/<kind>/` (shipped as package data), or
    `$PIPESIM_CONFIG_DIR/<kind>/` when that is set. `kind` is "models" or "hardware"."""
    override = os.environ.get("PIPESIM_CONFIG_DIR")
    if override:
        return Path(override) / kind
    return resources.files("llm_converter") / "catalog" / kind


def catalog_files(directory: Traversable) -> list[Traversable]:
    """The `*.yaml` files of a catalog folder, by name (none when the folder does not exist)."""
    if not directory.is_dir():
        return []
    return sorted((entry for entry in directory.iterdir() if entry.name.endswith(".yaml")), key=lambda e: e.name)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # HF form, e.g. "meta-llama/Llama-3.1-8B"
    architecture: str  # HF model_type: "llama", "qwen3", "gpt2", "mixtral", "qwen3_moe", "phimoe"
    hidden_size: int
    intermediate_size: int  # dense MLP width (unused by MoE blocks, see moe_intermediate_size)
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    num_experts: int = 0  # 0 = dense MLP
    experts_per_token: int = 0
    moe_intermediate_size: int = 0  # per-expert MLP width; 0 = intermediate_size
    norm: str = "rmsnorm"  # "rmsnorm" (weight only) or "layernorm" (weight and bias)
    gated_mlp: bool = True  # SwiGLU gate+up (3 matrices) vs GPT-2 style up/down (2 matrices)
    attention_bias: bool = False  # biases on q/k/v and o projections
    mlp_bias: bool = False
    lm_head_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    position_embedding: str = "rope"  # "rope" or "learned" (GPT-2: wpe table)
    max_position_embeddings: int = 0

    def __post_init__(self) -> None:
        for f in ("hidden_size", "intermediate_size", "num_layers", "num_attention_heads", "num_kv_heads"):
            if getattr(self, f) <= 0:
                raise PipesimError(f"model {self.name}: {f} must be > 0 (got {getattr(self, f)})")
        if self.head_dim <= 0 or self.vocab_size <= 0:
            raise PipesimError(f"model {self.name}: head_dim and vocab_size must be > 0")
        if self.num_attention_heads % self.num_kv_heads:
            raise PipesimError(
                f"model {self.name}: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.norm not in NORM_KINDS:
            raise PipesimError(f"model {self.name}: norm {self.norm!r} must be one of {', '.join(NORM_KINDS)}")
        if self.position_embedding not in POSITION_KINDS:
            raise PipesimError(
                f"model {self.name}: position_embedding {self.position_embedding!r} must be one of "
                f"{', '.join(POSITION_KINDS)}"
            )
        if self.position_embedding == "learned" and self.max_position_embeddings <= 0:
            raise PipesimError(f"model {self.name}: learned position embeddings need max_position_embeddings > 0")
        if self.num_experts and not 0 < self.experts_per_token <= self.num_experts:
            raise PipesimError(
                f"model {self.name}: experts_per_token must be in 1..num_experts ({self.num_experts}) for MoE"
            )

    # -- shape helpers -------------------------------------------------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def expert_intermediate_size(self) -> int:
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def short_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    # -- parameter counts (HF module layout) ---------------------------------------------------------------

    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    def embedding_params(self) -> int:
        params = self.vocab_size * self.hidden_size
        if self.position_embedding == "learned":
            params += self.max_position_embeddings * self.hidden_size
        return params

    def attention_params(self) -> int:
        h = self.hidden_size
        params = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        if self.attention_bias:
            params += self.q_size + 2 * self.kv_size + h
        if self.qk_norm:
            params += 2 * self.head_dim
        return params

    def mlp_params(self) -> int:
        """One block's MLP: the dense MLP, or router plus all experts for MoE."""
        h = self.hidden_size
        if self.is_moe:
            return h * self.num_experts + self.num_experts * 3 * h * self.expert_intermediate_size
        i = self.intermediate_size
        if self.gated_mlp:
            return 3 * h * i + (2 * i + h if self.mlp_bias else 0)
        return 2 * h * i + (i + h if self.mlp_bias else 0)

    def block_params(self) -> int:
        return 2 * self.norm_params() + self.attention_params() + self.mlp_params()

    def final_norm_params(self) -> int:
        return self.norm_params()

    def lm_head_params(self) -> int:
        if self.tie_word_embeddings:
            return 0
        return self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)

    def total_params(self) -> int:
        return (
            self.embedding_params()
            + self.num_layers * self.block_params()
            + self.final_norm_params()
            + self.lm_head_params()
        )

    def active_params(self) -> int:
        """Parameters one token touches (MoE: only its top-k experts)."""
        if not self.is_moe:
            return self.total_params()
        h = self.hidden_size
        inactive = (self.num_experts - self.experts_per_token) * 3 * h * self.expert_intermediate_size
        return self.total_params() - self.num_layers * inactive

    def weight_bytes(self, dtype: str) -> int:
        return self.total_params() * dtype_bytes(dtype)

    def kv_bytes_per_token(self, dtype: str) -> int:
        """K and V of one token, all layers, whole model (unsharded)."""
        return 2 * self.num_layers * self.kv_size * dtype_bytes(dtype)


# -- catalog -----------------------------------------------------------------------------------------------

_SPEC_FIELDS = {f.name for f in fields(ModelSpec)}


def _spec_from_catalog_entry(path: Traversable, entry: dict[str, Any]) -> tuple[ModelSpec, list[str]]:
    if not isinstance(entry, dict):
        raise PipesimError(f"{path}: expected a mapping of ModelSpec fields; fix the YAML")
    data = dict(entry)
    aliases = [str(a) for a in data.pop("aliases", [])]
    unknown = sorted(set(data) - _SPEC_FIELDS)
    if unknown:
        raise PipesimError(f"{path}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_SPEC_FIELDS))}")
    try:
        spec = ModelSpec(**data)
    except TypeError as exc:
        raise PipesimError(f"{path}: {exc}; add the missing field") from None
    return spec, aliases


@cache
def _catalog(directory: Traversable) -> dict[str, ModelSpec]:
    """Lower-cased name, short name and aliases -> spec."""
    index: dict[str, ModelSpec] = {}
    for path in catalog_files(directory):
        try:
            entry = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PipesimError(f"{path}: invalid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
        spec, aliases = _spec_from_catalog_entry(path, entry)
        for key in (spec.name, spec.short_name, *aliases):
            index[key.lower()] = spec
    return index


def list_models() -> list[str]:
    return sorted({spec.name for spec in _catalog(catalog_dir("models")).values()})


def get_model(name_or_path: str) -> ModelSpec:
    """A catalog model by HF id or short name (case-insensitive), or a spec parsed from an HF config.json."""
    path = Path(name_or_path)
    if name_or_path.endswith(".json") or path.is_file():
        return model_from_hf_config(path)
    spec = _catalog(catalog_dir("models")).get(name_or_path.lower())
    if spec is None:
        raise PipesimError(
            f"unknown model {name_or_path!r}: use one of {', '.join(list_models())} "
            f"(or a path to a HuggingFace config.json)"
        )
    return spec


# -- HuggingFace config.json -------------------------------------------------------------------------------

_LAYERNORM_TYPES = {"gpt2", "phimoe", "phi", "gpt_neox", "opt"}


def _name_from_path(path: Path, config: dict[str, Any]) -> str:
    stored = config.get("_name_or_path")
    if isinstance(stored, str) and "/" in stored and not stored.startswith("/"):
        return stored
    stem = path.parent.name if path.name == "config.json" else path.stem
    org = path.parent.parent.name if path.name == "config.json" else path.parent.name
    return f"{org}/{stem}" if org else stem


def _require(path: Path, config: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return _whole(path, key, config[key])
    raise PipesimError(f"{path}: missing field {' / '.join(keys)}; add it to the config.json")


def _whole(path: Path, key: str, value: Any) -> int:
    """A whole number from the config.json (4096 or 4096.0; not "4096", true or 1.5)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise PipesimError(f"{path}: field {key} is {json.dumps(value)}; it must be a whole number")
    return int(value)


def _optional(path: Path, config: dict[str, Any], key: str, default: int = 0) -> int:
    value = config.get(key)
    return default if value is None or value == 0 else _whole(path, key, value)


def model_from_hf_config(path: Path) -> ModelSpec:
    """A ModelSpec from a HuggingFace config.json; every problem names the file and the field."""
    if not path.is_file():
        raise PipesimError(f"{path}: no such model config file; pass an existing HuggingFace config.json")
    try:
        return _model_from_hf_config(path)
    except PipesimError as exc:
        message = str(exc)
        if message.startswith(f"{path}:"):
            raise
        raise PipesimError(f"{path}: {message}; fix the config.json") from None


def _model_from_hf_config(path: Path) -> ModelSpec:
    if not path.is_file():
        raise PipesimError(f"{path}: no such model config file; pass an existing HuggingFace config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{path}: not valid JSON ({exc}); pass a HuggingFace config.json") from None
    if not isinstance(config, dict):
        raise PipesimError(f"{path}: expected a JSON object; pass a HuggingFace config.json")
    model_type = str(config.get("model_type", "")).lower()
    if not model_type:
        raise PipesimError(f'{path}: missing field model_type; add it (e.g. "llama")')
    name = _name_from_path(path, config)

    if model_type == "gpt2":
        hidden = _require(path, config, "n_embd", "hidden_size")
        heads = _require(path, config, "n_head", "num_attention_heads")
        return ModelSpec(
            name=name,
            architecture="gpt2",
            hidden_size=hidden,
            intermediate_size=_optional(path, config, "n_inner", 4 * hidden),
            num_layers=(_require(path, config, "n_layer", "num_hidden_layers")),
            num_attention_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads if heads > 0 else 0,
            vocab_size=(_require(path, config, "vocab_size")),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
            norm="layernorm",
            gated_mlp=False,
            attention_bias=True,
            mlp_bias=True,
            position_embedding="learned",
            max_position_embeddings=(_require(path, config, "n_positions", "max_position_embeddings")),
        )

    hidden = _require(path, config, "hidden_size")
    heads = _require(path, config, "num_attention_heads")
    num_experts = _optional(path, config, "num_local_experts") or _optional(path, config, "num_experts")
    if num_experts:
        if config.get("mlp_only_layers") or _optional(path, config, "decoder_sparse_step", 1) != 1:
            raise PipesimError(
                f"{path}: mlp_only_layers / decoder_sparse_step mix dense and MoE blocks, which pipesim does not "
                f"model; use a config where every block is MoE"
            )
        if config.get("shared_expert_intermediate_size") or config.get("n_shared_experts"):
            raise PipesimError(f"{path}: shared experts are not modelled; use a MoE config without shared experts")
    return ModelSpec(
        name=name,
        architecture=model_type,
        hidden_size=hidden,
        intermediate_size=(_require(path, config, "intermediate_size")),
        num_layers=(_require(path, config, "num_hidden_layers")),
        num_attention_heads=heads,
        num_kv_heads=_optional(path, config, "num_key_value_heads", heads),
        head_dim=_optional(path, config, "head_dim", hidden // heads if heads > 0 else 0),
        vocab_size=(_require(path, config, "vocab_size")),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        num_experts=num_experts,
        experts_per_token=_optional(path, config, "num_experts_per_tok") if num_experts else 0,
        # Mixtral / PhiMoE experts have the dense intermediate_size; Qwen3-MoE names its own width.
        moe_intermediate_size=_optional(
            path, config, "moe_intermediate_size", _require(path, config, "intermediate_size")
        )
        if num_experts
        else 0,
        norm="layernorm" if model_type in _LAYERNORM_TYPES else "rmsnorm",
        gated_mlp=True,
        attention_bias=bool(config.get("attention_bias", False)),
        mlp_bias=bool(config.get("mlp_bias", False)),
        lm_head_bias=bool(config.get("lm_head_bias", False)),
        qk_norm=model_type.startswith("qwen3"),
        position_embedding="rope",
        max_position_embeddings=_optional(path, config, "max_position_embeddings"),
    )
