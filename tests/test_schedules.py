"""Pipeline schedules as data: exact per-rank orders (written out by hand from torch.distributed.pipelining's,
Megatron-LM's and the zero-bubble repository's code), the dry-run validator, the bubble closed forms, peak
in-flight microbatches and the bad inputs."""

from __future__ import annotations

import pytest

from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.schedules import (
    SCHEDULES,
    Action,
    ActionTimes,
    Computation,
    PipelineSchedule,
    build_schedule,
    dry_run,
    peak_inflight,
    validate_schedule,
)
from llm_converter.schedules.dry_run import peak_inflight_per_rank
from llm_converter.schedules.grid import format_grid


def orders(schedule: PipelineSchedule) -> list[str]:
    return [" ".join(str(a) for a in rank) for rank in schedule.actions]


# ------------------------------------------------------------------------------------------------ notation


def test_action_notation_round_trips() -> None:
    assert str(Action(0, Computation.F, 1)) == "0F1"
    assert Action.parse("2I0") == Action(2, Computation.I, 0)
    assert Action.parse(" 12W10 ") == Action(12, Computation.W, 10)
    assert str(Action.parse("1B3")) == "1B3"
    for bad in ("", "F1", "0X1", "0F", "0F1x", "-1F0"):
        with pytest.raises(PipesimError, match="not an action"):
            Action.parse(bad)


# ------------------------------------------------------------------------- exact orders, small p and m


def test_gpipe_order_is_torchs() -> None:
    # ScheduleGPipe: all forwards, then backwards in microbatch order 0..m-1.
    assert orders(build_schedule("gpipe", 2, 3)) == [
        "0F0 0F1 0F2 0B0 0B1 0B2",
        "1F0 1F1 1F2 1B0 1B1 1B2",
    ]


def test_1f1b_order_is_torchs() -> None:
    # Schedule1F1B._get_pipeline_order: p-1-r warm-up forwards, F/B pairs, then the remaining B.
    assert orders(build_schedule("1f1b", 3, 4)) == [
        "0F0 0F1 0F2 0B0 0F3 0B1 0B2 0B3",
        "1F0 1F1 1B0 1F2 1B1 1F3 1B2 1B3",
        "2F0 2B0 2F1 2B1 2F2 2B2 2F3 2B3",
    ]


def test_interleaved_order_is_megatrons_and_torchs() -> None:
    # p=2, v=2, m=4: warm-up min(2(p-1-r) + (v-1)p, mv) = 4 / 2; chunk of virtual k = (k mod pv) // p.
    schedule = build_schedule("interleaved-1f1b", 2, 4, chunks=2)
    assert schedule.stage_to_rank == (0, 1, 0, 1)
    assert orders(schedule) == [
        "0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3",
        "1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3",
    ]


def _megatron_interleaved_order(pp: int, m: int, v: int, rank: int) -> list[str]:
    """Megatron-core's forward_backward_pipelining_with_interleaving, written from its helpers
    (get_model_chunk_id, get_microbatch_id_in_model_chunk, group size = pp): virtual microbatch k -> (chunk,
    microbatch); warm-up (p-r-1)*2 + (v-1)*p capped at m*v; then forward k+warmup, backward k."""
    total = m * v

    def chunk(k: int, forward: bool) -> int:
        c = (k % (pp * v)) // pp
        return c if forward else v - 1 - c

    def microbatch(k: int) -> int:
        return (k // (pp * v)) * pp + k % pp

    def f(k: int) -> str:
        return f"{chunk(k, True) * pp + rank}F{microbatch(k)}"

    def b(k: int) -> str:
        return f"{chunk(k, False) * pp + rank}B{microbatch(k)}"

    warmup = min((pp - rank - 1) * 2 + (v - 1) * pp, total)
    order = [f(k) for k in range(warmup)]
    for k in range(total - warmup):
        order += [f(k + warmup), b(k)]
    order += [b(k) for k in range(total - warmup, total)]
    return order


@pytest.mark.parametrize(("pp", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 4, 3), (3, 9, 2), (4, 16, 4), (1, 3, 2)])
def test_interleaved_equals_megatrons_virtual_microbatch_order(pp: int, m: int, v: int) -> None:
    schedule = build_schedule("interleaved-1f1b", pp, m, chunks=v)
    for rank in range(pp):
        assert [str(a) for a in schedule.actions[rank]] == _megatron_interleaved_order(pp, m, v, rank)


def test_looped_bfs_order_is_torchs() -> None:
    # ScheduleLoopedBFS: forwards chunk by chunk, backwards from the last chunk, microbatches reversed.
    assert orders(build_schedule("looped-bfs", 2, 2, chunks=2)) == [
        "0F0 0F1 2F0 2F1 2B1 2B0 0B1 0B0",
        "1F0 1F1 3F0 3F1 3B1 3B0 1B1 1B0",
    ]


def test_zb_h1_order_is_torchs_zb1p() -> None:
    # ScheduleInterleavedZeroBubble, one stage per rank: 1F1B warm-up, F/I pairs, W after the rank-th pair.
    assert orders(build_schedule("zb-h1", 3, 4)) == [
        "0F0 0F1 0F2 0I0 0W0 0F3 0I1 0W1 0I2 0W2 0I3 0W3",
        "1F0 1F1 1I0 1F2 1I1 1W0 1F3 1I2 1W1 1I3 1W2 1W3",
        "2F0 2I0 2F1 2I1 2F2 2I2 2W0 2F3 2I3 2W1 2W2 2W3",
    ]


def test_zb_h2_order_matches_the_zero_bubble_repositorys_layout() -> None:
    assert orders(build_schedule("zb-h2", 2, 4)) == [
        "0F0 0F1 0F2 0I0 0F3 0I1 0W0 0I2 0W1 0I3 0W2 0W3",
        "1F0 1I0 1F1 1I1 1F2 1I2 1F3 1I3 1W0 1W1 1W2 1W3",
    ]
    # scheduler/zb.py's manual_order comment (f = F, b = I, w = W) shows 4 stages with no memory limit: warm-up
    # 2(p-1-r)+1 forwards, b/f pairs, b/w pairs, the remaining w. Up to m = 2p that is ZB-H2 as the paper defines it.
    assert _layout(build_schedule("zb-h2", 4, 8)) == [
        "fffffff" + "bf" + "bw" * 7 + "w",
        "fffff" + "bf" * 3 + "bw" * 5 + "w" * 3,
        "fff" + "bf" * 5 + "bw" * 3 + "w" * 5,
        "f" + "bf" * 7 + "bw" + "w" * 7,
    ]


def test_zb_h2_keeps_the_papers_2p_activation_budget_beyond_2p_microbatches() -> None:
    # The paper's ZB-H2 holds 2p M_B (Table 1); the repository's unlimited layout would hold all m. Once a rank
    # holds 2p microbatches, its steady state runs I, W, F (W of the oldest frees one).
    assert _layout(build_schedule("zb-h2", 4, 12))[0] == "fffffff" + "bf" + "bwf" * 4 + "bw" * 7 + "w"
    assert peak_inflight(build_schedule("zb-h2", 4, 12)) == (8, 8, 8, 8)
    assert peak_inflight(build_schedule("zb-h2", 8, 64)) == (16,) * 8


def _layout(schedule: PipelineSchedule) -> list[str]:
    letters = {"F": "f", "I": "b", "W": "w"}
    return ["".join(letters[a.computation.value] for a in rank) for rank in schedule.actions]


def test_zb_v_order_is_torchs() -> None:
    schedule = build_schedule("zb-v", 2, 4)
    assert schedule.stage_to_rank == (0, 1, 1, 0)
    assert orders(schedule) == [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 1I3 1W2 2W3 1W3",
    ]


def test_dualpipev_order_is_torchs() -> None:
    # torch's OVERLAP_F_B pairs appear as their F then their B.
    schedule = build_schedule("dualpipev", 2, 4)
    assert schedule.stage_to_rank == (0, 1, 1, 0)
    assert orders(schedule) == [
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 0F3 3B1 3F2 0B0 3B2 3F3 0B1 3B3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 1F2 2B0 2F2 1B0 1F3 2B1 2F3 1B1 2B2 1B2 2I3 1I3 2W3 1W3",
    ]


# --------------------------------------------------------------------------- every schedule validates


def _valid_cases() -> list[tuple[str, int, int, int | None]]:
    cases = []
    for name, family in SCHEDULES.items():
        chunk_options = [None, 3] if family.takes_chunks else [None]
        for pp in (1, 2, 3, 4, 5):
            for m in range(1, 11):
                for chunks in chunk_options:
                    v = family.default_chunks if chunks is None else chunks
                    if m < family.min_microbatches(pp) or (family.multiple_of_pp_when_chunked and v > 1 and m % pp):
                        continue
                    cases.append((name, pp, m, chunks))
    return cases


def test_every_schedule_passes_the_dry_run_for_a_range_of_p_m_v() -> None:
    checked = 0
    for name, pp, m, chunks in _valid_cases():
        schedule = build_schedule(name, pp, m, chunks)
        assert schedule.num_stages == pp * schedule.chunks
        for times in (None, ActionTimes.split(1, 1, 1), ActionTimes(forward=1, full_backward=2)):
            run = validate_schedule(schedule, times)
            for rank, timeline in enumerate(run.timeline):
                assert [t.action for t in timeline] == list(schedule.actions[rank])
        checked += 1
    assert checked > 300


# ------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("pp", "m"), [(2, 2), (4, 4), (4, 8), (3, 7), (8, 16)])
def test_gpipe_and_1f1b_bubble_is_p_minus_1_over_m_plus_p_minus_1(name: str, pp: int, m: int) -> None:
    run = dry_run(build_schedule(name, pp, m))
    assert run.bubble_fraction == pytest.approx((pp - 1) / (m + pp - 1))
    assert run.step_time == 2 * (m + pp - 1)
    # the fraction holds for any uniform F and B (each rank idles (p-1)(F+B))
    timed = dry_run(build_schedule(name, pp, m), ActionTimes(forward=1, full_backward=2))
    assert timed.bubble_fraction == pytest.approx((pp - 1) / (m + pp - 1))
    assert [timed.bubble_time(r) for r in range(pp)] == [3 * (pp - 1)] * pp


@pytest.mark.parametrize(("pp", "m", "v"), [(2, 4, 2), (4, 4, 2), (4, 8, 2), (4, 8, 3), (3, 6, 2), (4, 12, 4)])
def test_interleaved_bubble_is_p_minus_1_over_vm_plus_p_minus_1(pp: int, m: int, v: int) -> None:
    run = dry_run(build_schedule("interleaved-1f1b", pp, m, chunks=v))
    assert run.bubble_fraction == pytest.approx((pp - 1) / (v * m + pp - 1))


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (3, 6), (4, 4), (4, 8), (5, 10), (4, 13)])
def test_zb_h1_bubble_is_a_third_of_1f1bs_when_f_i_w_are_equal(pp: int, m: int) -> None:
    # The zero-bubble paper's time model: F = I = W = 1, a full backward B = I + W = 2.
    split = ActionTimes.split(1, 1, 1)
    one_f_one_b = dry_run(build_schedule("1f1b", pp, m), split)
    zb_h1 = dry_run(build_schedule("zb-h1", pp, m), split)
    for rank in range(pp):
        assert one_f_one_b.bubble_time(rank) == 3 * (pp - 1)  # (p-1)(F+B+W)
        assert zb_h1.bubble_time(rank) == pp - 1  # (p-1)(F+B-W), B = I here
    assert zb_h1.step_time == 3 * m + pp - 1


@pytest.mark.parametrize("name", ["zb-h2", "zb-v"])
@pytest.mark.parametrize(("pp", "m"), [(2, 4), (3, 12), (4, 8), (4, 16)])
def test_zb_h2_and_zb_v_have_no_bubble_inside_each_ranks_span(name: str, pp: int, m: int) -> None:
    # The papers' "zero bubble": from a rank's first action to its last it never idles (the parallelogram;
    # the ramp of p-1 steps remains in one synchronous step and overlaps the next step with post-validation).
    run = dry_run(build_schedule(name, pp, m), ActionTimes.split(1, 1, 1))
    for rank, timeline in enumerate(run.timeline):
        assert timeline[-1].end - timeline[0].start == run.busy(rank)
    assert run.step_time == run.busy(0) + pp - 1


@pytest.mark.parametrize(("f", "b", "w"), [(1, 1, 1), (2, 2, 1), (3, 2, 1), (2, 3, 2), (1, 2, 1)])
@pytest.mark.parametrize(("pp", "m"), [(2, 16), (4, 8), (4, 12), (6, 24)])
def test_zero_bubble_papers_three_formulas_are_rank_0s_idle_between_its_first_and_last_action(
    f: int, b: int, w: int, pp: int, m: int
) -> None:
    # Qi et al. 2023, Table 1 (B = input gradient I, W = weight gradient; 1F1B's full backward is B + W):
    # 1F1B (p-1)(F+B+W), ZB-H1 (p-1)(F+B-W), ZB-H2 (p-1)(F+B-2W) (which needs F+B >= 2W; all cases here).
    times = ActionTimes.split(f, b, w)
    expected = {"1f1b": (pp - 1) * (f + b + w), "zb-h1": (pp - 1) * (f + b - w), "zb-h2": (pp - 1) * (f + b - 2 * w)}
    for name, bubble in expected.items():
        run = dry_run(build_schedule(name, pp, m), times)
        assert run.span_bubble_time(0) == bubble, name
        assert max(run.span_bubble_time(r) for r in range(pp)) == bubble, name
        assert run.overlapped_step_time == m * (f + b + w) + bubble, name
        # In the synchronous step (every rank waits for the last one) 1F1B and ZB-H1 idle exactly that on every
        # rank; ZB-H2 idles more: its saving needs the end-of-step sync gone (optimizer post-validation).
        sync = [run.bubble_time(r) for r in range(pp)]
        if name == "zb-h2":
            assert min(sync) >= bubble
        else:
            assert sync == [bubble] * pp, name


def test_zb_h2s_synchronous_step_keeps_the_p_minus_1_ramp() -> None:
    # F = I = W = 1: each rank idles p-1 in the synchronous step (same as ZB-H1), none between its first and
    # last action; overlapping steps leaves a bubble of 0.
    run = dry_run(build_schedule("zb-h2", 4, 8), ActionTimes.split(1, 1, 1))
    assert [run.bubble_time(r) for r in range(4)] == [3, 3, 3, 3]
    assert [run.span_bubble_time(r) for r in range(4)] == [0, 0, 0, 0]
    assert run.step_time == 27 and run.overlapped_step_time == 24 and run.overlapped_bubble_fraction == 0


def test_fixed_transfers_lengthen_the_step_by_the_hops() -> None:
    for pp, m in [(2, 3), (4, 8)]:
        schedule = build_schedule("gpipe", pp, m)
        assert dry_run(schedule, p2p=0.5).step_time == 2 * (m + pp - 1) + 2 * (pp - 1) * 0.5
        assert (
            dry_run(build_schedule("1f1b", pp, m), p2p=0.5).step_time > dry_run(build_schedule("1f1b", pp, m)).step_time
        )


def test_transfers_between_stages_on_one_rank_are_free() -> None:
    # pp = 1, 3 chunks: every stage on rank 0, so p2p never applies.
    schedule = build_schedule("interleaved-1f1b", 1, 2, chunks=3)
    assert dry_run(schedule, p2p=5).step_time == dry_run(schedule).step_time == 12


# ----------------------------------------------------------------------------- peak in-flight microbatches


@pytest.mark.parametrize(("pp", "m"), [(2, 2), (4, 8), (5, 6)])
def test_peak_inflight_is_m_for_gpipe_and_p_minus_stage_for_1f1b(pp: int, m: int) -> None:
    assert peak_inflight(build_schedule("gpipe", pp, m)) == (m,) * pp
    assert peak_inflight(build_schedule("1f1b", pp, m)) == tuple(pp - s for s in range(pp))
    assert peak_inflight_per_rank(build_schedule("1f1b", pp, m)) == tuple(pp - s for s in range(pp))


def test_peak_inflight_zero_bubble() -> None:
    # ZB-H1 holds p on every rank (W delayed by the rank's depth); ZB-H2 up to 2p-1 + 1 (I before W).
    assert peak_inflight(build_schedule("zb-h1", 4, 8)) == (4, 4, 4, 4)
    assert peak_inflight(build_schedule("zb-h2", 4, 8)) == (8, 8, 8, 8)


# --------------------------------------------------------------------------------------------- grid


def test_grid_text_matches_torchs_layout() -> None:
    text = format_grid(dry_run(build_schedule("1f1b", 2, 2)))
    # torch: a header of rank labels after len("Step 0") + 2 spaces, then "Step i: " and the padded cells
    assert text == (
        "        Rank 0 Rank 1\n"
        "Step 0: 0F0\n"
        "Step 1: 0F1    1F0\n"
        "Step 2:        1B0\n"
        "Step 3: 0B0    1F1\n"
        "Step 4:        1B1\n"
        "Step 5: 0B1\n"
    )


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", 4, 8, None), "unknown schedule 'nope'; choose one of gpipe, 1f1b, interleaved-1f1b"),
        (("gpipe", 4, 0, None), "--microbatches: 0; give at least 1"),
        (("1f1b", 4, 3, None), "needs at least 4 microbatches, got 3"),
        (("zb-h1", 4, 2, None), "needs at least 4 microbatches"),
        (("dualpipev", 4, 7, None), "needs at least 8 microbatches"),
        (("interleaved-1f1b", 4, 6, None), "divisible by --pp 4"),
        (("interleaved-1f1b", 4, 8, 0), "--chunks: 0"),
        (("1f1b", 4, 8, 2), "takes no --chunks"),
        (("zb-v", 4, 8, 3), "holds 2 stages per rank"),
        (("gpipe", 0, 8, None), "--pp: 0"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(args: tuple, message: str) -> None:
    with pytest.raises(PipesimError, match=None) as info:
        build_schedule(*args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_deadlocking_schedule_names_the_stuck_actions() -> None:
    a = Action.parse
    schedule = PipelineSchedule("custom", 2, 2, 1, (0, 1), ((a("0F0"), a("0B0")), (a("1B0"), a("1F0"))))
    with pytest.raises(DeadlockError) as info:
        validate_schedule(schedule)
    assert "rank 1 stuck at 1B0 (waits for 1F0 later on the same rank)" in str(info.value)
    assert "rank 0 stuck at 0B0 (waits for 1B0)" in str(info.value)
    assert info.value.stuck == {0: [1], 1: [0]}


def test_structure_errors() -> None:
    a = Action.parse
    missing_w = PipelineSchedule("c", 1, 1, 1, (0,), ((a("0F0"), a("0I0")),))
    with pytest.raises(PipesimError, match="stage 0 microbatch 0 has half a split backward; add 0W0"):
        validate_schedule(missing_w)
    twice = PipelineSchedule("c", 1, 1, 1, (0,), ((a("0F0"), a("0F0"), a("0B0")),))
    with pytest.raises(PipesimError, match="0F0 appears twice"):
        validate_schedule(twice)
    no_backward = PipelineSchedule("c", 1, 1, 1, (0,), ((a("0F0"),),))
    with pytest.raises(PipesimError, match="has no backward; add 0B0"):
        validate_schedule(no_backward)
    both = PipelineSchedule("c", 1, 1, 1, (0,), ((a("0F0"), a("0B0"), a("0I0"), a("0W0")),))
    with pytest.raises(PipesimError, match="use B or I \\+ W"):
        validate_schedule(both)


def test_peak_inflight_per_rank_v_and_interleaved() -> None:
    # ZB-V: 2p half-size chunk activations per rank = 1F1B's p full-stage ones (the paper's memory claim).
    assert peak_inflight_per_rank(build_schedule("zb-v", 4, 8)) == (8, 8, 8, 8)
    # interleaved: Megatron's warm-up 2(p-1-r) + (v-1)p forwards, plus the first steady-state one.
    assert peak_inflight_per_rank(build_schedule("interleaved-1f1b", 4, 8, 2)) == (11, 9, 7, 5)


def test_shuffled_orders_validate_or_deadlock_cleanly() -> None:
    # Any order of a complete schedule either runs or raises DeadlockError naming a stuck action per rank.
    import random

    rng = random.Random(7)
    outcomes = {"ran": 0, "deadlock": 0}
    for name in ("1f1b", "zb-h1", "zb-v", "interleaved-1f1b"):
        base = build_schedule(name, 3, 3 if name != "interleaved-1f1b" else 6)
        for _ in range(40):
            ranks = [list(r) for r in base.actions]
            for r in ranks:
                i, j = rng.randrange(len(r)), rng.randrange(len(r))
                r[i], r[j] = r[j], r[i]
            shuffled = PipelineSchedule(
                name, base.pp, base.num_stages, base.microbatches, base.stage_to_rank, tuple(map(tuple, ranks))
            )
            try:
                validate_schedule(shuffled)
                outcomes["ran"] += 1
            except DeadlockError as exc:
                assert exc.stuck and all(f"rank {r} stuck at" in str(exc) for r in exc.stuck)
                outcomes["deadlock"] += 1
    assert outcomes["ran"] > 0 and outcomes["deadlock"] > 0
