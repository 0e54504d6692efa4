"""Engine checks against closed forms and hand-computed cases, deadlocks, errors, incremental graphs."""

from __future__ import annotations

import math

import pytest

from astra_driver.astra_config import AstraConfig, MemoryConfig, NetworkConfig, SystemConfig
from astra_driver.engine import Engine, simulate
from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.graph import CollectiveType, GraphBuilder, Node, NodeType, Workload


def _config(npus: int, topology: str = "Ring", splits: int = 4, bw: float = 50.0, lat: float = 500.0, **system):
    return AstraConfig(
        network=NetworkConfig([topology], [npus], [bw], [lat]),
        system=SystemConfig(preferred_dataset_splits=splits, **system),
    )


def _ring_formula(kind: CollectiveType, size: int, n: int, splits: int, bw: float, lat: float, local_bw: float) -> int:
    """The README's closed form for a 1-D ring collective (h = 1, endpoint delay 10)."""
    bytes_per_ns = bw * 2**30 / 1e9
    chunk = size // splits
    m, s, r = {
        CollectiveType.ALL_REDUCE: (chunk // n, 2 * (n - 1), n - 1),
        CollectiveType.REDUCE_SCATTER: (chunk // n, n - 1, n - 1),
        CollectiveType.ALL_GATHER: (chunk, n - 1, 0),
        CollectiveType.ALL_TO_ALL: (chunk // n, n * (n - 1) // 2, 0),
    }[kind]
    return splits * (s * math.floor(lat + m / bytes_per_ns) + r * 3 * math.floor(m / local_bw) + (s + 1) * 10)


def _collective_workload(n: int, kind: CollectiveType, size: int) -> Workload:
    graphs = []
    for rank in range(n):
        builder = GraphBuilder(rank)
        builder.collective("COMM_COLL_NODE_c", kind, size)
        graphs.append(builder.graph)
    return Workload(graphs)


@pytest.mark.parametrize("kind", [CollectiveType.ALL_REDUCE, CollectiveType.ALL_GATHER])
@pytest.mark.parametrize(("n", "splits", "size"), [(4, 4, 1 << 20), (8, 1, 1 << 22), (16, 2, 1 << 26), (3, 4, 3 << 20)])
def test_ring_collective_matches_closed_form(kind: CollectiveType, n: int, splits: int, size: int) -> None:
    config = _config(n, splits=splits, local_mem_bw=1600.0)
    result = simulate(_collective_workload(n, kind, size), config)
    expected = _ring_formula(kind, size, n, splits, 50.0, 500.0, 1600.0)
    assert result.finish_ns == [expected] * n
    assert result.exposed_comm_ns == [expected] * n


@pytest.mark.parametrize("kind", [CollectiveType.REDUCE_SCATTER, CollectiveType.ALL_TO_ALL])
def test_ring_reduce_scatter_and_all_to_all_closed_form(kind: CollectiveType) -> None:
    for n, size in ((4, 1 << 24), (8, 1 << 20)):
        result = simulate(_collective_workload(n, kind, size), _config(n, bw=100.0, lat=250.0))
        assert result.finish_ns == [_ring_formula(kind, size, n, 4, 100.0, 250.0, 1600.0)] * n


def test_readme_textbook_all_reduce() -> None:
    # 64 MiB all-reduce, 4 NPUs, 50 GB/s, 500 ns, one split, very fast local memory: 1,878,070 ns.
    result = simulate(
        _collective_workload(4, CollectiveType.ALL_REDUCE, 64 << 20), _config(4, splits=1, local_mem_bw=1e12)
    )
    assert result.finish_ns == [1_878_070] * 4


@pytest.mark.parametrize(
    ("topology", "npus", "dst", "hops"),
    [("Ring", 8, 1, 1), ("Ring", 8, 5, 3), ("Ring", 8, 4, 4), ("FullyConnected", 8, 5, 1), ("Switch", 8, 7, 2)],
)
def test_p2p_hops(topology: str, npus: int, dst: int, hops: int) -> None:
    size = 3 << 20
    graphs = [GraphBuilder(rank) for rank in range(npus)]
    graphs[0].send("COMM_SEND_NODE_s", dst, 9, size)
    graphs[dst].recv("COMM_RECV_NODE_r", 0, 9, size)
    for builder in graphs:
        if not builder.graph.nodes:
            builder.comp("COMP_NODE_idle", 1)
    result = simulate(Workload([b.graph for b in graphs]), _config(npus, topology))
    expected = math.floor(hops * 500.0 + size / (50.0 * 2**30 / 1e9))
    assert result.finish_ns[0] == expected and result.finish_ns[dst] == expected
    assert result.exposed_comm_ns[dst] == expected


def test_two_dimensional_all_reduce_pipelines_chunks() -> None:
    # RS on dim 0 (ring of 2), AR on dim 1 (switch of 4), AG on dim 0; dim 1 is the bottleneck queue.
    config = AstraConfig(network=NetworkConfig(["Ring", "Switch"], [2, 4], [400.0, 50.0], [936.25, 500.0]))
    result = simulate(_collective_workload(8, CollectiveType.ALL_REDUCE, 1 << 20), config)
    rs0 = math.floor(936.25 + 131072 / (400 * 2**30 / 1e9)) + 3 * (131072 // 1600) + 20
    ar1 = 6 * math.floor(1000 + 32768 / (50 * 2**30 / 1e9)) + 3 * 3 * (32768 // 1600) + 70
    ag0 = math.floor(936.25 + 131072 / (400 * 2**30 / 1e9)) + 20
    assert result.finish_ns == [rs0 + 4 * ar1 + ag0] * 8


def test_compute_slot_and_zero_duration() -> None:
    builder = GraphBuilder(0)
    a = builder.comp("COMP_NODE_a", 5)
    b = builder.comp("COMP_NODE_b", 0)
    builder.comp("COMP_NODE_c", 2, [a, b])
    other = GraphBuilder(1)
    other.comp("COMP_NODE_x", 1)
    result = simulate(Workload([builder.graph, other.graph]), _config(2), record_node_times=True)
    assert result.finish_ns == [5000 + 1 + 2000, 1000]
    assert result.node_times is not None
    assert [(t[0], t[3], t[4]) for t in result.node_times[0]] == [(0, 0, 5000), (1, 5000, 5001), (2, 5001, 7001)]


def test_recv_without_send_deadlocks_with_reason() -> None:
    sender, receiver = GraphBuilder(0), GraphBuilder(1)
    sender.comp("COMP_NODE_a", 1)
    receiver.recv("COMM_RECV_NODE_x", 0, 7, 1048576)
    with pytest.raises(DeadlockError) as info:
        simulate(Workload([sender.graph, receiver.graph]), _config(2))
    assert info.value.stuck == {1: [0]}
    assert "rank 1 node 0 COMM_RECV_NODE_x waits for a send 0->1 tag 7 size 1048576 that never comes" in str(info.value)


def test_size_mismatch_deadlocks() -> None:
    sender, receiver = GraphBuilder(0), GraphBuilder(1)
    sender.send("COMM_SEND_NODE_s", 1, 7, 2048)
    receiver.recv("COMM_RECV_NODE_r", 0, 7, 1024)
    with pytest.raises(DeadlockError, match="but that send has size 2048"):
        simulate(Workload([sender.graph, receiver.graph]), _config(2))


def test_send_without_recv_is_named_although_every_rank_finishes() -> None:
    """ASTRA-Sim completes sends eagerly, so both ranks finish; the unreceived send is still a broken trace."""
    sender, receiver = GraphBuilder(0), GraphBuilder(1)
    sender.comp("COMP_NODE_a", 1)
    sender.send("COMM_SEND_NODE_s", 1, 7, 1048576, deps=[0])
    sender.send("COMM_SEND_NODE_t", 1, 8, 1048576, deps=[1])
    receiver.recv("COMM_RECV_NODE_r", 0, 8, 1048576)
    with pytest.raises(DeadlockError) as info:
        simulate(Workload([sender.graph, receiver.graph]), _config(2))
    assert info.value.stuck == {0: [1]}
    assert str(info.value) == (
        "unreceived send(s): rank 0 node 1 COMM_SEND_NODE_s sends 0->1 tag 7 size 1048576 but rank 1 never receives it"
    )
    engine = Engine(_config(2))  # the incremental engine leaves the check to its caller (recvs may come later)
    engine.add_graph(0, sender.graph, 0)
    engine.add_graph(1, receiver.graph, 0)
    engine.run()
    assert engine.result().finish_ns == [1000 + 20031 + 20031, 1000 + 20031 + 20031]


def test_missing_collective_member_deadlocks() -> None:
    graphs = [GraphBuilder(rank) for rank in range(4)]
    for rank in range(3):
        graphs[rank].collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 1 << 20)
    graphs[3].comp("COMP_NODE_only", 1)
    with pytest.raises(DeadlockError) as info:
        simulate(Workload([g.graph for g in graphs]), _config(4))
    assert info.value.stuck == {0: [0], 1: [0], 2: [0]}
    assert "waits for ranks [3] that never issue it" in str(info.value)


def test_cycle_and_missing_dependency_deadlock() -> None:
    cyc = GraphBuilder(0)
    cyc.graph.nodes.append(Node(0, "COMP_NODE_a", NodeType.COMP_NODE, [1], duration_micros=1))
    cyc.graph.nodes.append(Node(1, "COMP_NODE_b", NodeType.COMP_NODE, [0], duration_micros=1))
    missing = GraphBuilder(1)
    missing.graph.nodes.append(Node(0, "COMP_NODE_c", NodeType.COMP_NODE, [42], duration_micros=1))
    with pytest.raises(DeadlockError) as info:
        simulate(Workload([cyc.graph, missing.graph]), _config(2))
    message = str(info.value)
    assert "dependency cycle" in message and "depends on missing node id(s) [42]" in message
    assert set(info.value.stuck) == {0, 1}


def test_unsupported_inputs_are_one_line_errors() -> None:
    graphs = [GraphBuilder(rank) for rank in range(2)]
    for builder in graphs:
        builder.collective("COMM_COLL_NODE_r", CollectiveType.REDUCE, 1024)
    with pytest.raises(PipesimError, match="Unsupported collective comm type REDUCE"):
        simulate(Workload([g.graph for g in graphs]), _config(2))
    graphs = [GraphBuilder(rank) for rank in range(2)]
    for builder in graphs:
        builder.memory("MEM_LOAD_NODE_x", True, 4096)
    with pytest.raises(PipesimError, match="Remote memory access is not supported"):
        simulate(Workload([g.graph for g in graphs]), _config(2))
    with pytest.raises(PipesimError, match="workload has 2 ranks but network.yml describes 4 NPUs"):
        simulate(Workload([g.graph for g in graphs]), _config(4))


def test_remote_memory_time() -> None:
    config = AstraConfig(
        network=NetworkConfig(["Ring"], [2], [50.0], [500.0]),
        memory=MemoryConfig("PER_NPU_MEMORY_EXPANSION", 1, 2, 100.0, 64.0),
    )
    graphs = [GraphBuilder(rank) for rank in range(2)]
    for builder in graphs:
        builder.memory("MEM_LOAD_NODE_x", True, 1 << 20)
    result = simulate(Workload([g.graph for g in graphs]), config)
    assert result.finish_ns == [math.floor(100.0 + (1 << 20) / (64 * 2**30 / 1e9))] * 2


def test_incremental_add_graph_at_later_tick() -> None:
    config = _config(2)
    done: list[tuple[int, int, int]] = []
    engine = Engine(config, on_graph_done=lambda handle, tick: done.append((handle.rank, handle.number, tick)))
    first = [GraphBuilder(rank) for rank in range(2)]
    for builder in first:
        c = builder.comp("COMP_NODE_a", 10)
        builder.collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 1 << 20, [c])
    handles = [engine.add_graph(rank, b.graph, 0) for rank, b in enumerate(first)]
    engine.run_until(5000)
    assert engine.now == 5000 and all(h.finish_ns is None for h in handles)
    ar = _ring_formula(CollectiveType.ALL_REDUCE, 1 << 20, 2, 4, 50.0, 500.0, 1600.0)
    second = GraphBuilder(0)
    second.comp("COMP_NODE_late", 3)
    late = engine.add_graph(0, second.graph, at_ns=20_000)
    engine.run()
    assert [h.finish_ns for h in handles] == [10_000 + ar, 10_000 + ar]
    assert late.finish_ns == max(20_000, 10_000 + 0) + 3000  # GPU slot free at 10,000: starts at its add tick
    assert (0, late.number, late.finish_ns) in done
    result = engine.result()
    assert result.finish_ns == [max(10_000 + ar, 23_000), 10_000 + ar]


def test_add_graph_in_the_past_is_an_error() -> None:
    engine = Engine(_config(2))
    engine.run_until(100)
    with pytest.raises(PipesimError, match="before the simulation's current tick 100"):
        engine.add_graph(0, GraphBuilder(0).graph, at_ns=50)


def test_async_collective_members_wait_for_the_last() -> None:
    # Rank 1 joins the all-reduce 1 ms late: no member can finish before rank 1 has contributed.
    graphs = [GraphBuilder(rank) for rank in range(2)]
    graphs[0].collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 1 << 20)
    c = graphs[1].comp("COMP_NODE_late", 1000)
    graphs[1].collective("COMM_COLL_NODE_ar", CollectiveType.ALL_REDUCE, 1 << 20, [c])
    result = simulate(Workload([g.graph for g in graphs]), _config(2))
    alone = _ring_formula(CollectiveType.ALL_REDUCE, 1 << 20, 2, 4, 50.0, 500.0, 1600.0)
    assert 1_000_000 < result.finish_ns[0] <= 1_000_000 + alone
    assert result.finish_ns[1] <= 1_000_000 + alone


def test_roofline_with_zero_ops_is_refused() -> None:
    builder = GraphBuilder(0)
    builder.comp("COMP_NODE_gather", 0, num_ops=0, tensor_size=4096)
    other = GraphBuilder(1)
    other.comp("COMP_NODE_idle", 1, num_ops=1, tensor_size=1)
    with pytest.raises(PipesimError, match=r"num_ops 0 in roofline mode; ASTRA-Sim divides 0 by a zero performance"):
        simulate(Workload([builder.graph, other.graph]), _config(2, roofline_enabled=True))
