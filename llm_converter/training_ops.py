"""Training work of every layer for one microbatch on one tensor-parallel rank, the step lists each pipeline
stage runs, and the memory a stage holds.

For a microbatch of b sequences of s tokens (T = b*s rows) each layer has three pieces of work, in
torch.distributed.pipelining's letters and the zero-bubble paper's split (Qi et al. 2023):
- F: the forward (layer_ops' serving op for b prefill chunks of s tokens, with lm_head over all T tokens and
  a vocab-parallel cross-entropy in place of the sampler);
- I: the input gradient (dX = dY W^T for a linear: the forward's FLOPs; FlashAttention-2's backward: 2.5x its
  forward, five matmuls instead of two; elementwise layers: twice the forward's traffic);
- W: the weight gradient (dW = X^T dY: the forward's FLOPs, accumulated into fp32 main_grad as Megatron's
  gradient_accumulation_fusion does; the embedding's scatter-add).
B (full backward) = I + W, about 2x the forward FLOPs.

Every piece is a `LayerOp` timed by the roofline (llm_converter/latency/roofline.py) under its layer's op
class. GEMMs carry their output-tile count as `ctas`, so the roofline's occupancy term charges the last
wave's idle SMs (tile and wave quantization; 256x128 tiles, NVIDIA's GEMM performance guide).

TP collectives follow Megatron-LM (Shoeybi et al. 2019, Korthikanti et al. 2022): without sequence
parallelism an all-reduce after the row-parallel o_proj/down_proj forward and after the column-parallel
qkv/gate_up input gradient; with it, an all-gather before the column-parallel forward and a reduce-scatter
after the row-parallel one (mirrored in the backward), and the norms run on T/tp tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType
from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency.roofline import RooflineModel
from llm_converter.layer_ops import LayerOp, gemm_dims, iteration_ops
from llm_converter.models import ModelSpec, dtype_bytes

RECOMPUTE_MODES = ("none", "selective", "full")

# cuBLAS tile of a large bf16 GEMM (rows x columns of the output per thread block).
GEMM_TILE_ROWS = 256
GEMM_TILE_COLS = 128
SPLIT_K_MIN_DEPTH = 256  # split-K slices keep at least this much of the reduction dimension
# FlashAttention-2's backward runs five matmuls per tile where the forward runs two.
ATTENTION_BACKWARD_FACTOR = 2.5
CROSS_ENTROPY_FLOPS = 5  # per logit: max, exp, sum, divide, pick
FP32 = 4
# Mixed-precision Adam as Megatron-LM counts it (docs/source/distrib_optimizer.md): bf16 weights (2 bytes),
# fp32 gradient buffer (4), fp32 master weights + Adam m + v (12, sharded over DP by the distributed optimizer).
WEIGHT_BYTES_PER_PARAM = 2
GRAD_BYTES_PER_PARAM = 4
OPTIMIZER_BYTES_PER_PARAM = 12
# Adam step traffic per parameter it updates: read grad (4), read+write master, m, v (24), write bf16 weight (2).
OPTIMIZER_STEP_BYTES_PER_PARAM = 30

# Layers whose input gradient is a partial sum across TP ranks (column-parallel: the backward of Megatron's f).
TP_BACKWARD_REDUCE_LAYERS = frozenset({"qkv_proj", "gate_up_proj", "up_proj", "experts"})
# Column-parallel layers whose input is gathered along the sequence with sequence parallelism.
TP_GATHER_LAYERS = TP_BACKWARD_REDUCE_LAYERS
GEMM_LAYERS = frozenset({"qkv_proj", "o_proj", "gate_up_proj", "up_proj", "down_proj", "lm_head", "moe_gate"})
NORM_LAYERS = frozenset({"input_layernorm", "post_attention_layernorm", "final_layernorm"})


@dataclass(frozen=True, slots=True)
class TpComm:
    """A TP collective next to a layer's work: comm_size as ASTRA-Sim reads it (all-gather: the input shard)."""

    kind: CollectiveType
    size: int


@dataclass(frozen=True, slots=True)
class TrainingLayer:
    """One layer's training work on one TP rank for one microbatch."""

    name: str
    scope: str  # "pre" | "block" | "post"
    params: int  # per TP rank
    forward: LayerOp
    input_grad: LayerOp | None  # None: nothing to propagate (the embedding)
    weight_grad: LayerOp | None  # None: no weights (attention, activations)
    forward_before: TpComm | None = None  # all-gather of the input (sequence parallel)
    forward_after: TpComm | None = None  # all-reduce / reduce-scatter of the output
    backward_before: TpComm | None = None  # all-gather of the output gradient (sequence parallel)
    backward_after: TpComm | None = None  # all-reduce / reduce-scatter of the input gradient


def microbatch_iteration(micro_batch: int, seq_len: int) -> Iteration:
    """b sequences of s tokens as layer_ops sees them: b prefill chunks with no cached context."""
    return Iteration(prefill=tuple(PrefillChunk(seq_len) for _ in range(micro_batch)))


def _tiles(rows: int, cols: int) -> int:
    return -(-rows // GEMM_TILE_ROWS) * -(-cols // GEMM_TILE_COLS)


def gemm_ctas(rows: int, cols: int, depth: int, sms: int) -> int:
    """Thread blocks of a rows x cols output GEMM over `depth`: one per output tile, and when the tiles leave SMs
    idle, cuBLAS's split-K cuts the depth into up to ceil(sms / tiles) slices of at least SPLIT_K_MIN_DEPTH."""
    tiles = _tiles(rows, cols)
    if tiles >= sms:
        return tiles
    return tiles * max(1, min(-(-sms // tiles), depth // SPLIT_K_MIN_DEPTH))


def _scaled(op: LayerOp, factor: float, name: str | None = None) -> LayerOp:
    return replace(
        op,
        name=name or op.name,
        flops=round(op.flops * factor),
        bytes=round(op.bytes * factor),
        tile_flops=round(op.tile_flops * factor),
    )


def check_training_shape(model: ModelSpec, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool) -> None:
    if micro_batch < 1:
        raise PipesimError(f"--microbatch-size: {micro_batch}; give at least 1 sequence per microbatch")
    if seq_len < 1:
        raise PipesimError(f"--seq-len: {seq_len}; give at least 1 token per sequence")
    if model.position_embedding == "learned" and seq_len > model.max_position_embeddings:
        raise PipesimError(
            f"--seq-len: {seq_len} tokens but {model.name} has {model.max_position_embeddings} learned positions; "
            f"use --seq-len <= {model.max_position_embeddings}"
        )
    if sequence_parallel and (micro_batch * seq_len) % tp:
        raise PipesimError(
            f"--sequence-parallel: {micro_batch * seq_len} tokens per microbatch do not split over tp = {tp}; "
            "choose --seq-len * --microbatch-size divisible by --tp"
        )


def training_layers(
    model: ModelSpec,
    micro_batch: int,
    seq_len: int,
    tp: int,
    dtype: str,
    sequence_parallel: bool = False,
    sms: int = 0,
) -> tuple[list[TrainingLayer], list[TrainingLayer], list[TrainingLayer]]:
    """(pre, ONE decoder block, post) training layers of one microbatch on one TP rank. With `sms` (the GPU's SM
    count) GEMMs carry their thread-block count for the roofline's wave quantisation; 0: they fill the GPU."""
    check_training_shape(model, micro_batch, seq_len, tp, sequence_parallel)
    iteration = microbatch_iteration(micro_batch, seq_len)
    pre_ops, block_ops, post_ops = iteration_ops(model, iteration, tp, dtype)
    b = dtype_bytes(dtype)
    tokens = iteration.tokens
    h = model.hidden_size
    hidden_bytes = tokens * h * b
    sp = sequence_parallel and tp > 1
    vocab = -(-model.vocab_size // tp)

    def comms(name: str, reduce_after: bool) -> dict[str, TpComm | None]:
        if tp == 1:
            return {}
        out: dict[str, TpComm | None] = {}
        if reduce_after:  # row-parallel output (Megatron's g): forward reduce, backward gather (with SP)
            out["forward_after"] = TpComm(
                CollectiveType.REDUCE_SCATTER if sp else CollectiveType.ALL_REDUCE, hidden_bytes
            )
            if sp:
                out["backward_before"] = TpComm(CollectiveType.ALL_GATHER, hidden_bytes // tp)
        if name in TP_BACKWARD_REDUCE_LAYERS:  # column-parallel input (Megatron's f)
            if sp:
                out["forward_before"] = TpComm(CollectiveType.ALL_GATHER, hidden_bytes // tp)
            out["backward_after"] = TpComm(
                CollectiveType.REDUCE_SCATTER if sp else CollectiveType.ALL_REDUCE, hidden_bytes
            )
        return out

    def layer(op: LayerOp) -> TrainingLayer:
        name = op.name
        if sp and name in NORM_LAYERS:
            op = _scaled(op, 1 / tp)
        if name in GEMM_LAYERS or name == "experts":
            d_in, d_out = gemm_dims(model, name, tp, dtype)
            rows = tokens * model.experts_per_token if name == "experts" else tokens

            def ctas(out_rows: int, out_cols: int, depth: int) -> int:
                return gemm_ctas(out_rows, out_cols, depth, sms) if sms else 0

            return TrainingLayer(
                name,
                op.scope,
                op.params,
                replace(op, ctas=ctas(rows, d_out, d_in)),  # Y = X W: T x d_out over d_in
                replace(op, ctas=ctas(rows, d_in, d_out)),  # dX = dY W^T: T x d_in over d_out
                # dW = X^T dY: d_in x d_out over T, accumulated into the fp32 main_grad (read + write)
                replace(op, bytes=op.bytes + op.params * 2 * FP32, ctas=ctas(d_in, d_out, rows)),
                **comms(name, op.tp_all_reduce),
            )
        if name == "attention":
            # FlashAttention-2's backward: reads q, k, v, out, dout and writes dq, dk, dv.
            backward = replace(_scaled(op, ATTENTION_BACKWARD_FACTOR), bytes=2 * op.bytes)
            return TrainingLayer(name, op.scope, 0, op, backward, None)
        if name == "embedding":
            # No input gradient; the weight gradient scatter-adds T rows of dY into the fp32 gradient.
            grad = replace(op, flops=tokens * h, bytes=tokens * h * (b + 2 * FP32))
            return TrainingLayer(name, op.scope, op.params, op, None, grad)
        # Elementwise (norms, rotary, activation, qk_norm): the backward reads input and output gradient and
        # writes the input gradient (norm weight gradients ride along).
        return TrainingLayer(name, op.scope, op.params, op, _scaled(op, 2.0), None)

    pre = [layer(op) for op in pre_ops]
    block = [layer(op) for op in block_ops]
    final_norm = next(op for op in post_ops if op.name == "final_layernorm")
    head_params = next(op.params for op in post_ops if op.name == "lm_head")
    # Training computes logits for every token (serving: one per sequence); a tied head reads the embedding.
    lm_head = LayerOp(
        "lm_head", "post", tokens, 2 * tokens * h * vocab, (vocab * h + tokens * (h + vocab)) * b, head_params, False
    )
    logits = tokens * vocab
    cross_entropy = LayerOp(
        "cross_entropy", "post", tokens, CROSS_ENTROPY_FLOPS * logits, logits * (b + FP32), 0, False
    )
    post = [
        layer(final_norm),
        layer(lm_head),
        TrainingLayer("cross_entropy", "post", 0, cross_entropy, cross_entropy, None),
    ]
    return pre, block, post


# ---------------------------------------------------------------------------------------------------------
# Stage step lists
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compute:
    """GPU work, consecutive layers merged: ns on one TP rank, FLOPs and bytes for Chakra's num_ops/tensor_size.
    `grads_from`: the lowest layer position (in the stage's forward order) whose weight gradient is complete once
    this step ends (-1: none), which is when a DP gradient bucket starting there may be reduced."""

    name: str
    ns: int
    flops: int
    bytes: int
    grads_from: int = -1


@dataclass(frozen=True, slots=True)
class TpCollective:
    name: str
    kind: CollectiveType
    size: int


Step = Compute | TpCollective


@dataclass(frozen=True, slots=True)
class StageSteps:
    """What one (virtual) stage runs for one microbatch, per computation letter."""

    forward: tuple[Step, ...]
    backward: tuple[Step, ...]  # B: input and weight gradients together (with recompute)
    input_grad: tuple[Step, ...]  # I (with recompute)
    weight_grad: tuple[Step, ...]  # W

    def for_letter(self, letter: str) -> tuple[Step, ...]:
        return {"F": self.forward, "B": self.backward, "I": self.input_grad, "W": self.weight_grad}[letter]


def _group(name: str) -> str:
    """`b12` for a block's steps (`b12.qkv_proj.W`, `recompute.b12.attention`), the layer name otherwise."""
    head = name.removeprefix("recompute.").split(".")[0]
    return head


def _merge(steps: list[Step], per_block: bool = False) -> tuple[Step, ...]:
    """Consecutive Compute steps become one (ns, FLOPs, bytes summed; the lowest grads_from kept). With
    `per_block`, only within one block (or one pre/post layer): a backward keeps a node boundary wherever a DP
    gradient bucket may start its reduction."""
    merged: list[Step] = []
    for step in steps:
        last = merged[-1] if merged else None
        if (
            isinstance(step, Compute)
            and isinstance(last, Compute)
            and (not per_block or _group(last.name.split("..")[-1]) == _group(step.name))
        ):
            first_name = last.name.split("..")[0]
            grads = [g for g in (last.grads_from, step.grads_from) if g >= 0]
            merged[-1] = Compute(
                f"{first_name}..{step.name}",
                last.ns + step.ns,
                last.flops + step.flops,
                last.bytes + step.bytes,
                min(grads) if grads else -1,
            )
        else:
            merged.append(step)
    return tuple(merged)


def stage_layer_list(
    pre: list[TrainingLayer],
    block: list[TrainingLayer],
    post: list[TrainingLayer],
    blocks: range,
    first: bool,
    last: bool,
) -> list[tuple[str, TrainingLayer]]:
    """(label, layer) of a stage in forward order: labels like `b12.qkv_proj`, `embedding`, `lm_head`."""
    out: list[tuple[str, TrainingLayer]] = []
    if first:
        out += [(layer.name, layer) for layer in pre]
    for index in blocks:
        out += [(f"b{index}.{layer.name}", layer) for layer in block]
    if last:
        out += [(layer.name, layer) for layer in post]
    return out


def build_stage_steps(
    layers: list[tuple[str, TrainingLayer]], roofline: RooflineModel, recompute: str = "none"
) -> StageSteps:
    """The stage's F, B, I and W step lists, timed by the roofline, with recomputation added to B and I."""
    if recompute not in RECOMPUTE_MODES:
        raise PipesimError(f"--recompute: {recompute!r}; choose one of {', '.join(RECOMPUTE_MODES)}")
    iteration = Iteration()  # the roofline times a LayerOp from its own fields

    def timed(label: str, op: LayerOp, grads_from: int = -1) -> Compute:
        return Compute(label, roofline.layer_ns(op, iteration), op.flops, op.bytes, grads_from)

    def comm(label: str, tp_comm: TpComm | None) -> list[Step]:
        if tp_comm is None:
            return []
        return [TpCollective(label, tp_comm.kind, tp_comm.size)]

    def forward_of(label: str, layer: TrainingLayer, prefix: str = "") -> list[Step]:
        return [
            *comm(f"{prefix}{label}_ag", layer.forward_before),
            timed(f"{prefix}{label}", layer.forward),
            *comm(f"{prefix}{label}_{_comm_suffix(layer.forward_after)}", layer.forward_after),
        ]

    forward: list[Step] = []
    for label, layer in layers:
        forward += forward_of(label, layer)

    # Which block each position belongs to, for full recompute (Megatron recomputes transformer layers only).
    block_of = [label.split(".")[0] if label.startswith("b") and "." in label else "" for label, _ in layers]
    backward: list[Step] = []
    input_grad: list[Step] = []
    weight_grad: list[Step] = []
    for position in range(len(layers) - 1, -1, -1):
        label, layer = layers[position]
        block = block_of[position]
        recomputed: list[Step] = []
        if recompute == "full" and block and (position == len(layers) - 1 or block_of[position + 1] != block):
            # Entering a block from its end: rerun the block's forward first.
            for p, (lbl, lay) in enumerate(layers):
                if block_of[p] == block:
                    recomputed += forward_of(lbl, lay, prefix="recompute.")
        elif recompute == "selective" and layer.name == "attention":
            recomputed.append(timed(f"recompute.{label}", layer.forward))
        before = comm(f"{label}_grad_ag", layer.backward_before)
        after = comm(f"{label}_grad_{_comm_suffix(layer.backward_after)}", layer.backward_after)
        ig = [timed(f"{label}.I", layer.input_grad)] if layer.input_grad is not None else []
        wg = [timed(f"{label}.W", layer.weight_grad, grads_from=position)] if layer.weight_grad is not None else []
        backward += recomputed + before + ig + after + wg
        input_grad += recomputed + before + ig + after
        weight_grad += wg
    return StageSteps(_merge(forward), _merge(backward, True), _merge(input_grad), _merge(weight_grad, True))


def _comm_suffix(tp_comm: TpComm | None) -> str:
    if tp_comm is None:
        return ""
    return {CollectiveType.ALL_REDUCE: "ar", CollectiveType.REDUCE_SCATTER: "rs", CollectiveType.ALL_GATHER: "ag"}[
        tp_comm.kind
    ]


def fixed_stage_steps(forward_us: float, backward_us: float, weight_us: float | None) -> StageSteps:
    """`--stage-time-us F,B[,W]`: one node per action. With W, B is the input gradient and a full backward
    takes B + W; without it, I and W each take half of B."""
    f = round(forward_us * 1000)
    if weight_us is None:
        full = round(backward_us * 1000)
        i = full // 2
        w = full - i
    else:
        i = round(backward_us * 1000)
        w = round(weight_us * 1000)
        full = i + w
    return StageSteps(
        (Compute("F", f, 1, 1),),
        (Compute("B", full, 1, 1, grads_from=0),),
        (Compute("I", i, 1, 1),),
        (Compute("W", w, 1, 1, grads_from=0),),
    )


def step_ns(steps: tuple[Step, ...]) -> int:
    return sum(step.ns for step in steps if isinstance(step, Compute))


# ---------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamMemory:
    """Bytes of one NPU for its parameters: bf16 weights, fp32 gradients, fp32 master weights + Adam state."""

    params: int
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total(self) -> int:
        return self.weight_bytes + self.grad_bytes + self.optimizer_bytes


def param_memory(params_per_npu: int, dp: int, distributed_optimizer: bool) -> ParamMemory:
    """Megatron-LM's count: 2 + 4 + 12 bytes per parameter, the 12 sharded over DP with the distributed
    optimizer (6 + 12/d bytes per parameter)."""
    optimizer = OPTIMIZER_BYTES_PER_PARAM * params_per_npu
    if distributed_optimizer:
        optimizer = -(-optimizer // dp)
    return ParamMemory(
        params_per_npu, WEIGHT_BYTES_PER_PARAM * params_per_npu, GRAD_BYTES_PER_PARAM * params_per_npu, optimizer
    )


def layer_activation_bytes(
    model: ModelSpec, micro_batch: int, seq_len: int, tp: int, sequence_parallel: bool, recompute: str
) -> int:
    """Activations one transformer layer keeps for one microbatch on one TP rank (Korthikanti et al. 2022,
    eqs. 2-6; 16-bit activations, 1-byte dropout masks, GPT's 4h MLP):
    none: sbh(10 + 24/t + 5as/(ht)); with SP sbh(34/t + 5as/(ht)); selective: sbh(10 + 24/t), SP 34sbh/t;
    full: 2sbh (the layer input only), SP 2sbh/t."""
    s, b, h, a, t = seq_len, micro_batch, model.hidden_size, model.num_attention_heads, tp
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh // (t if sequence_parallel else 1)
    attention_scores = 5 * a * s * sbh // (h * t)
    if sequence_parallel:
        base = 34 * sbh // t
    else:
        base = 10 * sbh + 24 * sbh // t
    return base if recompute == "selective" else base + attention_scores


def stage_activation_bytes(
    model: ModelSpec,
    num_layers: int,
    first: bool,
    last: bool,
    micro_batch: int,
    seq_len: int,
    tp: int,
    sequence_parallel: bool,
    recompute: str,
) -> int:
    """One microbatch's activations on one NPU of a stage: its layers, plus the embedding's dropout mask on the
    first stage (sbh bytes) and, on the last, the final norm and lm_head inputs (4sbh) and the fp32 logits of the
    cross-entropy (4sbV/t) (Korthikanti et al. 2022, section 4.3)."""
    sbh = seq_len * micro_batch * model.hidden_size
    split = tp if sequence_parallel else 1
    total = num_layers * layer_activation_bytes(model, micro_batch, seq_len, tp, sequence_parallel, recompute)
    if first:
        total += sbh // split
    if last:
        total += 4 * sbh // split + 4 * seq_len * micro_batch * (-(-model.vocab_size // tp))
    return total


# ---------------------------------------------------------------------------------------------------------
# Model FLOPs (Megatron-LM's count)
# ---------------------------------------------------------------------------------------------------------


def megatron_model_flops(model: ModelSpec, sequences: int, seq_len: int, recompute: str = "none") -> float:
    """FLOPs of one step of `sequences` sequences as Megatron-LM's num_floating_point_operations counts them
    (12 B s L h^2 (attention + MLP + logits terms), non-causal attention, forward + two backward GEMMs).
    With recompute, the recomputed forward work is added (hardware FLOPs: full adds a fourth pass over the
    layers, Narayanan et al. 2021's 96 B s L h^2 (...); selective adds the attention core once more)."""
    h, layers = model.hidden_size, model.num_layers
    query_ratio = model.q_size / h
    attention = (1 + model.num_kv_heads / model.num_attention_heads + seq_len / h) * query_ratio
    gated = 1.5 if model.gated_mlp else 1.0
    mlp = model.expert_intermediate_size / h * (model.experts_per_token if model.is_moe else 1) * gated
    logits = model.vocab_size / (2 * layers * h)
    per_pass = 4 * sequences * seq_len * layers * h * h  # 12 / 3: one of the three GEMM passes
    flops = 3 * per_pass * (attention + mlp + logits)
    if recompute == "full":
        flops += per_pass * (attention + mlp)
    elif recompute == "selective":
        flops += per_pass * (seq_len / h) * query_ratio
    return flops


def optimizer_step_op(params_per_npu: int, dp: int, distributed_optimizer: bool) -> LayerOp:
    """The Adam update of the parameters one NPU owns (all of its stage's, or its DP shard), memory-bound."""
    owned = -(-params_per_npu // dp) if distributed_optimizer else params_per_npu
    return LayerOp("optimizer_step", "post", owned, 10 * owned, OPTIMIZER_STEP_BYTES_PER_PARAM * owned, 0, False)


def optimizer_step_ns(hardware: HardwareSpec, params_per_npu: int, dp: int, distributed_optimizer: bool) -> int:
    return RooflineModel(hardware).layer_ns(optimizer_step_op(params_per_npu, dp, distributed_optimizer), Iteration())
