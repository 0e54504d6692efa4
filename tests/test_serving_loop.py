"""The serving loop on small hand-computed runs: a stub latency model (1 us per token per decoder layer, nothing
else) makes every iteration's time a closed form, so token times, overlap across stages, the in-flight cap,
link effects and P/D transfers are asserted to the nanosecond."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from astra_driver.cluster_config import cluster_config_from_dict, load_cluster_config
from astra_driver.serving.loop import ServingRunConfig, run_serving
from astra_driver.serving.request import Request
from llm_converter.errors import PipesimError
from llm_converter.iteration import Iteration
from llm_converter.layer_ops import LayerOp
from llm_converter.memory import kv_bytes_per_token
from llm_converter.plan import ParallelPlan

REPO = Path(__file__).resolve().parents[1]
PP2 = REPO / "configs/cluster/single_node_pp_instance.json"
TP1 = REPO / "configs/cluster/single_node_single_instance.json"
LAYERS = 32  # Llama-3.1-8B
HIDDEN = 4096
US = 1000


class PerTokenLatency:
    """down_proj takes 1 us per token; every other layer 0 ns (a 0-us node lasts 1 ns in ASTRA-Sim, but the
    fused graphs hold one compute node per stage at tp 1, so that never shows)."""

    def layer_ns(self, op: LayerOp, iteration: Iteration) -> int:
        return op.tokens * US if op.name == "down_proj" else 0


def _document(path: Path = PP2) -> dict:
    return json.loads(path.read_text())


def _run(document: dict, requests: list[Request], **flags) -> object:
    cluster = cluster_config_from_dict(document, source="test.json", dtype="float16")
    latency = {inst.index: PerTokenLatency() for inst in cluster.instances()}
    flags.setdefault("num_gpu_blocks", 1000)
    return run_serving(ServingRunConfig(cluster=cluster, requests=requests, latency_models=latency, **flags))


def _link_ns(document: dict, size: int) -> int:
    return int(document["link_latency"] + size / (document["link_bw"] * 2**30 / 1e9))


def test_one_request_on_one_npu_token_times_are_closed_forms() -> None:
    document = _document(TP1)
    request = Request(0, arrival_ns=5_000, input_tokens=10, output_tokens=3)
    result = _run(document, [request])
    prefill = LAYERS * 10 * US  # 10 prompt tokens through 32 layers
    decode = LAYERS * 1 * US
    assert request.token_times_ns == [5_000 + prefill, 5_000 + prefill + decode, 5_000 + prefill + 2 * decode]
    assert request.finish_ns == result.sim_end_ns == 5_000 + prefill + 2 * decode
    assert [(r.start_ns, r.end_ns) for r in result.iterations] == [
        (5_000, 5_000 + prefill),
        (5_000 + prefill, 5_000 + prefill + decode),
        (5_000 + prefill + decode, 5_000 + prefill + 2 * decode),
    ]


def test_arrivals_during_an_iteration_join_the_next_one() -> None:
    document = _document(TP1)
    first = Request(0, arrival_ns=0, input_tokens=10, output_tokens=2)
    late = Request(1, arrival_ns=1_000, input_tokens=5, output_tokens=1)  # arrives while the prefill runs
    result = _run(document, [first, late])
    prefill = LAYERS * 10 * US
    # Step 2 decodes `first` (1 token) and prefills `late` (5 tokens): 6 tokens through 32 layers.
    step2 = LAYERS * 6 * US
    assert first.token_times_ns == [prefill, prefill + step2]
    assert late.token_times_ns == [prefill + step2]
    assert [r.num_seqs for r in result.iterations] == [1, 2]


def test_pp2_batches_overlap_across_stages_and_never_exceed_pp_in_flight() -> None:
    document = _document(PP2)
    a = Request(0, arrival_ns=0, input_tokens=10, output_tokens=1)
    b = Request(1, arrival_ns=0, input_tokens=10, output_tokens=1)
    c = Request(2, arrival_ns=0, input_tokens=10, output_tokens=1)
    result = _run(document, [a, b, c], max_num_batched_tokens=10)
    stage = 16 * 10 * US  # 16 of the 32 layers per stage, 10 tokens
    link = _link_ns(document, 10 * HIDDEN * 2)
    # Stage 0 takes the next batch once it computed and sent the previous one.
    starts = [0, stage + link, 2 * (stage + link)]
    ends = []
    previous = 0
    for start in starts:
        previous = max(start + stage + link, previous) + stage  # stage 1: after its recv and its previous batch
        ends.append(previous)
    assert [r.start_ns for r in result.iterations] == starts
    assert [r.end_ns for r in result.iterations] == ends
    assert [a.finish_ns, b.finish_ns, c.finish_ns] == ends
    assert ends[-1] < 3 * (2 * stage + link)  # overlap: faster than back to back
    assert result.instances[0].max_inflight_batches == 2
    in_flight = max(sum(1 for r in result.iterations if r.start_ns <= t < r.end_ns) for t in starts)
    assert in_flight <= 2


def test_lower_link_bw_or_higher_latency_lengthens_iterations() -> None:
    base = _document(PP2)
    slow_bw = copy.deepcopy(base)
    slow_bw["link_bw"] = 1
    slow_latency = copy.deepcopy(base)
    slow_latency["link_latency"] = 2_000_000

    def span(document: dict) -> int:
        requests = [Request(i, i * 1_000_000, 200, 4) for i in range(4)]
        result = _run(document, requests)
        return sum(r.end_ns - r.start_ns for r in result.iterations)

    fast = span(base)
    assert span(slow_bw) > fast
    assert span(slow_latency) > fast


def test_pp2_roughly_halves_per_npu_memory_against_tp1() -> None:
    requests = [Request(i, i * 10_000_000, 500, 20) for i in range(8)]
    tp1 = run_serving(ServingRunConfig(cluster=load_cluster_config(TP1, dtype="float16"), requests=requests))
    requests = [Request(i, i * 10_000_000, 500, 20) for i in range(8)]
    pp2 = run_serving(ServingRunConfig(cluster=load_cluster_config(PP2, dtype="float16"), requests=requests))
    tp1_mem = max(r.npu_mem_bytes for r in tp1.iterations)
    pp2_mem = max(r.npu_mem_bytes for r in pp2.iterations)
    assert 0.45 < pp2_mem / tp1_mem < 0.56
    assert pp2.instances[0].weight_bytes_per_npu[0] < 0.56 * tp1.instances[0].weight_bytes_per_npu[0]


def test_tp2_pp2_runs_with_collectives_on_the_engine() -> None:
    cluster = load_cluster_config(REPO / "configs/cluster/tp2_pp2.json", dtype="float16")
    requests = [Request(i, i * 2_000_000, 300, 5) for i in range(3)]
    result = run_serving(ServingRunConfig(cluster=cluster, requests=requests))
    assert all(r.finish_ns is not None and len(r.token_times_ns) == 5 for r in requests)
    assert result.instances[0].max_inflight_batches <= 2
    assert result.instances[0].tp_size == 2 and result.instances[0].pp_size == 2
    # Per NPU: embedding + 2 all-reduces per block ... the engine ran collectives, not only compute.
    assert result.nodes_simulated > 4 * len(result.iterations) * 16


def _pd_document() -> dict:
    document = _document(TP1)
    node = document["nodes"][0]
    prefill = copy.deepcopy(node["instances"][0])
    prefill["pd_type"] = "prefill"
    decode = copy.deepcopy(prefill)
    decode["pd_type"] = "decode"
    node["instances"] = [prefill, decode]
    node["num_instances"] = 2
    return document


def test_pd_first_token_at_prefill_then_kv_over_the_link_then_decode() -> None:
    document = _pd_document()
    request = Request(0, arrival_ns=0, input_tokens=10, output_tokens=3)
    result = _run(document, [request])
    prefill = LAYERS * 10 * US
    model = load_cluster_config(TP1).instances()[0].model
    kv_bytes = kv_bytes_per_token(model, ParallelPlan.even(1, 1, LAYERS), 0, 2) * 10
    transfer = _link_ns(document, kv_bytes)
    decode = LAYERS * US
    assert request.token_times_ns == [prefill, prefill + transfer + decode, prefill + transfer + 2 * decode]
    assert request.instance_id == 1  # served (decoded) by the decode instance
    (moved,) = result.transfers
    assert (moved.src_instance, moved.dst_instance, moved.start_ns, moved.end_ns) == (0, 1, prefill, prefill + transfer)
    assert moved.messages == ((0, 1, kv_bytes),)
    assert [r.instance_id for r in result.iterations] == [0, 1, 1]


def test_round_robin_spreads_requests_over_instances() -> None:
    document = _document(TP1)
    node = document["nodes"][0]
    node["instances"] = [node["instances"][0], copy.deepcopy(node["instances"][0])]
    node["num_instances"] = 2
    requests = [Request(i, i * 100_000, 10, 2) for i in range(4)]
    result = _run(document, requests, routing="round_robin")
    assert [r.instance_id for r in requests] == [0, 1, 0, 1]
    assert {r.instance_id for r in result.iterations} == {0, 1}
    # Two instances run at once: both first prefills take the same time from their own arrival.
    assert requests[1].token_times_ns[0] - requests[1].arrival_ns == LAYERS * 10 * US


def test_a_request_that_cannot_fit_the_kv_cache_alone_is_a_one_line_error() -> None:
    with pytest.raises(PipesimError, match="KV blocks"):
        _run(_document(TP1), [Request(0, 0, 1000, 10)], num_gpu_blocks=4)


def test_empty_requests_are_refused() -> None:
    with pytest.raises(PipesimError, match="no requests"):
        _run(_document(TP1), [])


def test_every_request_is_checked_before_anything_is_simulated() -> None:
    """Scheduler.check_request on every request up front: a too-long last request fails before the first one
    runs (no iteration simulated), naming its dataset line."""
    early = Request(0, 0, 10, 2, source="trace.jsonl:1")
    late = Request(1, 10**12, 200_000, 10, source="trace.jsonl:2")  # past Llama-3.1-8B's 131,072-token context
    with pytest.raises(PipesimError, match=r"trace\.jsonl:2.*max_model_len 131072") as info:
        _run(_document(TP1), [early, late])
    assert "\n" not in str(info.value)
    assert early.token_times_ns == []  # nothing ran


def test_pd_decode_instance_checks_the_whole_request_up_front() -> None:
    """P/D: the prefill instance sees prompt + first token, the decode one the whole request; a request whose
    decode KV cannot fit fails before the run, naming the decode instance."""
    document = _pd_document()
    request = Request(0, 0, 40, 40, source="trace.jsonl:7")  # 79 tokens of KV: 5 blocks of 16
    with pytest.raises(PipesimError, match=r"trace\.jsonl:7.*on instance 1"):
        _run(document, [request], num_gpu_blocks=5)  # 4 usable blocks (block 0 is the null block)
    assert request.token_times_ns == []


def test_without_chunked_prefill_the_default_budget_is_max_model_len() -> None:
    """vLLM: with chunked prefill off, max_num_batched_tokens defaults to max_model_len (131,072 for
    Llama-3.1-8B), so a 20,000-token prompt is one step; with it on, 8192-token chunks (3 prefill steps)."""
    document = _document(TP1)
    whole = Request(0, 0, 20_000, 1)
    result = _run(document, [whole], enable_chunked_prefill=False, num_gpu_blocks=2000)
    assert [r.prefill_tokens for r in result.iterations] == [20_000]
    chunked = Request(0, 0, 20_000, 1)
    result = _run(document, [chunked], num_gpu_blocks=2000)
    assert [r.prefill_tokens for r in result.iterations] == [8192, 8192, 3616]
