"""Serving iterations overlap across pipeline stages on a running engine (what the serving loop will do).

Two stages, one NPU each. Iteration k's graphs are built in memory with iteration-specific tags and added to
the running engine when stage 0 becomes free: stage 0 works on iteration k+1 while stage 1 finishes k.
Expected times are closed forms from the graphs' own durations and the link's delay.
"""

from __future__ import annotations

from astra_driver.astra_config import AstraConfig, NetworkConfig
from astra_driver.engine import Engine
from llm_converter.graph import NodeType
from llm_converter.graphs.forward import build_serving_workload
from llm_converter.layers import LayerList, LayerRow
from llm_converter.plan import ParallelPlan

HIDDEN, DTYPE_BYTES, TOKENS = 4096, 2, 64
BW_GB, LATENCY_NS = 16.0, 20_000.0


def _layers() -> LayerList:
    rows = [LayerRow("embedding", -1, 0, TOKENS, 3_000)]
    rows += [LayerRow("mlp", block, 0, TOKENS, 250_000) for block in range(2)]
    rows += [LayerRow("mlp", block, 1, TOKENS, 400_000) for block in range(2, 4)]
    rows += [LayerRow("lm_head", -1, 1, 1, 7_000)]
    return LayerList(rows, HIDDEN, DTYPE_BYTES)


def _compute_ns(graph) -> int:
    return sum(n.duration_micros * 1000 for n in graph.nodes if n.type == NodeType.COMP_NODE)


def test_iterations_overlap_across_stages() -> None:
    layers = _layers()
    plan = ParallelPlan(1, 2, 1, ((0, 2), (2, 4)))
    config = AstraConfig(NetworkConfig(["FullyConnected"], [2], [BW_GB], [LATENCY_NS]))
    engine = Engine(config)
    iterations = [build_serving_workload(layers, plan, iteration_id=k) for k in range(3)]
    s0, s1 = _compute_ns(iterations[0].graphs[0]), _compute_ns(iterations[0].graphs[1])
    assert (s0, s1) == (503_000, 807_000)
    link = int(LATENCY_NS + TOKENS * HIDDEN * DTYPE_BYTES / (BW_GB * 2**30 / 1e9))

    stage0_free = 0
    handles = []
    for workload in iterations:  # at most pp = 2 batches in flight: stage 0 takes the next when it is free
        first = engine.add_graph(0, workload.graphs[0], stage0_free)
        second = engine.add_graph(1, workload.graphs[1], stage0_free)
        handles.append((first, second))
        while first.finish_ns is None:
            engine.run_until(engine.next_event_ns())
        stage0_free = first.finish_ns
        assert engine.now == stage0_free
    engine.run()

    # Stage 0 finishes its compute, then its send (the comm slot) one link delay later.
    stage0_done = [(k + 1) * (s0 + link) for k in range(3)]
    assert [h[0].finish_ns for h in handles] == stage0_done
    # Stage 1 starts iteration k when its data arrived and iteration k-1 is done.
    stage1_done = []
    previous = 0
    for k in range(3):
        arrival = stage0_done[k]
        previous = max(arrival, previous) + s1
        stage1_done.append(previous)
    assert [h[1].finish_ns for h in handles] == stage1_done
    assert stage1_done[2] < 3 * (s0 + link + s1)  # overlap: faster than three iterations back to back
