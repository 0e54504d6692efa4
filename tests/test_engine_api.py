"""The incremental engine API the serving loop drives: stepping to the end, per-workload handles, per-graph
compute and exposed communication, freeing finished graphs, unreceived sends caught as soon as they are."""

from __future__ import annotations

import tracemalloc

import pytest

import astra_driver.engine.core as core
from astra_driver.astra_config import AstraConfig, NetworkConfig
from astra_driver.engine import DeadlockError, Engine
from llm_converter.graph import CollectiveType, GraphBuilder, NodeType
from llm_converter.graphs.forward import build_serving_workload
from llm_converter.layers import LayerList, LayerRow
from llm_converter.plan import ParallelPlan

BW_GB, LATENCY_NS = 16.0, 20_000.0


def _config(npus: int) -> AstraConfig:
    return AstraConfig(NetworkConfig(["FullyConnected"], [npus], [BW_GB], [LATENCY_NS]))


def _link_ns(size: int) -> int:
    return int(LATENCY_NS + size / (BW_GB * 2**30 / 1e9))


def test_run_until_next_event_ends_cleanly_when_nothing_is_left() -> None:
    engine = Engine(_config(2))
    builder = GraphBuilder(0)
    builder.comp("COMP_NODE_a", 5)
    handle = engine.add_graph(0, builder.graph, 0)
    steps = 0
    while True:
        tick = engine.next_event_ns()
        engine.run_until(tick)  # the last call gets None: a clean end, no TypeError
        steps += 1
        if tick is None:
            break
    assert handle.finish_ns == 5000 and steps == 2


def test_run_until_none_names_stuck_work() -> None:
    engine = Engine(_config(2))
    builder = GraphBuilder(1)
    builder.recv("COMM_RECV_NODE_x", src=0, tag=7, size=64)
    engine.add_graph(1, builder.graph, 0)
    assert engine.next_event_ns() is None
    with pytest.raises(DeadlockError, match="waits for a send 0->1 tag 7 size 64 that never comes"):
        engine.run_until(engine.next_event_ns())


def test_workload_handle_is_per_iteration_with_per_graph_compute_and_exposed_comm() -> None:
    engine = Engine(_config(2))
    done: list[tuple[object, int]] = []
    graphs = [GraphBuilder(rank) for rank in range(2)]
    a = graphs[0].comp("COMP_NODE_a", 10)
    graphs[0].send("COMM_SEND_NODE_x", dst=1, tag=3, size=1 << 20, deps=[a])
    r = graphs[1].recv("COMM_RECV_NODE_x", src=0, tag=3, size=1 << 20)
    graphs[1].comp("COMP_NODE_b", 4, [r])
    record = lambda w, t: done.append((w.label, t))  # noqa: E731
    first = engine.add_workload([g.graph for g in graphs], 1000, on_done=record, label=7)
    second = engine.add_workload([g.graph for g in graphs], 1000, label=8)  # same graphs again, same tags: FIFO
    engine.run()
    link = _link_ns(1 << 20)
    assert first.graphs[0].finish_ns == 1000 + 10_000 + link
    assert first.finish_ns == 1000 + 10_000 + link + 4000
    assert done == [(7, first.finish_ns)]
    # Per graph: rank 1 waited for the message, then computed 4 us; its exposed communication is the wait.
    rank1 = first.graph(1)
    assert rank1.compute_ns == 4000 and rank1.exposed_comm_ns == 10_000 + link
    assert first.graph(0).compute_ns == 10_000 and first.graph(0).exposed_comm_ns == link
    # The second iteration computes when the GPU slot is free (10 us later); its send waits for the comm slot.
    assert second.graph(0).finish_ns == 1000 + 10_000 + 2 * link
    assert second.graph(1).compute_ns == 4000
    assert second.finish_ns == 1000 + 10_000 + 2 * link + 4000


def test_unreceived_send_is_caught_when_its_workload_finishes() -> None:
    engine = Engine(_config(2))
    graphs = [GraphBuilder(rank) for rank in range(2)]
    graphs[0].send("COMM_SEND_NODE_x", dst=1, tag=3, size=64)
    graphs[1].comp("COMP_NODE_b", 1)
    engine.add_workload([g.graph for g in graphs], 0, label="iteration 0")
    with pytest.raises(DeadlockError, match="workload iteration 0 finished with unreceived send.*tag 3 size 64"):
        engine.run_until(10**9)


def _layers(tokens: int) -> LayerList:
    rows = [LayerRow("embedding", -1, 0, tokens, 3_000)]
    rows += [LayerRow("mlp", block, 0, tokens, 250_000) for block in range(2)]
    rows += [LayerRow("mlp", block, 1, tokens, 400_000) for block in range(2, 4)]
    rows += [LayerRow("lm_head", -1, 1, 1, 7_000)]
    return LayerList(rows, 4096, 2)


def _pipelined(engine: Engine, iterations: int) -> list[int]:
    """Iteration k added when stage 0 is free and iteration k-2 is done (at most 2 in flight, as the serving loop
    does); returns each iteration's finish."""
    plan = ParallelPlan(1, 2, 1, ((0, 2), (2, 4)))
    workloads = [build_serving_workload(_layers(64), plan, iteration_id=k) for k in range(4)]
    finishes: list[int] = []
    handles = []
    for k in range(iterations):
        while handles and (handles[-1].graph(0).finish_ns is None or (k >= 2 and handles[-2].finish_ns is None)):
            engine.run_until(engine.next_event_ns())
        handle = engine.add_workload(workloads[k % 4], engine.now, label=k)
        handle.on_done = lambda w, tick: finishes.append(tick)
        handles = [*handles[-1:], handle]
    engine.run_until(None)
    return finishes


def test_finished_graphs_are_freed_and_times_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _pipelined(Engine(_config(2)), 50)
    monkeypatch.setattr(core, "COMPACT_MIN_NODES", 4)
    engine = Engine(_config(2))
    assert _pipelined(engine, 50) == reference
    s0, s1 = 503_000, 807_000
    link = _link_ns(64 * 4096 * 2)
    expected, start, previous = [], 0, 0
    for _ in range(50):
        stage0_done = start + s0 + link
        expected.append(max(stage0_done, previous) + s1)
        # the next launches when stage 0 is free and the iteration before this one is done
        start = max(stage0_done, previous)
        previous = expected[-1]
    assert reference == expected
    assert all(len(state.ids) <= 16 for state in engine.ranks)  # 4 nodes per graph: a few graphs at most
    assert not engine._events


def test_memory_is_flat_over_many_iterations() -> None:
    engine = Engine(_config(2))
    _pipelined(engine, 2_000)  # warm caches (names, delays)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _pipelined(engine, 10_000)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert after - before < 2_000_000  # ~40,000 nodes replayed; without freeing they hold ~10 MB
    assert not any(state.waiting_recvs or state.arrived for state in engine.ranks)  # no empty queue per tag left
    assert all(len(state.ids) < 3 * core.COMPACT_MIN_NODES for state in engine.ranks)


def _collective_rounds(engine: Engine) -> list[tuple[int | None, int | None]]:
    finishes = []
    for k in range(20):
        graphs = [GraphBuilder(rank) for rank in range(2)]
        for rank, builder in enumerate(graphs):
            c = builder.comp("COMP_NODE_c", 1 + rank * k)
            builder.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 1 << 16, [c])
        assert sum(1 for n in graphs[0].graph.nodes if n.type == NodeType.COMM_COLL_NODE) == 1
        handle = engine.add_workload([g.graph for g in graphs], engine.now, label=k)
        engine.run_until(None)
        finishes.append((handle.graph(0).finish_ns, handle.graph(1).finish_ns))
    return finishes


def test_collectives_keep_matching_across_compactions(monkeypatch: pytest.MonkeyPatch) -> None:
    reference = _collective_rounds(Engine(_config(2)))
    monkeypatch.setattr(core, "COMPACT_MIN_NODES", 2)
    engine = Engine(_config(2))
    assert _collective_rounds(engine) == reference
    assert all(len(state.ids) <= 4 for state in engine.ranks)


def test_request_stop_ends_run_until_at_the_tick_of_the_callback() -> None:
    engine = Engine(_config(2))
    ticks = []
    for duration in (5, 7):
        builder = GraphBuilder(0)
        builder.comp("COMP_NODE_a", duration)
        handle = engine.add_graph(0, builder.graph, 0)
        handle.on_done = lambda h, tick: (ticks.append(tick), engine.request_stop())
    assert engine.run_until(10**9) is True and engine.now == 5_000 and ticks == [5_000]
    assert engine.run_until(10**9) is True and engine.now == 12_000 and ticks == [5_000, 12_000]
    assert engine.run_until(10**9) is False and engine.now == 10**9  # nothing left: the clock moves to the bound
    builder = GraphBuilder(1)
    builder.comp("COMP_NODE_b", 1)
    engine.add_graph(1, builder.graph)
    assert engine.run_until(2 * 10**9, advance_clock=False) is False and engine.now == 10**9 + 1000
