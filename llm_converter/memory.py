"""NPU memory: the one home of weight bytes per NPU, KV-cache bytes per token, usable memory and KV blocks.

`pipesim trace` (does one batch fit?), the cluster config (do the weights fit?) and the serving scheduler (how
many KV blocks does an instance have?) all call these functions, so the three cannot disagree.

Units: mem_size is in GB of 2^30 bytes (GiB), as LLMServingSim reads it (mem_size * 1024**3) and as GPU
memory is sized (an RTXPRO6000's 96 GB is mem_size 96, 96 GiB), so LLMServingSim's cluster configs give its
block counts; every GB pipesim prints is that GB (docs/models_and_latency.md, "NPU memory").
"""

from __future__ import annotations

import math

from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration
from llm_converter.models import ModelSpec
from llm_converter.plan import ParallelPlan

MEM_GB = 1 << 30  # bytes in one GB of mem_size (GiB, as LLMServingSim and GPU memory sizes) and of every GB printed
DEFAULT_MEM_UTIL = 0.9  # share of mem_size the serving engine may use (vLLM's gpu_memory_utilization default)


def stage_params(model: ModelSpec, plan: ParallelPlan) -> list[int]:
    """Parameters held by each stage (all TP ranks of it together): embedding on the first, head on the last."""
    if plan.num_blocks != model.num_layers:
        raise PipesimError(
            f"parallel plan: it covers {plan.num_blocks} blocks but {model.name} has {model.num_layers} layers; "
            "build the plan from this model"
        )
    per_stage = []
    for stage in range(plan.pp):
        params = len(plan.blocks_of(stage)) * model.block_params()
        if stage == 0:
            params += model.embedding_params()
        if stage == plan.pp - 1:
            params += model.final_norm_params() + model.lm_head_params()
        per_stage.append(params)
    return per_stage


def weight_bytes_per_npu(model: ModelSpec, plan: ParallelPlan, dtype_bytes: int) -> list[int]:
    """Weight bytes on one NPU of each stage: the stage's parameters sharded over its TP ranks (rounded up to a
    whole parameter per rank).

    Norm weights are in fact replicated rather than sharded; they are under 0.01% of a block, so ignored.
    """
    return [-(-params // plan.tp) * dtype_bytes for params in stage_params(model, plan)]


def kv_heads_per_rank(model: ModelSpec, tp: int) -> int:
    """KV heads one TP rank holds: num_kv_heads / tp, at least 1 (vLLM replicates KV heads when tp exceeds them)."""
    return max(1, model.num_kv_heads // tp)


def kv_bytes_per_token(model: ModelSpec, plan: ParallelPlan, stage: int, dtype_bytes: int) -> int:
    """K and V of one token on one NPU of `stage`: its decoder layers times its TP rank's share of the KV heads."""
    layers = len(plan.blocks_of(stage))
    return 2 * layers * kv_heads_per_rank(model, plan.tp) * model.head_dim * dtype_bytes


def npu_memory_bytes(mem_size_gb: float, mem_util: float) -> int:
    """Usable bytes of one NPU: int(mem_size * 2^30 * mem_util), LLMServingSim's int(mem * util)."""
    if not (math.isfinite(mem_size_gb) and mem_size_gb > 0):
        raise PipesimError(f"npu_mem.mem_size: {mem_size_gb:g}; it must be a memory size > 0 GB")
    if not 0 < mem_util <= 1:
        raise PipesimError(
            f"npu_mem.mem_util: {mem_util:g} is outside (0, 1]; it is the share of mem_size the engine may use "
            f"(default {DEFAULT_MEM_UTIL})"
        )
    return int(mem_size_gb * MEM_GB * mem_util)


def kv_cache_blocks(
    model: ModelSpec, plan: ParallelPlan, dtype_bytes: int, usable_bytes_per_npu: int, block_size: int
) -> int:
    """KV-cache blocks of `block_size` tokens every NPU of the instance can hold (the fewest over stages).

    LLMServingSim's MemoryModel (serving/core/memory_model.py): blocks = (int(mem * util) - weights) //
    (KV bytes per token per rank * block_size), an error when not even one block fits. pipesim applies it to
    each stage with that stage's own weights and layers (LLMServingSim takes the heaviest rank's weights and
    the whole model's KV / num_npus); the fewest blocks of any stage is the instance's, since a token's KV
    lives on every stage.
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise PipesimError(f"--block-size {block_size!r}: must be an integer >= 1 (tokens per KV block)")
    weights = weight_bytes_per_npu(model, plan, dtype_bytes)
    fewest: int | None = None
    for stage in range(plan.pp):
        block_bytes = kv_bytes_per_token(model, plan, stage, dtype_bytes) * block_size
        free = usable_bytes_per_npu - weights[stage]
        blocks = free // block_bytes
        if blocks <= 0:
            raise PipesimError(
                f"npu_mem: stage {stage} holds {weights[stage] / MEM_GB:.2f} GB of weights per NPU, leaving "
                f"{free / MEM_GB:.2f} GB of the {usable_bytes_per_npu / MEM_GB:.2f} GB usable (mem_size * mem_util) "
                f"for the KV cache: less than one {block_size}-token block ({block_bytes / 1e6:.2f} MB); "
                "use a larger tp_size or pp_size, more memory or a higher mem_util"
            )
        fewest = blocks if fewest is None else min(fewest, blocks)
    assert fewest is not None  # a plan has at least one stage
    return fewest


def batch_kv_tokens(iteration: Iteration) -> int:
    """Tokens whose KV the batch holds while it runs: each prefill chunk's context plus its new tokens, and each
    decode request's cached tokens plus the one it adds."""
    return sum(chunk.kv_after for chunk in iteration.prefill) + sum(kv + 1 for kv in iteration.decode)


def check_batch_fits(
    model: ModelSpec,
    plan: ParallelPlan,
    iteration: Iteration,
    dtype_bytes: int,
    usable_bytes_per_npu: int,
    where: str,
) -> None:
    """Weights plus the batch's KV cache fit on every NPU; a PipesimError naming `where` with the numbers if not.

    The KV is counted token-exact (no block rounding): the smallest the batch could need.
    """
    weights = weight_bytes_per_npu(model, plan, dtype_bytes)
    tokens = batch_kv_tokens(iteration)
    for stage in range(plan.pp):
        kv = kv_bytes_per_token(model, plan, stage, dtype_bytes) * tokens
        if weights[stage] + kv <= usable_bytes_per_npu:
            continue
        start, end = plan.stage_blocks[stage]
        raise PipesimError(
            f"{where}: the batch does not fit in NPU memory: stage {stage} (blocks {start}-{end - 1}) needs "
            f"{weights[stage] / MEM_GB:.2f} GB of weights + {kv / MEM_GB:.2f} GB of KV cache ({tokens} tokens) = "
            f"{(weights[stage] + kv) / MEM_GB:.2f} GB per NPU but mem_size * mem_util = "
            f"{usable_bytes_per_npu / MEM_GB:.2f} GB; use fewer or shorter requests, a larger tp or pp, or more memory"
        )
