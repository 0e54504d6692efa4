"""The whole-workload fast path (astra_driver/engine/fast_path.py) against the general event loop, tick for tick.

Random chains of computes and collectives (groups, the whole network, involved dimensions, every collective type,
several chunks, LIFO/FIFO) are added the way the serving loop adds them, plus graphs added while a fast workload
is in flight, from outside and from inside its callbacks: every callback (order and tick), every handle's finish
and compute, and every rank's result must be the same with the fast path on and off."""

from __future__ import annotations

import random

import pytest

from astra_driver.astra_config import AstraConfig, NetworkConfig, SystemConfig
from astra_driver.engine import Engine
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, Graph, GraphBuilder
from llm_converter.graphs.forward import build_serving_workload
from llm_converter.layers import LayerList, LayerRow
from llm_converter.plan import ParallelPlan

TYPES = [CollectiveType.ALL_REDUCE, CollectiveType.ALL_GATHER, CollectiveType.REDUCE_SCATTER, CollectiveType.ALL_TO_ALL]


def _setup(rng: random.Random) -> tuple[AstraConfig, dict[str, list[int]]]:
    shape = rng.choice(["ring", "fc", "switch", "2d"])
    npus = rng.choice([2, 4, 8])
    if shape == "2d":
        network = NetworkConfig(["Ring", "Switch"], [2, npus // 2], [50.0, 25.0], [500.0, 2000.0])
    else:
        topology = {"ring": "Ring", "fc": "FullyConnected", "switch": "Switch"}[shape]
        network = NetworkConfig([topology], [npus], [rng.choice([25.0, 100.0])], [rng.choice([0.0, 700.0])])
    impl = ["direct"] if shape == "fc" and rng.random() < 0.5 else ["ring"]
    system = SystemConfig(
        scheduling_policy=rng.choice(["LIFO", "FIFO"]),
        preferred_dataset_splits=rng.choice([1, 2, 4]),
        active_chunks_per_dimension=rng.choice([1, 1, 2]),
        all_reduce_implementation=impl,
        all_gather_implementation=impl,
        reduce_scatter_implementation=impl,
        all_to_all_implementation=impl,
    )
    size = rng.choice([g for g in (1, 2, 4) if g <= npus and npus % g == 0])
    groups = {str(i + 1): list(range(i * size, (i + 1) * size)) for i in range(npus // size)}
    return AstraConfig(network, system), groups


def _workload(
    rng: random.Random, npus: int, groups: dict[str, list[int]], two_dims: bool, kinds: dict[str, tuple]
) -> list[Graph]:
    """Chains on a random set of whole groups; every rank follows one template of steps. Collectives of one scope
    (the whole network, or one group) have one type and size per run, so workloads added while others run still
    match whatever order their members issue them in."""
    names = sorted(groups)
    whole = "all" in kinds  # one scope per run: two scopes could deadlock each other through the comm slot
    chosen = names if whole or rng.random() < 0.3 else rng.sample(names, rng.randint(1, len(names)))
    ranks = sorted(rank for name in chosen for rank in groups[name])
    template = []
    for _ in range(rng.randint(1, 6)):
        scope = ("all" if whole else "group") if rng.random() < 0.85 else "none"
        template.append((scope, [rng.choice([0, 1, 2, 7]) for _ in range(npus)]))
    involved = [True, False] if two_dims and rng.random() < 0.5 else None
    group_of = {rank: name for name, members in groups.items() for rank in members}
    if (whole or len(chosen) == 1) and rng.random() < 0.5:
        # One chain shared by every rank (what the converter builds for a TP stage): the lockstep walk.
        for _, durations in template:
            durations[:] = [durations[0]] * npus
        builder = GraphBuilder(ranks[0])
        _chain(builder, template, rng, None if whole else group_of[ranks[0]], kinds, involved)
        return [Graph(rank=rank, nodes=builder.graph.nodes) for rank in ranks]
    graphs = []
    for rank in ranks:
        builder = GraphBuilder(rank)
        last = None
        for scope, durations in template:
            last = builder.comp(f"c{last}", durations[rank], [] if last is None else [last])
            if scope != "none":
                pg = None if scope == "all" else group_of[rank]
                kind, size = kinds["all" if pg is None else pg]
                last = builder.collective(f"x{last}", kind, size, [last], pg, involved if pg is None else None)
        if rng.random() < 0.5:
            last = builder.comp("tail", rng.choice([0, 3]), [last])
        graphs.append(builder.graph)
    return graphs


def _chain(builder: GraphBuilder, template: list, rng: random.Random, pg: str | None, kinds: dict, involved) -> None:
    last = None
    for scope, durations in template:
        last = builder.comp(f"c{last}", durations[0], [] if last is None else [last])
        if scope != "none":
            kind, size = kinds["all" if pg is None else pg]
            last = builder.collective(f"x{last}", kind, size, [last], pg, involved if pg is None else None)
    if rng.random() < 0.5:
        builder.comp("tail", rng.choice([0, 3]), [last])


def _run(seed: int, fast: bool) -> tuple[list, list, list]:
    rng = random.Random(seed)
    config, groups = _setup(rng)
    npus = config.network.npus_count[0] * (config.network.npus_count[1] if len(config.network.npus_count) > 1 else 1)
    engine = Engine(config, npus=npus, comm_groups=groups)
    engine.fast_path = fast
    two_dims = len(config.network.npus_count) > 1
    log: list[tuple] = []
    handles = []
    scopes = ["all"] if rng.random() < 0.4 else list(groups)
    kinds = {scope: (rng.choice(TYPES), rng.choice([64, 4096, 1 << 20, 3_000_001])) for scope in scopes}
    plans = [_workload(rng, npus, groups, two_dims, kinds) for _ in range(12)]
    extra = [rng.random() for _ in range(64)]
    extra_ranks = [rng.randrange(npus) for _ in range(64)]
    # Where the driver stops after each add: drawn up front, so both runs step alike however many events they have.
    steps = [[rng.choice([0, 0, 500, 5000, 40_000, 200_000]) for _ in range(rng.choice([1, 2, 4]))] for _ in plans]
    outside = [rng.random() < 0.3 for _ in plans]

    def single(rank: int) -> Graph:
        builder = GraphBuilder(rank)
        builder.comp("extra", 2)
        return builder.graph

    def graph_done(handle, tick: int) -> None:
        log.append(("graph", handle.rank, tick))
        if extra and extra.pop() < 0.15:
            handles.append(engine.add_graph(extra_ranks.pop(), single(0), tick))  # from inside a callback
        if extra and extra.pop() < 0.3:
            engine.request_stop()

    def workload_done(handle, tick: int) -> None:
        log.append(("workload", handle.label, tick))
        engine.request_stop()

    for label, graphs in enumerate(plans):
        handle = engine.add_workload(graphs, engine.now, label=label, on_done=workload_done)
        for graph_handle in handle.graphs:
            graph_handle.on_done = graph_done
        handles.append(handle)
        # Run a while (a callback may stop it earlier): the next workload then often comes in while this one runs.
        for delta in steps[label]:
            engine.run_until(engine.now + delta)
        if outside[label]:
            handles.append(engine.add_graph(extra_ranks.pop(), single(0), engine.now))  # from outside
    engine.run()
    figures = []
    for handle in handles:
        graphs = handle.graphs if hasattr(handle, "graphs") else [handle]
        figures.append([(g.rank, g.finish_ns, g.compute_ns, g.exposed_comm_ns) for g in graphs])
    result = engine.result()
    return log, figures, [result.finish_ns, result.exposed_comm_ns]


@pytest.mark.parametrize("seed", range(200))
def test_fast_path_matches_the_general_loop_tick_for_tick(seed: int) -> None:
    assert _run(seed, fast=True) == _run(seed, fast=False)


def test_fast_path_takes_tp_serving_iterations() -> None:
    """A tp 2 serving iteration on its own engine is what the fast path is for: it takes it, same ticks."""
    rows = [LayerRow("embedding", -1, 0, 64, 3_000, comm="all_reduce", comm_bytes=1 << 20)]
    rows += [LayerRow("o_proj", block, 0, 64, 250_000, comm="all_reduce", comm_bytes=1 << 20) for block in range(4)]
    rows += [LayerRow("lm_head", -1, 0, 1, 7_000, comm="all_gather", comm_bytes=1 << 16)]
    layers = LayerList(rows, 4096, 4)
    plan = ParallelPlan(2, 1, 1, ((0, 4),))
    workload = build_serving_workload(layers, plan, 0)
    finishes = []
    for fast in (True, False):
        config = AstraConfig(NetworkConfig(["FullyConnected"], [2], [50.0], [1000.0]))
        engine = Engine(config, npus=2, comm_groups=plan.comm_groups())
        engine.fast_path = fast
        first = engine.add_workload(workload, 0)
        assert (engine._fast is not None) == fast
        engine.run()
        second = engine.add_workload(workload, engine.now)
        engine.run()
        finishes.append([(g.finish_ns, g.compute_ns) for h in (first, second) for g in h.graphs])
    assert finishes[0] == finishes[1]
    assert finishes[0][2][0] == 2 * finishes[0][0][0]


@pytest.mark.parametrize("shape", ["fan", "cpu", "broadcast", "outsider"])
def test_fast_path_refuses_what_it_is_not_proven_for(shape: str) -> None:
    """Shared nodes that are no chain of GPU computes and one-group collectives take the general path (which
    also raises the general path's error, at the same point, for a rank outside the collective's group)."""
    builder = GraphBuilder(0)
    a = builder.comp("a", 3)
    b = builder.collective("x", CollectiveType.ALL_REDUCE, 4096, [a], pg_name="1")
    if shape == "fan":
        builder.comp("c", 2, [a, b])
    elif shape == "cpu":
        builder.comp("c", 2, [b])
        builder.graph.nodes[-1].is_cpu_op = True
    elif shape == "broadcast":
        builder.collective("y", CollectiveType.BROADCAST, 64, [b], pg_name="1")
        builder.graph.nodes[-1].duration_micros = 4
    else:
        builder.collective("y", CollectiveType.ALL_REDUCE, 64, [b], pg_name="2")
    outcomes = []
    for fast in (True, False):
        engine = Engine(AstraConfig(NetworkConfig(["Ring"], [4], [50.0], [100.0])), 4, {"1": [0, 1], "2": [0, 2]})
        engine.fast_path = fast
        handle = engine.add_workload([Graph(rank=rank, nodes=builder.graph.nodes) for rank in (0, 1)], 0)
        assert engine._fast is None
        try:
            engine.run()
        except PipesimError as error:
            outcomes.append((str(error), engine.now))
            continue
        outcomes.append([g.finish_ns for g in handle.graphs])
    assert outcomes[0] == outcomes[1]
    if shape == "outsider":
        assert outcomes[0][0].startswith("rank 1 node 2 y: rank 1 is not in communicator group 2")
