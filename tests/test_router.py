"""Request routing: round-robin, least-loaded (outstanding tokens), seeded random, and P/D roles."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from astra_driver.cluster_config import cluster_config_from_dict
from astra_driver.serving.request import Request
from astra_driver.serving.router import make_router
from llm_converter.errors import PipesimError


def req(rid: int, inp: int = 100, out: int = 10) -> Request:
    return Request(request_id=rid, arrival_ns=rid, input_tokens=inp, output_tokens=out)


def plain(n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(instance_id=i, pd_type=None) for i in range(n)]


def test_round_robin_cycles_and_sets_instance_id() -> None:
    router = make_router("round-robin")
    requests = [req(i) for i in range(7)]
    assert [router.route(r, plain(3)) for r in requests] == [0, 1, 2, 0, 1, 2, 0]
    assert [r.instance_id for r in requests] == [0, 1, 2, 0, 1, 2, 0]


def test_least_loaded_counts_remaining_prompt_and_output_tokens() -> None:
    router = make_router("least_loaded")
    instances = plain(2)
    a, b = req(0, inp=100, out=10), req(1, inp=30, out=5)
    assert router.route(a, instances) == 0  # tie at 0 tokens: lowest id
    assert router.route(b, instances) == 1  # instance 0 owes 110
    assert (router.outstanding_tokens(0), router.outstanding_tokens(1)) == (110, 35)
    # a's prompt is computed and 6 of its tokens exist: 0 + 4 left; b untouched: 35.
    a.num_computed_tokens, a.num_generated = 105, 6
    assert router.outstanding_tokens(0) == 4
    c = req(2, inp=10, out=2)
    assert router.route(c, instances) == 0
    # A preemption resets the computed tokens: the prompt counts again (recompute), output stays as generated.
    a.num_computed_tokens = 0
    assert router.outstanding_tokens(0) == 100 + 4 + 12
    # Finished requests leave the load.
    a.finish_ns = 1000
    assert router.outstanding_tokens(0) == 12
    d = req(3, inp=1, out=1)
    assert router.route(d, instances) == 0  # 12 < 35


def test_random_is_seeded_and_uniform_over_candidates() -> None:
    router = make_router("random", seed=42)
    seq = [router.route(req(i), plain(4)) for i in range(200)]
    again = make_router("random", seed=42)
    assert [again.route(req(i), plain(4)) for i in range(200)] == seq
    expected_rng = random.Random(42)
    assert seq == [expected_rng.choice([0, 1, 2, 3]) for _ in range(200)]
    assert set(seq) == {0, 1, 2, 3}
    other = make_router("random", seed=7)
    assert [other.route(req(i), plain(4)) for i in range(200)] != seq


def pd_instances() -> list[SimpleNamespace]:
    roles = ["prefill", "decode", "prefill", "decode", "decode"]
    return [SimpleNamespace(instance_id=i, pd_type=role) for i, role in enumerate(roles)]


@pytest.mark.parametrize("policy", ["round_robin", "least_loaded", "random"])
def test_pd_new_requests_go_to_prefill_and_kv_to_decode(policy: str) -> None:
    router = make_router(policy, seed=1)
    instances = pd_instances()
    for i in range(20):
        r = req(i)
        assert router.route(r, instances) in (0, 2)
        r.num_computed_tokens, r.num_generated = r.input_tokens, 1  # prefill done, first token out
        assert router.route_decode(r, instances) in (1, 3, 4)
        assert r.instance_id in (1, 3, 4)


def test_pd_round_robin_keeps_separate_positions() -> None:
    router = make_router("round_robin")
    instances = pd_instances()
    new = [router.route(req(i), instances) for i in range(4)]
    handoff = [router.route_decode(req(10 + i), instances) for i in range(4)]
    assert new == [0, 2, 0, 2]
    assert handoff == [1, 3, 4, 1]


def test_pd_least_loaded_prefill_instance_owes_only_the_prompt() -> None:
    router = make_router("least_loaded")
    instances = pd_instances()
    a = req(0, inp=100, out=1000)
    assert router.route(a, instances) == 0
    assert router.outstanding_tokens(0) == 100  # the output is generated on a decode instance
    b = req(1, inp=50, out=10)
    assert router.route(b, instances) == 2
    a.num_computed_tokens, a.num_generated = 100, 1
    assert router.outstanding_tokens(0) == 0  # first token exists: a has left the prefill instance
    a.num_computed_tokens = 0  # the decode instance has not admitted it yet (its KV is on the way)
    assert router.route_decode(a, instances) == 1
    assert router.outstanding_tokens(1) == 999  # decode instance: only the remaining output
    b.num_computed_tokens, b.num_generated = 50, 1
    assert router.route_decode(b, instances) == 3  # 3 and 4 are empty: lowest id
    c = req(2, inp=10, out=5)
    c.num_computed_tokens, c.num_generated = 10, 1
    assert router.route_decode(c, instances) == 4


def test_routes_placed_instances_of_a_cluster_config() -> None:
    inst = {
        "model_name": "meta-llama/Llama-3.1-8B",
        "hardware": "RTXPRO6000",
        "npu_mem": {"mem_size": 96, "mem_bw": 1597, "mem_latency": 0},
        "num_npus": 1,
        "tp_size": 1,
        "pp_size": 1,
    }
    node = {"num_instances": 2, "cpu_mem": {"mem_size": 512, "mem_bw": 256, "mem_latency": 0}}
    cluster = cluster_config_from_dict(
        {
            "num_nodes": 1,
            "link_bw": 16,
            "link_latency": 20000,
            "nodes": [{**node, "instances": [{**inst, "pd_type": "prefill"}, {**inst, "pd_type": "decode"}]}],
        }
    )
    router = make_router("round_robin")
    r = req(0)
    assert router.route(r, cluster.instances()) == 0
    assert router.route_decode(r, cluster.instances()) == 1


def test_bad_policy_and_missing_roles_are_one_line_errors() -> None:
    with pytest.raises(PipesimError, match="--routing: 'fastest' is not a routing policy; use one of round_robin"):
        make_router("fastest")
    with pytest.raises(PipesimError, match='no instance has pd_type "decode"'):
        make_router("random").route_decode(req(0), plain(2))


def test_least_loaded_ties_take_turns_as_llmservingsim_load() -> None:
    """Requests that each finish before the next arrives find every instance idle: LLMServingSim's LOAD scans
    from its round-robin position, so they spread 0, 1, 2, 0 instead of all going to instance 0."""
    router = make_router("least_loaded")
    chosen = []
    for i in range(4):
        r = req(i)
        chosen.append(router.route(r, plain(3)))
        r.finish_ns = 10
    assert chosen == [0, 1, 2, 0]


def test_default_routing_is_least_loaded() -> None:
    """LLMServingSim's --request-routing-policy defaults to LOAD (least loaded); so do pipesim's run and loop."""
    from astra_driver.serving.loop import ServingRunConfig
    from astra_driver.serving.run_job import RunRequest

    assert RunRequest(Path("c.json"), Path("d.jsonl")).routing == "least_loaded"
    assert ServingRunConfig(cluster=None, requests=[]).routing == "least_loaded"  # type: ignore[arg-type]
