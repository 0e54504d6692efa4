"""pipesim's builtin engine: ASTRA-Sim's analytical (congestion-unaware) semantics, in process.

result = simulate(workload, config)            # whole workload, run to completion
engine = Engine(config); engine.add_graph(...) # incremental: add graphs to a running simulation
"""

from __future__ import annotations

from astra_driver.astra_config import AstraConfig, check_workload_matches
from astra_driver.engine.core import Engine, GraphHandle, SimResult
from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.graph import Workload
from llm_converter.perf import paused_gc

__all__ = ["DeadlockError", "Engine", "GraphHandle", "SimResult", "simulate"]


def simulate(
    workload: Workload,
    config: AstraConfig,
    record_node_times: bool = False,
    injection_scale: float = 1.0,
) -> SimResult:
    """Replay every rank's graph from tick 0 to completion, as ASTRA-Sim's analytical binary would."""
    check_workload_matches(workload, config)
    for graph in workload.graphs:
        if not graph.nodes:
            raise PipesimError(f"rank {graph.rank}: the graph has no nodes; ASTRA-Sim aborts at load (give it one)")
    engine = Engine(
        config,
        npus=workload.npus,
        comm_groups=workload.comm_groups,
        record_node_times=record_node_times,
        injection_scale=injection_scale,
    )
    with paused_gc():
        for rank, graph in enumerate(workload.graphs):
            engine.add_graph(rank, graph, 0)
        engine.run()
        engine.check_sends_received()
        return engine.result()
