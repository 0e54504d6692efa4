"""pipesim's one in-memory graph: per-NPU lists of Chakra-shaped nodes, independent of protobuf.

The converter builds these; the Chakra writer serialises them; the builtin engine replays them directly
without touching disk. Field names and meanings follow Chakra (see CHAKRA_ET_SPEC section 3-4), so a
`Node` maps 1:1 onto a `ChakraProtoMsg.Node` record. Attributes pipesim does not model are kept verbatim
(`extra_attrs`, raw AttributeProto bytes) so reading and writing a foreign trace loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class NodeType(IntEnum):
    INVALID_NODE = 0
    METADATA_NODE = 1
    MEM_LOAD_NODE = 2
    MEM_STORE_NODE = 3
    COMP_NODE = 4
    COMM_SEND_NODE = 5
    COMM_RECV_NODE = 6
    COMM_COLL_NODE = 7


class CollectiveType(IntEnum):
    ALL_REDUCE = 0
    REDUCE = 1
    ALL_GATHER = 2
    GATHER = 3
    SCATTER = 4
    BROADCAST = 5
    ALL_TO_ALL = 6
    REDUCE_SCATTER = 7
    REDUCE_SCATTER_BLOCK = 8
    BARRIER = 9


# Collectives ASTRA-Sim's system layer simulates from comm_size (BROADCAST is replayed from duration).
SIMULATED_COLLECTIVES = frozenset(
    {CollectiveType.ALL_REDUCE, CollectiveType.ALL_GATHER, CollectiveType.REDUCE_SCATTER, CollectiveType.ALL_TO_ALL}
)

CHAKRA_VERSION = "0.0.4"


@dataclass(slots=True)
class Node:
    """One Chakra node. `None` means the attribute is absent from the record (not written)."""

    id: int
    name: str
    type: NodeType
    data_deps: list[int] = field(default_factory=list)
    ctrl_deps: list[int] = field(default_factory=list)
    duration_micros: int = 0
    start_time_micros: int = 0
    is_cpu_op: bool | None = False
    num_ops: int | None = None
    tensor_size: int | None = None
    comm_type: int | None = None
    comm_src: int | None = None
    comm_dst: int | None = None
    comm_tag: int | None = None
    comm_size: int | None = None
    comm_priority: int | None = None
    pg_name: str | None = None
    involved_dim: list[bool] | None = None
    # (name, serialized AttributeProto) of attributes pipesim does not interpret, or known ones stored with a
    # non-canonical kind; written verbatim after the known ones (a known name here replaces its typed field).
    extra_attrs: list[tuple[str, bytes]] = field(default_factory=list)
    # Serialized IOInfo messages (field present even if empty), or None when absent.
    inputs: bytes | None = None
    outputs: bytes | None = None

    @property
    def deps(self) -> list[int]:
        """All parents, data and control: current ASTRA-Sim enforces both."""
        if not self.ctrl_deps:
            return self.data_deps
        return self.data_deps + [d for d in self.ctrl_deps if d not in self.data_deps]


@dataclass(slots=True)
class Graph:
    """The graph of one NPU (one `.et` file): nodes in file order."""

    rank: int
    nodes: list[Node] = field(default_factory=list)
    version: str = CHAKRA_VERSION
    # Serialized AttributeProto records of the GlobalMetadata record, kept verbatim.
    metadata_attrs: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.nodes)

    def by_id(self) -> dict[int, Node]:
        return {node.id: node for node in self.nodes}


@dataclass(slots=True)
class Workload:
    """All ranks of one run: graph k is NPU k; `comm_groups` maps pg_name -> member ranks."""

    graphs: list[Graph]
    comm_groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def npus(self) -> int:
        return len(self.graphs)

    def node_count(self) -> int:
        return sum(len(g.nodes) for g in self.graphs)


class GraphBuilder:
    """Appends nodes to one rank's graph with consecutive ids (ids are issue priorities: lowest first).

    Every add_* returns the new node's id so callers can chain dependencies.
    """

    __slots__ = ("graph", "_next_id")

    def __init__(self, rank: int, first_id: int = 0) -> None:
        self.graph = Graph(rank=rank)
        self._next_id = first_id

    def _add(self, node: Node) -> int:
        self.graph.nodes.append(node)
        self._next_id += 1
        return node.id

    def comp(
        self,
        name: str,
        duration_micros: int,
        deps: list[int] | tuple[int, ...] = (),
        num_ops: int | None = None,
        tensor_size: int | None = None,
    ) -> int:
        return self._add(
            Node(
                self._next_id,
                name,
                NodeType.COMP_NODE,
                list(deps),
                duration_micros=duration_micros,
                num_ops=num_ops,
                tensor_size=tensor_size,
            )
        )

    def send(self, name: str, dst: int, tag: int, size: int, deps: list[int] | tuple[int, ...] = ()) -> int:
        return self._add(
            Node(
                self._next_id,
                name,
                NodeType.COMM_SEND_NODE,
                list(deps),
                comm_src=self.graph.rank,
                comm_dst=dst,
                comm_tag=tag,
                comm_size=size,
            )
        )

    def recv(self, name: str, src: int, tag: int, size: int, deps: list[int] | tuple[int, ...] = ()) -> int:
        return self._add(
            Node(
                self._next_id,
                name,
                NodeType.COMM_RECV_NODE,
                list(deps),
                comm_src=src,
                comm_dst=self.graph.rank,
                comm_tag=tag,
                comm_size=size,
            )
        )

    def collective(
        self,
        name: str,
        comm_type: CollectiveType,
        size: int,
        deps: list[int] | tuple[int, ...] = (),
        pg_name: str | None = None,
        involved_dim: list[bool] | None = None,
    ) -> int:
        return self._add(
            Node(
                self._next_id,
                name,
                NodeType.COMM_COLL_NODE,
                list(deps),
                comm_type=int(comm_type),
                comm_size=size,
                pg_name=pg_name,
                involved_dim=involved_dim,
            )
        )

    def memory(self, name: str, load: bool, tensor_size: int, deps: list[int] | tuple[int, ...] = ()) -> int:
        kind = NodeType.MEM_LOAD_NODE if load else NodeType.MEM_STORE_NODE
        return self._add(Node(self._next_id, name, kind, list(deps), tensor_size=tensor_size))
