"""Training steps on the builtin engine: bubble closed forms (exact ns), peak in-flight, links, validity, and the
representative mode against the full simulation."""

from __future__ import annotations

from dataclasses import replace

import pytest

from astra_driver.training import TrainingConfig, build_training, run_training
from llm_converter.chakra.validator import validate_workload
from llm_converter.errors import PipesimError
from llm_converter.graphs.tags import TAG_MODULUS, training_tag
from llm_converter.graphs.training import build_training_workload
from llm_converter.schedules import SCHEDULES
from llm_converter.training_ops import step_ns

F_US, B_US = 100, 200


def _fixed(schedule: str, pp: int, m: int, chunks: int | None = None, times=(F_US, B_US), p2p: float = 0, **kw):
    # Llama-3.1-8B's 32 layers split into 4 x 1, 4 x 2 and 4 x 4 stages; the layer times are replaced anyway.
    config = TrainingConfig(
        model="Llama-3.1-8B",
        hardware="H100-SXM",
        pp=pp,
        schedule=schedule,
        microbatches=m,
        chunks=chunks,
        stage_time_us=times,
        p2p_time_us=p2p,
        **kw,
    )
    return run_training(config)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("m", [4, 8])
def test_bubble_is_p_minus_1_over_m_plus_p_minus_1(schedule: str, m: int) -> None:
    p = 4
    result = _fixed(schedule, p, m)
    assert result.step_time_ns == (m + p - 1) * (F_US + B_US) * 1000
    assert result.bubble_fraction == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert 1 - sum(s.busy_ns for s in result.per_stage) / (p * result.step_time_ns) == result.bubble_fraction


@pytest.mark.parametrize("v", [2, 4])
def test_interleaved_bubble_is_p_minus_1_over_vm_plus_p_minus_1(v: int) -> None:
    p, m = 4, 8
    result = _fixed("interleaved-1f1b", p, m, chunks=v)
    assert result.step_time_ns == (v * m + p - 1) * (F_US + B_US) * 1000
    assert result.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1), abs=1e-12)


def test_zb_h1_bubble_time_is_a_third_of_1f1b_when_f_b_w_are_equal() -> None:
    p, m = 4, 8
    one_f_one_b = _fixed("1f1b", p, m, times=(100, 100, 100))
    zb_h1 = _fixed("zb-h1", p, m, times=(100, 100, 100))
    bubble = [r.step_time_ns - r.per_stage[0].busy_ns for r in (one_f_one_b, zb_h1)]
    assert bubble == [3 * (p - 1) * 100_000, (p - 1) * 100_000]


def test_peak_inflight_is_m_for_gpipe_and_p_minus_stage_for_1f1b() -> None:
    p, m = 4, 8
    assert [s.peak_inflight_microbatches for s in _fixed("gpipe", p, m).per_stage] == [(m,)] * p
    assert [s.peak_inflight_microbatches for s in _fixed("1f1b", p, m).per_stage] == [(p - s,) for s in range(p)]


def test_a_slower_inter_stage_link_lengthens_the_step_by_the_critical_path() -> None:
    p, m, c = 4, 4, 10
    free = _fixed("gpipe", p, m)
    slow = _fixed("gpipe", p, m, p2p=c)
    # GPipe: the last microbatch's forward and the first backward each cross p - 1 links.
    assert slow.step_time_ns - free.step_time_ns == 2 * (p - 1) * c * 1000
    base = TrainingConfig(
        model="gpt2", hardware="A100-80G", pp=2, schedule="1f1b", microbatches=4, seq_len=256, gpus_per_node=1
    )
    fast_link = run_training(replace(base, inter_node_bw_gbps=50.0))
    slow_link = run_training(replace(base, inter_node_bw_gbps=0.5))
    assert slow_link.step_time_ns > fast_link.step_time_ns


@pytest.mark.parametrize(
    "kw",
    [
        dict(schedule="1f1b", tp=2, dp=2, sequence_parallel=True, distributed_optimizer=True, recompute="selective"),
        dict(schedule="zb-v", tp=2, dp=2, recompute="full", overlap_grad_reduce=True),
        dict(schedule="interleaved-1f1b", chunks=3, dp=2, overlap_grad_reduce=False),
    ],
)
def test_graphs_pass_the_chakra_validator_and_the_representative_step_matches(kw: dict) -> None:
    config = TrainingConfig(
        model="gpt2", hardware="A100-80G", pp=2, microbatches=4, micro_batch_size=1, seq_len=256, **kw
    )
    build = build_training(config)
    workload = build_training_workload(build.spec)
    report = validate_workload(workload, progress=False)
    assert report.ok, report.problems[:3]
    full = run_training(config)
    representative = run_training(replace(config, representative=True))
    assert representative.step_time_ns == full.step_time_ns
    assert representative.bubble_fraction == pytest.approx(full.bubble_fraction, abs=1e-12)
    assert representative.simulated_npus == config.pp and full.simulated_npus == workload.npus


def test_dp_buckets_overlap_the_backward() -> None:
    # tp 1: nothing else needs the NPU's comm slot during the last backward, so the buckets' reductions hide.
    base = TrainingConfig(model="gpt2", hardware="A100-80G", pp=2, dp=2, microbatches=4, seq_len=256)
    after = run_training(base)  # Megatron's default: reduce after the backward
    overlapped = run_training(replace(base, overlap_grad_reduce=True))
    assert overlapped.step_time_ns < after.step_time_ns


def test_training_tags_are_distinct_and_below_the_modulus() -> None:
    tags = {training_tag(mb, boundary, grad) for mb in range(64) for boundary in range(32) for grad in (False, True)}
    assert len(tags) == 64 * 32 * 2 and max(tags) < TAG_MODULUS


def test_bad_input_is_one_line() -> None:
    with pytest.raises(PipesimError, match="--microbatches: 0"):
        _fixed("1f1b", 2, 0)
    with pytest.raises(PipesimError, match="12 decoder layers"):
        run_training(TrainingConfig(model="gpt2", hardware="A100-80G", pp=13, microbatches=16))
    with pytest.raises(PipesimError, match="--chunks 2"):
        run_training(
            TrainingConfig(
                model="gpt2", hardware="A100-80G", pp=4, microbatches=8, schedule="interleaved-1f1b", chunks=2
            )
        )


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_schedule_converts_to_valid_graphs_that_finish(schedule: str) -> None:
    chunks = 2 if SCHEDULES[schedule].takes_chunks else None
    config = TrainingConfig(
        model="gpt2",
        hardware="A100-80G",
        tp=2,
        pp=2,
        dp=2,
        schedule=schedule,
        chunks=chunks,
        microbatches=4,
        seq_len=64,
    )
    build = build_training(config)
    report = validate_workload(build_training_workload(build.spec), progress=False)
    assert report.ok, report.problems[:3]
    result = run_training(config)
    busy = max(sum(step_ns(build.spec.stage_steps[s].for_letter("F")) for s in build.plan.stages_of(r)) for r in (0, 1))
    assert result.step_time_ns > 4 * busy  # every microbatch's forward ran, at least


def test_fixed_p2p_time_keeps_tp_collectives_on_their_link() -> None:
    # Real layer times with TP all-reduces: a C-us transfer still adds exactly 2 (p - 1) C to a GPipe step.
    base = TrainingConfig(model="gpt2", hardware="A100-80G", tp=2, pp=4, schedule="gpipe", microbatches=4, seq_len=256)
    free = run_training(replace(base, p2p_time_us=0))
    slow = run_training(replace(base, p2p_time_us=10))
    assert slow.step_time_ns - free.step_time_ns == 2 * 3 * 10_000
    assert build_training(replace(base, p2p_time_us=10)).astra.network.npus_count == [2, 4]


def test_npu_order_is_megatrons_tp_dp_pp_by_default() -> None:
    # Megatron-LM's parallel_state order "tp-cp-ep-dp-pp": TP ranks consecutive, then the DP replicas of a
    # stage, then the next stage; --use-tp-pp-dp-mapping gives tp-pp-dp (a replica contiguous).
    config = TrainingConfig(model="gpt2", hardware="A100-80G", tp=2, pp=2, dp=2, microbatches=2, seq_len=128)
    plan = build_training(config).plan
    assert [plan.rank(pp, tp, dp) for pp in range(2) for dp in range(2) for tp in range(2)] == list(range(8))
    assert all(plan.rank(*plan.coords(npu)) == npu for npu in range(8))
    assert plan.dp_group(0, 0) == [0, 2] and plan.tp_group(1, 1) == [6, 7]
    other = build_training(replace(config, tp_pp_dp_mapping=True)).plan
    assert [other.rank(pp, tp, dp) for dp in range(2) for pp in range(2) for tp in range(2)] == list(range(8))
    assert other.dp_group(0, 0) == [0, 4] and all(other.rank(*other.coords(npu)) == npu for npu in range(8))
    # Two nodes of 4 over a slow link: Megatron's order keeps the gradient all-reduce inside a node (only the
    # stage boundary crosses), tp-pp-dp sends it across; every graph still validates.
    slow = replace(config, gpus_per_node=4, inter_node_bw_gbps=5.0)
    megatron, contiguous = run_training(slow), run_training(replace(slow, tp_pp_dp_mapping=True))
    assert megatron.step_time_ns < contiguous.step_time_ns
    assert validate_workload(build_training_workload(build_training(slow).spec), progress=False).ok
