"""The one home of comm_tag arithmetic: ASTRA-Sim's tag modulus and how pipesim packs ids into tags.

ASTRA-Sim matches a send with its recv on (src, dst, tag mod TAG_MODULUS, size) and stores tags as int32, so
every tag pipesim writes stays below TAG_MODULUS.
"""

from __future__ import annotations

from llm_converter.errors import PipesimError

# ASTRA-Sim reduces comm_tag modulo 5e8 before matching send and recv (and keeps it in an int32).
TAG_MODULUS = 500_000_000

# Serving: comm_tag = (iteration_id mod TAG_ITERATION_PERIOD) * TAG_STAGE_STRIDE + boundary, boundary s = stage
# s -> s+1. Iteration ids wrap after 488,281 iterations; only pp iterations are ever in flight, so wrapped tags
# never meet.
TAG_STAGE_STRIDE = 1024
TAG_ITERATION_PERIOD = TAG_MODULUS // TAG_STAGE_STRIDE


def match_tag(tag: int) -> int:
    """The part of a tag ASTRA-Sim compares."""
    return tag % TAG_MODULUS


def activation_tag(iteration_id: int, boundary: int) -> int:
    """Tag of the activation sent from stage `boundary` to stage `boundary + 1` in iteration `iteration_id`."""
    if not 0 <= boundary < TAG_STAGE_STRIDE:
        raise PipesimError(f"serving graph: stage boundary {boundary} outside [0, {TAG_STAGE_STRIDE}); use pp <= 1024")
    if iteration_id < 0:
        raise PipesimError(f"serving graph: iteration_id {iteration_id} is negative; ids count from 0")
    return (iteration_id % TAG_ITERATION_PERIOD) * TAG_STAGE_STRIDE + boundary
