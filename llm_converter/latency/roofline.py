"""Roofline latency: a layer takes as long as its slower resource (tensor cores or device memory), plus a fixed
kernel-launch overhead.

    ns = max(flops / (peak_tflops * 1e3 * compute_efficiency), bytes / (hbm_gbps * memory_efficiency))
         + launch_overhead_ns

The overhead stands for the CPU-side cost of issuing a layer's kernels in eager mode (PyTorch dispatch plus
CUDA launch): the measured bundles bottom out at about 2.4 us for a 1-token RMSNorm on RTXPRO6000 and RTX4090,
a layer whose data movement takes a few nanoseconds. We use 2 us per layer; CUDA-graph serving would be
lower. A layer with no rows to process (0 tokens) does not run and takes 0 ns.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import LayerOp

DEFAULT_LAUNCH_OVERHEAD_NS = 2000


@dataclass(frozen=True)
class RooflineModel:
    hardware: HardwareSpec
    launch_overhead_ns: int = DEFAULT_LAUNCH_OVERHEAD_NS

    def compute_ns(self, flops: int) -> float:
        return flops / self.hardware.flops_per_ns

    def memory_ns(self, bytes_: int) -> float:
        return bytes_ / self.hardware.bytes_per_ns

    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int:
        if op.tokens <= 0:
            return 0
        return round(max(self.compute_ns(op.flops), self.memory_ns(op.bytes))) + self.launch_overhead_ns
