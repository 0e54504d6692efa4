"""Roofline latency against hand-computed compute- and memory-bound cases."""

from __future__ import annotations

from llm_converter.hardware import HardwareSpec, get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.latency.roofline import DEFAULT_LAUNCH_OVERHEAD_NS, RooflineModel
from llm_converter.layer_ops import LayerOp, iteration_ops
from llm_converter.models import get_model

# 100 TFLOPS at 50% = 50,000 FLOPs/ns; 1000 GB/s at 50% = 500 bytes/ns.
HW = HardwareSpec("test", 100.0, 10.0, 1000.0, 0.5, 0.5, 100.0, 0.0)
IT = Iteration(decode=(1,))


def test_compute_bound() -> None:
    op = LayerOp("gate_up_proj", "block", 64, flops=5_000_000_000, bytes=1_000_000, params=0, tp_all_reduce=False)
    assert RooflineModel(HW).layer_ns(op, IT) == 100_000 + DEFAULT_LAUNCH_OVERHEAD_NS


def test_memory_bound() -> None:
    op = LayerOp("lm_head", "post", 1, flops=1_000_000, bytes=5_000_000, params=0, tp_all_reduce=False)
    assert RooflineModel(HW, launch_overhead_ns=0).layer_ns(op, IT) == 10_000


def test_zero_rows_take_no_time() -> None:
    op = LayerOp("qkv_proj", "block", 0, flops=0, bytes=1_000_000, params=0, tp_all_reduce=False)
    assert RooflineModel(HW).layer_ns(op, IT) == 0


def test_llama_decode_gate_up_streams_weights() -> None:
    # One decode token on H100: gate_up reads 2*4096*14336 bf16 weights; bytes / (3350 GB/s * eff) dominates.
    h100 = get_hardware("H100-SXM")
    model = get_model("Llama-3.1-8B")
    latency = make_latency_model(model, h100, 1, "bfloat16")
    _, block, _ = iteration_ops(model, IT, 1, "bfloat16")
    gate_up = next(o for o in block if o.name == "gate_up_proj")
    expected = round(gate_up.bytes / (3350 * h100.memory_efficiency)) + DEFAULT_LAUNCH_OVERHEAD_NS
    assert latency.layer_ns(gate_up, IT) == expected
    # A 4096-token prefill is compute-bound: FLOPs / (989 TFLOPS * eff).
    big = Iteration(prefill=(PrefillChunk(4096),))
    _, block, _ = iteration_ops(model, big, 1, "bfloat16")
    gate_up = next(o for o in block if o.name == "gate_up_proj")
    expected = round(2 * 4096 * 4096 * 28672 / (989e3 * h100.compute_efficiency)) + DEFAULT_LAUNCH_OVERHEAD_NS
    assert latency.layer_ns(gate_up, big) == expected
