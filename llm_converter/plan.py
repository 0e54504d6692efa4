"""The parallel plan: TP x PP x DP degrees, which decoder blocks each pipeline stage runs, and NPU ids.

NPU id = dp_rank * tp * pp + stage * tp + tp_rank, so the TP ranks of a stage are consecutive (they share a
node's fast links) and a DP replica is one contiguous range of ids. Stage s runs blocks [start, end); the
first stage also runs the embedding, the last the final norm, lm_head and sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from llm_converter.errors import PipesimError


class RankCoords(NamedTuple):
    stage: int
    tp_rank: int
    dp_rank: int


@dataclass(frozen=True, slots=True)
class ParallelPlan:
    """TP, PP and DP degrees plus the contiguous block range [start, end) of every stage."""

    tp: int
    pp: int
    dp: int = 1
    stage_blocks: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for field_name in ("tp", "pp", "dp"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PipesimError(f"parallel plan: {field_name} = {value!r}; it must be an integer >= 1")
        if len(self.stage_blocks) != self.pp:
            raise PipesimError(
                f"parallel plan: stage_blocks has {len(self.stage_blocks)} ranges for pp = {self.pp}; "
                "give one [start, end) block range per stage"
            )
        expected_start = 0
        for stage, (start, end) in enumerate(self.stage_blocks):
            if start != expected_start or end <= start:
                raise PipesimError(
                    f"parallel plan: stage {stage} runs blocks [{start}, {end}); stages must be non-empty, "
                    f"contiguous and start at block 0 (expected start {expected_start})"
                )
            expected_start = end

    @classmethod
    def even(cls, tp: int, pp: int, num_blocks: int, dp: int = 1) -> ParallelPlan:
        """Blocks split as evenly as possible, the larger stages first (used when no cost is known)."""
        check_stage_count(pp, num_blocks)
        base, extra = divmod(num_blocks, pp)
        bounds = []
        start = 0
        for stage in range(pp):
            end = start + base + (1 if stage < extra else 0)
            bounds.append((start, end))
            start = end
        return cls(tp=tp, pp=pp, dp=dp, stage_blocks=tuple(bounds))

    @property
    def npus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def num_blocks(self) -> int:
        return self.stage_blocks[-1][1]

    def blocks_of(self, stage: int) -> range:
        start, end = self.stage_blocks[stage]
        return range(start, end)

    def stage_of_block(self, block: int) -> int:
        for stage, (start, end) in enumerate(self.stage_blocks):
            if start <= block < end:
                return stage
        raise PipesimError(f"parallel plan: block {block} is outside [0, {self.num_blocks})")

    def rank(self, stage: int, tp_rank: int, dp_rank: int = 0) -> int:
        if not (0 <= stage < self.pp and 0 <= tp_rank < self.tp and 0 <= dp_rank < self.dp):
            raise PipesimError(
                f"parallel plan: (stage {stage}, tp_rank {tp_rank}, dp_rank {dp_rank}) is outside "
                f"pp = {self.pp}, tp = {self.tp}, dp = {self.dp}"
            )
        return dp_rank * self.tp * self.pp + stage * self.tp + tp_rank

    def coords(self, rank: int) -> RankCoords:
        if not 0 <= rank < self.npus:
            raise PipesimError(f"parallel plan: NPU {rank} is outside [0, {self.npus})")
        dp_rank, inside = divmod(rank, self.tp * self.pp)
        stage, tp_rank = divmod(inside, self.tp)
        return RankCoords(stage, tp_rank, dp_rank)

    def tp_group(self, stage: int, dp_rank: int = 0) -> list[int]:
        first = self.rank(stage, 0, dp_rank)
        return list(range(first, first + self.tp))

    def pg_name(self, stage: int, dp_rank: int = 0) -> str:
        """Communicator-group id of a stage's TP group: "1", "2", ... ("0" would mean all NPUs in ASTRA-Sim)."""
        self.rank(stage, 0, dp_rank)
        return str(1 + dp_rank * self.pp + stage)

    def comm_groups(self) -> dict[str, list[int]]:
        """{pg_name: ranks} of every TP group; empty when tp == 1 (no collective runs on one rank)."""
        if self.tp == 1:
            return {}
        return {
            self.pg_name(stage, dp_rank): self.tp_group(stage, dp_rank)
            for dp_rank in range(self.dp)
            for stage in range(self.pp)
        }


def check_stage_count(pp: int, num_blocks: int) -> None:
    if not isinstance(pp, int) or pp < 1:
        raise PipesimError(f"parallel plan: pp = {pp!r}; it must be an integer >= 1")
    if pp > num_blocks:
        raise PipesimError(
            f"parallel plan: pp = {pp} is more than the model's {num_blocks} decoder layers; "
            f"use pp <= {num_blocks} (every stage needs at least one layer)"
        )


def split_stages(
    block_costs: Sequence[float], pp: int, pre_cost: float = 0, post_cost: float = 0
) -> tuple[tuple[int, int], ...]:
    """Contiguous split of blocks into pp non-empty stages minimising the slowest stage's cost.

    The first stage also pays `pre_cost` (embedding), the last `post_cost` (final norm, lm_head, sampler).
    Among optimal splits, the one that fills earlier stages first is returned (deterministic).
    """
    n = len(block_costs)
    check_stage_count(pp, n)
    for index, cost in enumerate(block_costs):
        if cost < 0:
            raise PipesimError(f"stage split: block {index} has negative cost {cost}; costs must be >= 0")
    if pre_cost < 0 or post_cost < 0:
        raise PipesimError(f"stage split: pre_cost {pre_cost} and post_cost {post_cost} must be >= 0")
    # Integer costs (nanoseconds) are summed exactly; others as floats, in the same order every time.
    exact = all(isinstance(cost, int) for cost in (*block_costs, pre_cost, post_cost))
    prefix: list[float] = [0] * (n + 1) if exact else [0.0] * (n + 1)
    for index, cost in enumerate(block_costs):
        prefix[index + 1] = prefix[index] + cost

    def segment(start: int, end: int) -> float:
        cost = prefix[end] - prefix[start]
        if start == 0:
            cost += pre_cost
        if end == n:
            cost += post_cost
        return cost

    if exact:
        # The smallest feasible integer bottleneck, by bisection with the greedy check: O(n log(total)).
        low, high = 0, int(segment(0, n))
        while low < high:
            middle = (low + high) // 2
            if _greedy_split(segment, n, pp, middle) is None:
                low = middle + 1
            else:
                high = middle
        bounds = _greedy_split(segment, n, pp, low)
        assert bounds is not None  # one segment holding everything bounds every split
        return bounds
    # The optimal bottleneck is the cost of some segment: binary search over all of them with the greedy check.
    candidates = sorted({segment(start, end) for start in range(n) for end in range(start + 1, n + 1)})
    low, high = 0, len(candidates) - 1
    while low < high:
        middle = (low + high) // 2
        if _greedy_split(segment, n, pp, candidates[middle]) is None:
            low = middle + 1
        else:
            high = middle
    bounds = _greedy_split(segment, n, pp, candidates[low])
    assert bounds is not None  # the largest candidate (all blocks in one segment) bounds every split
    return bounds


def _greedy_split(segment, n: int, pp: int, limit: float) -> tuple[tuple[int, int], ...] | None:
    """Fill each stage with as many blocks as fit under `limit`, leaving one block per later stage."""
    bounds = []
    start = 0
    for stage in range(pp - 1):
        last_allowed_end = n - (pp - 1 - stage)
        end = start + 1
        if segment(start, end) > limit:
            return None
        while end < last_allowed_end and segment(start, end + 1) <= limit:
            end += 1
        bounds.append((start, end))
        start = end
    if segment(start, n) > limit:
        return None
    bounds.append((start, n))
    return tuple(bounds)
