"""What seed 000 says must hold for serving runs, and the fidelity closed forms (docs/serving.md, "Fidelity").

Seed 000: PP=2 instead of TP=1 on the same workload roughly halves per-NPU memory; in-flight batches never exceed
pp_size and the batch saturates lower in bursts; a lower link_bw or a higher link_latency lengthens iterations;
TP x PP runs. Fidelity: with a measured bundle, runs whose schedule is known by hand land on the closed form
built from the bundle's per-layer times (no loop, scheduler or engine involved)."""

from __future__ import annotations

import copy
import json

import pytest

from astra_driver.cluster_config import cluster_config_from_dict
from astra_driver.serving.loop import ServingResult, ServingRunConfig, run_serving
from astra_driver.serving.metrics import IterationRecord, summarize, tpot_ns, ttft_ns
from astra_driver.serving.request import Request
from llm_converter.hardware import get_hardware
from llm_converter.iteration import Iteration, PrefillChunk
from llm_converter.latency import make_latency_model
from llm_converter.layers import timed_ops
from llm_converter.models import get_model
from tests.conftest import PROFILES, REPO

LLAMA = "meta-llama/Llama-3.1-8B"
BUNDLE = PROFILES / "RTXPRO6000" / LLAMA
SEED_CLUSTER = REPO / "configs" / "cluster" / "single_node_pp_instance.json"
MS = 1_000_000
GIB_PER_GB_NS = (1 << 30) / 1e9  # ASTRA-Sim's link bandwidth: GB/s of 2^30 bytes


def cluster(tp: int = 1, pp: int = 1, link_bw: float = 16, link_latency: float = 20000, dtype: str = "float16"):
    """The seed's cluster (Llama-3.1-8B on RTXPRO6000) with another tp x pp and link."""
    data = copy.deepcopy(json.loads(SEED_CLUSTER.read_text()))
    data["link_bw"], data["link_latency"] = link_bw, link_latency
    data["nodes"][0]["instances"][0].update(num_npus=tp * pp, tp_size=tp, pp_size=pp)
    return cluster_config_from_dict(data, source=SEED_CLUSTER, dtype=dtype)


def burst(n: int = 32, gap_ns: int = 1 * MS, input_tokens: int = 128, output_tokens: int = 64) -> list[Request]:
    return [Request(i, i * gap_ns, input_tokens, output_tokens) for i in range(n)]


def serve(cluster_config, requests: list[Request], **flags) -> ServingResult:
    result = run_serving(ServingRunConfig(cluster=cluster_config, requests=requests, **flags))
    assert all(r.finish_ns is not None for r in result.requests)
    return result


def max_overlap(records: list[IterationRecord]) -> int:
    """Most iterations of one instance in flight at once (intervals [start, end), an end before a start)."""
    events = sorted([(r.end_ns, -1) for r in records] + [(r.start_ns, 1) for r in records])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.fixture(scope="module")
def tp1_and_pp2() -> tuple[ServingResult, ServingResult]:
    return serve(cluster(1, 1), burst()), serve(cluster(1, 2), burst())


# --- seed 000 -----------------------------------------------------------------------------------------------


def test_pp2_roughly_halves_per_npu_memory(tp1_and_pp2) -> None:
    tp1, pp2 = tp1_and_pp2
    # Weights: each stage holds half the decoder blocks (plus the embedding or the head).
    (w1,) = tp1.instances[0].weight_bytes_per_npu
    assert [w / w1 for w in pp2.instances[0].weight_bytes_per_npu] == pytest.approx([0.5, 0.5], abs=0.01)
    # What the log's npu_mem shows: weights + KV in use on the fullest NPU, at its peak.
    peak1 = max(r.npu_mem_bytes for r in tp1.iterations)
    peak2 = max(r.npu_mem_bytes for r in pp2.iterations)
    assert 0.45 < peak2 / peak1 < 0.55


def test_inflight_batches_never_exceed_pp_and_reach_it(tp1_and_pp2) -> None:
    tp1, pp2 = tp1_and_pp2
    assert tp1.instances[0].max_inflight_batches == 1 and max_overlap(tp1.iterations) == 1
    assert pp2.instances[0].max_inflight_batches == 2 and max_overlap(pp2.iterations) == 2


def test_batch_saturates_lower_in_a_burst_under_pp(tp1_and_pp2) -> None:
    # The same 32 requests, 1 ms apart: TP=1 ends up with all of them in one batch; under PP=2 the scheduler
    # stops at 2 in flight and a request in flight is not scheduled again, so they split over two batches.
    tp1, pp2 = tp1_and_pp2
    assert max(r.num_seqs for r in tp1.iterations) == 32
    assert max(r.num_seqs for r in pp2.iterations) <= 20


def iteration_ns(link_bw: float, link_latency: float) -> list[int]:
    result = serve(cluster(1, 2, link_bw, link_latency), [Request(i, 0, 128, 2) for i in range(4)])
    return [r.end_ns - r.start_ns for r in result.iterations]  # a 4 x 128 prefill, then 4 decodes


def test_slower_link_lengthens_pipelined_iterations() -> None:
    base = iteration_ns(16, 20000)
    narrow = iteration_ns(1, 20000)
    slow = iteration_ns(16, 2_000_000)
    hidden, fp16 = 4096, 2
    for tokens, b, n, s in zip((512, 4), base, narrow, slow, strict=True):
        size = tokens * hidden * fp16  # the activations stage 0 sends stage 1
        assert n - b == pytest.approx(size / GIB_PER_GB_NS * (1 / 1 - 1 / 16), rel=1e-3)
        assert s - b == 2_000_000 - 20000  # one stage boundary: one more link latency


@pytest.mark.parametrize(("tp", "pp"), [(2, 1), (1, 2), (2, 2)])
def test_tp_x_pp_runs(tp: int, pp: int) -> None:
    requests = burst(8, input_tokens=64, output_tokens=8)
    result = serve(cluster(tp, pp), requests)
    inst = result.instances[0]
    assert (inst.tp_size, inst.pp_size, inst.num_npus) == (tp, pp, tp * pp)
    assert 1 <= inst.max_inflight_batches <= pp and max_overlap(result.iterations) <= pp
    summary = summarize(result)
    assert summary.completed == 8 and summary.total_output_tokens == 64
    assert sum(r.decode_tokens for r in result.iterations) == 64
    assert sum(r.prefill_tokens for r in result.iterations) == 8 * 64
    # Weights per NPU: the model split over tp x pp NPUs (embedding and head on one stage each).
    (w1,) = serve(cluster(1, 1), burst(1, output_tokens=2)).instances[0].weight_bytes_per_npu
    assert max(inst.weight_bytes_per_npu) / w1 == pytest.approx(1 / (tp * pp), rel=0.05)


# --- fidelity: closed forms from the measured bundle ---------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_iteration_ns():
    if not (BUNDLE / "bf16" / "meta.yaml").is_file():
        pytest.skip(f"{BUNDLE} not found (set PIPESIM_SHARED)")
    model, hardware = get_model(LLAMA), get_hardware("RTXPRO6000")
    latency = make_latency_model(model, hardware, 1, "bfloat16", BUNDLE)

    def iteration_ns(iteration: Iteration) -> int:
        ops = timed_ops(model, iteration, 1, latency, "bfloat16")
        return ops.pre_ns + model.num_layers * ops.block_ns + ops.post_ns

    return iteration_ns


def bundle_run(requests: list[Request]) -> ServingResult:
    return serve(cluster(1, 1, dtype="bfloat16"), requests, profile_dir=BUNDLE, enable_prefix_caching=False)


def test_fidelity_one_request_alone(bundle_iteration_ns) -> None:
    inp, out = 512, 64
    (r,) = bundle_run([Request(0, 1000, inp, out)]).requests
    prefill = bundle_iteration_ns(Iteration(prefill=(PrefillChunk(inp),)))
    decodes = [bundle_iteration_ns(Iteration(decode=(inp + k,))) for k in range(out - 1)]
    assert ttft_ns(r) == pytest.approx(prefill, rel=1e-3)
    assert tpot_ns(r) == pytest.approx(sum(decodes) / (out - 1), rel=1e-3)
    assert r.finish_ns - r.arrival_ns == pytest.approx(prefill + sum(decodes), rel=1e-3)


def test_fidelity_identical_requests_in_one_batch(bundle_iteration_ns) -> None:
    n, inp, out = 8, 256, 32
    result = bundle_run([Request(i, 0, inp, out) for i in range(n)])
    prefill = bundle_iteration_ns(Iteration(prefill=(PrefillChunk(inp),) * n))
    decodes = [bundle_iteration_ns(Iteration(decode=(inp + k,) * n)) for k in range(out - 1)]
    summary = summarize(result)
    assert summary.ttft.mean * MS == pytest.approx(prefill, rel=1e-3)
    assert summary.tpot.mean * MS == pytest.approx(sum(decodes) / (out - 1), rel=1e-3)
    assert summary.e2el.mean * MS == pytest.approx(prefill + sum(decodes), rel=1e-3)
    assert len(result.iterations) == out


def test_fidelity_prompt_longer_than_the_token_budget(bundle_iteration_ns) -> None:
    inp, out, budget = 20000, 4, 8192  # vLLM 0.19's online default on a >= 70 GiB GPU
    (r,) = bundle_run([Request(0, 0, inp, out)]).requests
    chunks = [PrefillChunk(8192, 0), PrefillChunk(8192, 8192), PrefillChunk(inp - 2 * budget, 2 * budget)]
    expected_ttft = sum(bundle_iteration_ns(Iteration(prefill=(c,))) for c in chunks)
    assert ttft_ns(r) == pytest.approx(expected_ttft, rel=1e-3)
    decodes = [bundle_iteration_ns(Iteration(decode=(inp + k,))) for k in range(out - 1)]
    assert r.finish_ns - r.arrival_ns == pytest.approx(expected_ttft + sum(decodes), rel=1e-3)


def test_fidelity_tp2_loop_composes_single_iteration_traces(tmp_path) -> None:
    """Under TP (simulated all-reduces and the logits all-gather), a request alone gets each token exactly when
    `pipesim trace`'s per-layer graph of that iteration, replayed from scratch, says its iteration takes."""
    from itertools import accumulate

    from astra_driver.astra_files import astra_config_for_instance
    from astra_driver.engine import simulate
    from astra_driver.trace_job import TraceRequest, build_trace

    bundle = PROFILES / "RTXPRO6000" / "Qwen" / "Qwen3-32B"
    if not (bundle / "bf16" / "meta.yaml").is_file():
        pytest.skip(f"{bundle} not found (set PIPESIM_SHARED)")
    data = copy.deepcopy(json.loads(SEED_CLUSTER.read_text()))
    data["nodes"][0]["instances"][0].update(model_name="Qwen/Qwen3-32B", num_npus=2, tp_size=2, pp_size=1)
    path = tmp_path / "tp2.json"
    path.write_text(json.dumps(data))

    def trace_ns(iteration: Iteration) -> int:
        request = TraceRequest(
            name="it", iteration=iteration, dtype="bfloat16", profile_dir=bundle, cluster_config=path
        )
        cluster_config, placed, _, plan, workload = build_trace(request)
        return max(simulate(workload, astra_config_for_instance(cluster_config, placed, plan.comm_groups())).finish_ns)

    inp, out = 512, 4
    result = run_serving(
        ServingRunConfig(
            cluster=cluster_config_from_dict(data, source=path, dtype="bfloat16"),
            requests=[Request(0, 0, inp, out)],
            profile_dir=bundle,
            enable_prefix_caching=False,
        )
    )
    steps = [trace_ns(Iteration(prefill=(PrefillChunk(inp),)))]
    steps += [trace_ns(Iteration(decode=(inp + k,))) for k in range(out - 1)]
    assert result.requests[0].token_times_ns == list(accumulate(steps))
