"""Latency models: how long one LayerOp of one iteration takes on one NPU, in nanoseconds.

Two implementations: the roofline (any model, any catalog hardware) and measured LLMServingSim profile
bundles (the models and GPUs someone profiled). `make_latency_model` picks the bundle when a directory is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from llm_converter.hardware import HardwareSpec
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import LayerOp
from llm_converter.models import ModelSpec


class LatencyModel(Protocol):
    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int: ...


def make_latency_model(
    model: ModelSpec, hardware: HardwareSpec, tp: int, dtype: str, profile_dir: Path | None = None
) -> LatencyModel:
    """The roofline for `hardware`, or the profile bundle under `profile_dir` (checked against model,
    hardware, tp and dtype)."""
    if profile_dir is None:
        from llm_converter.latency.roofline import RooflineModel

        return RooflineModel(hardware)
    from llm_converter.latency.profile_bundle import ProfileBundleModel

    return ProfileBundleModel.load(Path(profile_dir), model, tp, dtype, hardware=hardware)


__all__ = ["LatencyModel", "make_latency_model"]
