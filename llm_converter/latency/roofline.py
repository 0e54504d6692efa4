"""Roofline latency per op class: a layer takes as long as its slower resource (tensor cores, or the memory
level that serves its bytes), plus a fixed cost per kernel it launches.

For a layer of op class c (layer_ops.op_class: gemm, attention, elementwise, sampler) with F FLOPs and B bytes:

    compute_ns = F / (peak_tflops * 1e3 * c.compute_efficiency)
    memory_ns  = B / l2_gbps                      if c is elementwise or sampler and B <= L2
    memory_ns  = B / (hbm_gbps * c.memory_efficiency)                                          otherwise
    ns         = max(compute_ns, memory_ns) / occupancy + calls * c.kernels * launch_ns

with L2 = l2_mb * 1e6 * l2_fraction, and for attention F = the tile FLOPs (LayerOp.tile_flops: query rows
padded to FlashAttention's 64-row tiles), B counting the KV re-reads the kernel does (layer_ops.attention_work)
and occupancy = ctas / (sms * ceil(ctas / sms)) (1 for the other classes).

Why the terms:
- The L2 term: elementwise layers and the sampler touch activations the previous kernel has just written, so
  when their traffic fits in L2 it is served at L2 bandwidth. When it does not, it all comes from device
  memory: a buffer larger than the cache, streamed in order, evicts itself before it is re-read (LRU), so
  there is no partial credit. l2_fraction: only part of the datasheet L2 holds such a buffer (the L2 is split
  in two partitions with duplicated lines, and set conflicts evict early), fitted per GPU.
  GEMM weights and the KV cache are read once per iteration and far larger than L2, so gemm and attention
  bytes always come from device memory.
- Occupancy: a FlashAttention thread block runs on one SM; a grid of ctas blocks runs in ceil(ctas / sms)
  waves, each as long as one block, so a small prefill or a single long sequence leaves SMs idle.
- Efficiencies: cuBLAS GEMMs get close to peak; FlashAttention reaches a lower fraction (softmax, causal
  masking, short KV tiles); elementwise and sampler FLOPs are nominal and never bind.
- The fixed cost: in eager mode each kernel costs about launch_ns (PyTorch dispatch + CUDA launch + the
  kernel's ramp and tail; a 1-token RMSNorm measures ~2.4 us). A GEMM or a fused norm is one kernel;
  attention writes the KV cache and runs FlashAttention (~3); the sampler is a chain of ~10 small kernels.
  `calls`: a layer that is several calls of its class's kernels (LAYER_CALLS: Qwen3's qk_norm is one RMSNorm
  on q and one on k) pays the fixed cost per call.

A layer with no rows to process (0 tokens) does not run and takes 0 ns. The factors live in
configs/hardware/*.yaml (fitted with scripts/calibrate_roofline.py where a bundle exists).
"""

from __future__ import annotations

from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import LAYER_OP_CLASS, LayerOp, op_class

# Op classes whose bytes are activations still in L2 (see the module docstring).
L2_CLASSES = frozenset({"elementwise", "sampler"})
# Layers that are several calls of their class's kernel (vLLM's Qwen3 applies q_norm and k_norm separately).
LAYER_CALLS: dict[str, int] = {"qk_norm": 2}


class RooflineModel:
    """LatencyModel from `hardware`'s roofline factors; per layer name the class constants are precomputed
    (layer_ns runs thousands of times per second)."""

    __slots__ = ("hardware", "_by_name")

    def __init__(self, hardware: HardwareSpec) -> None:
        self.hardware = hardware
        # layer name -> (FLOPs per ns, device-memory bytes per ns, L2 bytes (0: no L2 term), overhead ns)
        self._by_name: dict[str, tuple[float, float, int, float]] = {
            name: self.class_constants(cls, LAYER_CALLS.get(name, 1)) for name, cls in LAYER_OP_CLASS.items()
        }

    def class_constants(self, cls: str, calls: int = 1) -> tuple[float, float, int, float]:
        hw = self.hardware
        f = hw.factors(cls)
        return (
            hw.peak_tflops * 1e3 * f.compute_efficiency,
            hw.hbm_gbps * f.memory_efficiency,
            hw.l2_bytes if cls in L2_CLASSES else 0,
            calls * f.kernels * hw.launch_ns,
        )

    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int:
        if op.tokens <= 0:
            return 0
        constants = self._by_name.get(op.name)
        if constants is None:
            constants = self.class_constants(op_class(op.name))  # raises PipesimError for an unknown layer
        flops_per_ns, bytes_per_ns, l2_bytes, overhead_ns = constants
        bytes_ = op.bytes
        memory_ns = bytes_ / self.hardware.l2_gbps if bytes_ <= l2_bytes else bytes_ / bytes_per_ns
        busy_ns = max((op.tile_flops or op.flops) / flops_per_ns, memory_ns)
        ctas = op.ctas
        if ctas:
            sms = self.hardware.sms
            busy_ns *= sms * -(-ctas // sms) / ctas  # / occupancy: the last wave's idle SMs
        return round(busy_ns + overhead_ns)
