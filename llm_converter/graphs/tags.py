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


# Training: comm_tag = ((microbatch mod TRAINING_MICROBATCH_PERIOD) * TAG_STAGE_STRIDE + boundary) * 2 + direction,
# boundary b = virtual stage b <-> b+1, direction 0 = activation (forward), 1 = gradient (backward). Every
# microbatch of a step has its own tag on each boundary and direction, below TAG_MODULUS for up to 244,140
# microbatches; beyond that the ids wrap, and a microbatch that far apart is never in flight at once.
TRAINING_DIRECTIONS = 2
TRAINING_MICROBATCH_PERIOD = TAG_MODULUS // (TAG_STAGE_STRIDE * TRAINING_DIRECTIONS)


def training_tag(microbatch: int, boundary: int, gradient: bool) -> int:
    """Tag of the activation (stage `boundary` -> `boundary + 1`) or the gradient (`boundary + 1` -> `boundary`)
    of `microbatch` in a training step."""
    if not 0 <= boundary < TAG_STAGE_STRIDE:
        raise PipesimError(
            f"training graph: stage boundary {boundary} outside [0, {TAG_STAGE_STRIDE}); use pp * chunks <= 1024"
        )
    if microbatch < 0:
        raise PipesimError(f"training graph: microbatch {microbatch} is negative; microbatches count from 0")
    slot = (microbatch % TRAINING_MICROBATCH_PERIOD) * TAG_STAGE_STRIDE + boundary
    return slot * TRAINING_DIRECTIONS + (1 if gradient else 0)


# P/D KV transfer (on the cluster link, apart from any iteration's traffic): comm_tag = (transfer_id mod
# KV_TRANSFER_PERIOD) * TAG_STAGE_STRIDE + message, message m = the m-th prefill NPU's share of the KV cache.
KV_TRANSFER_PERIOD = TAG_MODULUS // TAG_STAGE_STRIDE


def kv_transfer_tag(transfer_id: int, message: int) -> int:
    """Tag of message `message` (one prefill NPU's KV share) of P/D KV transfer `transfer_id`."""
    if not 0 <= message < TAG_STAGE_STRIDE:
        raise PipesimError(
            f"KV transfer: message {message} outside [0, {TAG_STAGE_STRIDE}); use <= 1024 NPUs per instance"
        )
    if transfer_id < 0:
        raise PipesimError(f"KV transfer: transfer_id {transfer_id} is negative; ids count from 0")
    return (transfer_id % KV_TRANSFER_PERIOD) * TAG_STAGE_STRIDE + message
