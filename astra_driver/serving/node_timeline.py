"""Per-NPU node times of a serving run (or its replay), for `--timeline` / `--timeline-png`, in bounded memory.

The run's own engines record nothing (they free finished graphs as always). The loop tells the recorder about
every launch instead (engine, tick, batch, how to rebuild its graphs); afterwards the kept launches are replayed on
fresh recording engines, one per instance plus the cluster link, at their recorded ticks: the builtin engine is
deterministic, so this gives the run's node times exactly (tests check it against a run recorded in full).

What is kept follows `--timeline-window` and `--timeline-max-events`:
  - launches after the window's end are dropped (their nodes all start after it);
  - a launch onto an idle engine before the window's start drops every earlier launch of that engine (they all
    finished by then, so nothing of them reaches the window and nothing they did changes what follows: an engine
    carries no state from finished graphs, except the doubleBinaryTree counters, so engines using that
    implementation keep everything);
  - the replay stops adding launches once max_events nodes inside the window have finished (all later nodes
    start later, so the N earliest are already recorded).
Only the kept launches' small descriptions (a batch, or an .et prefix) are held while the run goes on.

Every iteration's graphs reuse node ids 0..n-1, and an instance's engine numbers its NPUs 0..n-1, so each graph is
renumbered as it goes onto the recording engine: ids unique per NPU (offsets; order and times unchanged), names
prefixed with the batch ("batch 12: COMP_NODE_..."; KV transfers "kv 7: ..."), NPUs and peers as cluster NPU ids;
`facts(rank, node_id)` gives a node's bytes, peer, tag and collective.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace

from astra_driver.astra_config import AstraConfig
from astra_driver.engine import Engine
from astra_driver.report.timeline import NodeFacts, TimeWindow, facts_of
from llm_converter.graph import Graph, Node

LINK_ID_BASE = 1 << 40  # node ids of the cluster link's KV transfers start here, apart from the iterations'

NodeTime = tuple[int, str, int, int, int]  # (node_id, name, type, issue_ns, end_ns), as SimResult.node_times
GraphSource = Callable[[], Sequence[Graph]]  # rebuilds a launch's graphs (ranks local to its engine)


@dataclass
class _Launch:
    at_ns: int
    prefix: str  # "batch 12", "kv 7"
    graphs: GraphSource


@dataclass
class _Source:
    """One engine of the run: how to make it again, and its kept launches in launch order."""

    config: AstraConfig
    npus: int
    npu_ids: tuple[int, ...]
    comm_groups: dict[str, list[int]] | None
    link: bool
    forgets: bool  # whether launches before an idle point may be dropped (no state carried across graphs)
    launches: list[_Launch] = field(default_factory=list)
    done_in_window: int = 0  # nodes of finished launches at or after the window's start (the run's count)


class NodeTimeline:
    """Keeps a run's launches (window and max_events permitting) and replays them on recording engines."""

    def __init__(self, total_npus: int, window: TimeWindow | None = None, max_events: int | None = None) -> None:
        self.total_npus = total_npus
        self.window = window
        self.max_events = max_events
        self.total_nodes = 0  # nodes of every launch of the run, kept or not (the file's events_total)
        self._sources: dict[Hashable, _Source] = {}
        self._next_id: dict[tuple[bool, int], int] = {}
        self._firsts: list[list[int]] = [[] for _ in range(total_npus)]
        self._graphs: list[list[tuple[str, dict[int, NodeFacts]]]] = [[] for _ in range(total_npus)]
        self._times: list[list[NodeTime]] | None = None

    # -- during the run ------------------------------------------------------------------------------------

    def add_engine(
        self,
        key: Hashable,
        config: AstraConfig,
        npus: int,
        npu_ids: Sequence[int],
        comm_groups: dict[str, list[int]] | None = None,
        link: bool = False,
    ) -> None:
        system = config.system
        implementations = (
            system.all_reduce_implementation
            + system.all_gather_implementation
            + system.reduce_scatter_implementation
            + system.all_to_all_implementation
        )
        forgets = not any("doublebinarytree" in name.lower() for name in implementations)
        self._sources[key] = _Source(config, npus, tuple(npu_ids), comm_groups, link, forgets)

    def launched(
        self, key: Hashable, at_ns: int, prefix: str, graphs: GraphSource, node_count: int, idle: bool
    ) -> None:
        """A launch of the run onto engine `key` at `at_ns`; `idle`: nothing of that engine was in flight."""
        self.total_nodes += node_count
        window = self.window
        if window is not None and window.end_ns is not None and at_ns > window.end_ns:
            return
        source = self._sources[key]
        if self.max_events is not None and source.done_in_window >= self.max_events:
            return  # the replay would stop before this launch (see _replay): do not even keep it
        if idle and source.forgets and window is not None and window.start_ns is not None and at_ns < window.start_ns:
            source.launches.clear()
        source.launches.append(_Launch(at_ns, prefix, graphs))

    def finished(self, key: Hashable, at_ns: int, node_count: int) -> None:
        """A launch of the run (made at `at_ns`) has finished: counts towards max_events when in the window."""
        window = self.window
        if window is None or window.start_ns is None or at_ns >= window.start_ns:
            self._sources[key].done_in_window += node_count

    # -- afterwards ----------------------------------------------------------------------------------------

    def node_times(self) -> list[list[NodeTime]]:
        """Per cluster NPU, the recorded nodes (batch-prefixed names), instance engines before the link's."""
        if self._times is None:
            self._times = [[] for _ in range(self.total_npus)]
            for source in self._sources.values():
                self._replay(source)
        return self._times

    def facts(self, rank: int, node_id: int) -> NodeFacts | None:
        position = bisect_right(self._firsts[rank], node_id) - 1
        return self._graphs[rank][position][1].get(node_id) if position >= 0 else None

    def _replay(self, source: _Source) -> None:
        engine = Engine(source.config, npus=source.npus, comm_groups=source.comm_groups, record_node_times=True)
        window = self.window
        start = window.start_ns if window is not None and window.start_ns is not None else None
        in_window = [0]  # finished nodes of launches at or after the window's start (all inside it)
        for launch in source.launches:
            if launch.at_ns > engine.now:
                engine.run_until(launch.at_ns)
            if self.max_events is not None and in_window[0] >= self.max_events:
                break  # every later node starts after max_events nodes in the window did
            graphs = self._renumber(launch.graphs(), source.npu_ids, launch.prefix, source.link)
            handle = engine.add_workload(graphs, launch.at_ns)
            if start is None or launch.at_ns >= start:
                count = sum(len(graph.nodes) for graph in graphs)

                def done(_: object, __: int, count: int = count) -> None:
                    in_window[0] += count

                handle.on_done = done
        engine.run_until(None)
        recorded = engine.result().node_times
        assert recorded is not None
        assert self._times is not None
        for rank, times in enumerate(recorded):
            npu = source.npu_ids[rank]
            out = self._times[npu]
            for node_id, name, node_type, issue, end in times:
                out.append((node_id, f"{self._prefix(npu, node_id)}: {name}", node_type, issue, end))

    def _renumber(self, graphs: Sequence[Graph], npu_ids: Sequence[int], prefix: str, link: bool) -> list[Graph]:
        renumbered: list[Graph] = []
        for graph in graphs:
            npu = npu_ids[graph.rank]
            key = (link, npu)
            first = self._next_id.get(key, LINK_ID_BASE if link else 0)
            ids = [node.id for node in graph.nodes] or [0]
            offset = first - min(ids)
            self._next_id[key] = max(ids) + offset + 1
            facts: dict[int, NodeFacts] = {}
            nodes: list[Node] = []
            for node in graph.nodes:
                nodes.append(
                    replace(
                        node,
                        id=node.id + offset,
                        data_deps=[d + offset for d in node.data_deps],
                        ctrl_deps=[d + offset for d in node.ctrl_deps],
                    )
                )
                fact = facts_of(node, lambda rank: _global(rank, npu_ids))
                if fact is not None:
                    facts[node.id + offset] = fact
            position = bisect_right(self._firsts[npu], first)  # kept sorted by first id
            self._firsts[npu].insert(position, first)
            self._graphs[npu].insert(position, (prefix, facts))
            renumbered.append(Graph(rank=graph.rank, nodes=nodes))
        return renumbered

    def _prefix(self, rank: int, node_id: int) -> str:
        position = bisect_right(self._firsts[rank], node_id) - 1
        return self._graphs[rank][position][0] if position >= 0 else ""


def _global(rank: int | None, npu_ids: Sequence[int]) -> int | None:
    return npu_ids[rank] if rank is not None and 0 <= rank < len(npu_ids) else rank
