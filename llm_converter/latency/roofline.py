"""Roofline latency per op class: a layer takes as long as its slower resource (tensor cores, or the memory
level that serves its bytes), plus a fixed cost per kernel it launches.

For a layer of op class c (layer_ops.op_class: gemm, attention, elementwise, sampler) with F FLOPs and B bytes:

    compute_ns = F / (peak_tflops * 1e3 * c.compute_efficiency)
    memory_ns  = B / l2_gbps                      if c is elementwise or sampler and B <= L2 (= l2_mb * 1e6)
    memory_ns  = B / (hbm_gbps * c.memory_efficiency)                                          otherwise
    ns         = max(compute_ns, memory_ns) + c.kernels * launch_ns

Why the classes differ:
- The L2 term: elementwise layers and the sampler touch activations the previous kernel has just written, so
  when their traffic fits in L2 it is served at L2 bandwidth. When it does not, it all comes from device
  memory: a buffer larger than the cache, streamed in order, evicts itself before it is re-read (LRU), so
  there is no partial credit. GEMM weights and the KV cache are read once per iteration and the model's
  weights and cache are far larger than L2, so gemm and attention bytes always come from device memory
  (their activations are small next to the weights, or the layer is compute-bound).
- Efficiencies: cuBLAS GEMMs get close to peak; FlashAttention reaches a lower fraction (softmax, causal
  masking, short KV tiles); elementwise and sampler FLOPs are nominal and never bind.
- The fixed cost: in eager mode each kernel costs about launch_ns (PyTorch dispatch + CUDA launch + the
  kernel's ramp and tail; a 1-token RMSNorm measures ~2.4 us). A GEMM or a fused norm is one kernel;
  attention writes the KV cache and runs FlashAttention (~3); the sampler is a chain of ~10 small kernels.

A layer with no rows to process (0 tokens) does not run and takes 0 ns. The factors live in
configs/hardware/*.yaml (fitted with scripts/calibrate_roofline.py where a bundle exists).
"""

from __future__ import annotations

from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import LAYER_OP_CLASS, LayerOp, op_class

# Op classes whose bytes are activations still in L2 (see the module docstring).
L2_CLASSES = frozenset({"elementwise", "sampler"})


class RooflineModel:
    """LatencyModel from `hardware`'s roofline factors; per layer name the class constants are precomputed
    (layer_ns runs thousands of times per second)."""

    __slots__ = ("hardware", "_by_name")

    def __init__(self, hardware: HardwareSpec) -> None:
        self.hardware = hardware
        # layer name -> (FLOPs per ns, device-memory bytes per ns, L2 bytes (0: no L2 term), overhead ns)
        self._by_name: dict[str, tuple[float, float, int, float]] = {
            name: self.class_constants(cls) for name, cls in LAYER_OP_CLASS.items()
        }

    def class_constants(self, cls: str) -> tuple[float, float, int, float]:
        hw = self.hardware
        f = hw.factors(cls)
        return (
            hw.peak_tflops * 1e3 * f.compute_efficiency,
            hw.hbm_gbps * f.memory_efficiency,
            hw.l2_bytes if cls in L2_CLASSES else 0,
            f.kernels * hw.launch_ns,
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
        return round(max(op.flops / flops_per_ns, memory_ns) + overhead_ns)
