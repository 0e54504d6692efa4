"""ParallelPlan: NPU ids, TP groups and the min-max stage split (parameters per stage: tests/test_memory.py)."""

from __future__ import annotations

import itertools

import pytest

from llm_converter.errors import PipesimError
from llm_converter.models import get_model
from llm_converter.plan import ParallelPlan, split_stages


def _brute_force_bottleneck(costs: list, pp: int, pre: float, post: float) -> float:
    """Smallest slowest-stage cost over every contiguous split (independent of split_stages' search)."""
    n = len(costs)
    best = None
    for cuts in itertools.combinations(range(1, n), pp - 1):
        edges = (0, *cuts, n)
        stage_costs = [sum(costs[a:b]) for a, b in itertools.pairwise(edges)]
        stage_costs[0] += pre
        stage_costs[-1] += post
        worst = max(stage_costs)
        best = worst if best is None else min(best, worst)
    assert best is not None
    return best


def _bottleneck(bounds: tuple[tuple[int, int], ...], costs: list, pre: float, post: float) -> float:
    stage_costs = [sum(costs[a:b]) for a, b in bounds]
    stage_costs[0] += pre
    stage_costs[-1] += post
    return max(stage_costs)


def test_rank_layout_and_coords_round_trip() -> None:
    plan = ParallelPlan.even(tp=4, pp=3, num_blocks=12, dp=2)
    assert plan.npus == 24
    # dp_rank * tp * pp + stage * tp + tp_rank
    assert plan.rank(0, 0, 0) == 0
    assert plan.rank(1, 0, 0) == 4
    assert plan.rank(2, 3, 0) == 11
    assert plan.rank(0, 0, 1) == 12
    assert plan.rank(2, 1, 1) == 12 + 8 + 1
    for rank in range(plan.npus):
        stage, tp_rank, dp_rank = plan.coords(rank)
        assert plan.rank(stage, tp_rank, dp_rank) == rank
    assert plan.tp_group(1, 1) == [16, 17, 18, 19]


def test_comm_groups_are_numbered_from_one_and_cover_every_rank_once() -> None:
    plan = ParallelPlan.even(tp=2, pp=2, num_blocks=4, dp=2)
    groups = plan.comm_groups()
    assert groups == {"1": [0, 1], "2": [2, 3], "3": [4, 5], "4": [6, 7]}
    assert plan.pg_name(1, 1) == "4"
    assert ParallelPlan.even(tp=1, pp=4, num_blocks=4).comm_groups() == {}


def test_even_split_puts_the_extra_blocks_first() -> None:
    assert ParallelPlan.even(1, 3, 8).stage_blocks == ((0, 3), (3, 6), (6, 8))
    assert ParallelPlan.even(1, 1, 5).stage_blocks == ((0, 5),)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tp": 0, "pp": 1, "stage_blocks": ((0, 2),)}, "tp"),
        ({"tp": 1, "pp": 1, "dp": 0, "stage_blocks": ((0, 2),)}, "dp"),
        ({"tp": 1, "pp": 2, "stage_blocks": ((0, 2),)}, "stage_blocks"),
        ({"tp": 1, "pp": 2, "stage_blocks": ((0, 2), (3, 4))}, "contiguous"),
        ({"tp": 1, "pp": 2, "stage_blocks": ((0, 2), (2, 2))}, "non-empty"),
    ],
)
def test_invalid_plans_raise_one_line_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(PipesimError, match=field):
        ParallelPlan(**kwargs)


def test_more_stages_than_layers_is_refused() -> None:
    with pytest.raises(PipesimError, match="pp = 13 is more than the model's 12 decoder layers"):
        split_stages([1] * 12, 13)
    with pytest.raises(PipesimError, match="pp = 5"):
        ParallelPlan.even(1, 5, 4)


def test_split_of_equal_blocks_is_even() -> None:
    assert split_stages([10] * 8, 4) == ((0, 2), (2, 4), (4, 6), (6, 8))
    assert split_stages([10] * 8, 8) == tuple((i, i + 1) for i in range(8))
    assert split_stages([10] * 8, 1) == ((0, 8),)


def test_head_cost_moves_blocks_off_the_last_stage() -> None:
    # 8 blocks of 10 on 2 stages with a head of 20 on the last: 5 + (3 + head) = 50 / 50.
    assert split_stages([10] * 8, 2, post_cost=20) == ((0, 5), (5, 8))
    # An embedding of 20 on the first stage mirrors it.
    assert split_stages([10] * 8, 2, pre_cost=20) == ((0, 3), (3, 8))


@pytest.mark.parametrize("seed", range(30))
def test_split_matches_brute_force_optimum(seed: int) -> None:
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 9)
    pp = rng.randint(1, n)
    costs = [rng.randint(0, 50) for _ in range(n)]
    pre, post = rng.randint(0, 60), rng.randint(0, 60)
    bounds = split_stages(costs, pp, pre, post)
    assert len(bounds) == pp and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a < b for a, b in bounds)
    assert _bottleneck(bounds, costs, pre, post) == _brute_force_bottleneck(costs, pp, pre, post)


@pytest.mark.parametrize("seed", range(10))
def test_split_of_fractional_costs_matches_brute_force(seed: int) -> None:
    import random

    rng = random.Random(1000 + seed)
    n = rng.randint(2, 8)
    pp = rng.randint(1, n)
    costs = [rng.uniform(0, 5) for _ in range(n)]
    pre, post = rng.uniform(0, 3), rng.uniform(0, 3)
    bounds = split_stages(costs, pp, pre, post)
    assert _bottleneck(bounds, costs, pre, post) == pytest.approx(_brute_force_bottleneck(costs, pp, pre, post))


def test_llama_405b_on_16_stages_is_8_blocks_with_7_on_the_ends() -> None:
    # 126 equal blocks, a cheap embedding (> 0) and a head cheaper than a block: the optimum bottleneck is
    # 8 blocks; stage 0 cannot hold 8 blocks + embedding, so it gets 7, and the last stage keeps 7 + head.
    block, embedding, head = 1000, 3, 600
    model = get_model("meta-llama/Llama-3.1-405B")
    assert model.num_layers == 126
    bounds = split_stages([block] * 126, 16, pre_cost=embedding, post_cost=head)
    sizes = [b - a for a, b in bounds]
    assert sizes == [7] + [8] * 14 + [7]
    assert _bottleneck(bounds, [block] * 126, embedding, head) == 8 * block
