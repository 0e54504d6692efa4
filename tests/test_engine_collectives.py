"""doubleBinaryTree, chunk sizes and active chunks per dimension, against hand-derived schedules.

No conformance case covers these: the expected ticks below come from ASTRA-Sim's source semantics
(DoubleBinaryTreeAllReduce, BinaryTree, DoubleBinaryTreeTopology, Sys::determine_chunk_size,
Sys::generate_collective, SchedulerUnit) worked through by hand. Common numbers, 50 GB/s, 500 ns per hop,
endpoint delay E = 10, local-mem-bw 1600 B/ns:
    delta_h(m) = floor(h * 500 + m / (50 * 2^30 / 1e9))   message of m bytes over h ring hops
    X(m)       = 3 * floor(m / 1600)                        reduction of a received m-byte chunk
Tree of n = 4 (local ids): RootMax 3 <- 1 <- {0, 2}; RootMin 0 <- 2 <- {1, 3}. On a 4-ring the child-to-middle
messages take 1 hop, middle-to-root 2 hops.
"""

from __future__ import annotations

import math

import pytest

from astra_driver.astra_config import AstraConfig, NetworkConfig, SystemConfig
from astra_driver.engine import simulate
from astra_driver.engine.collectives import ROOT_MAX, ROOT_MIN, binary_tree_parents
from llm_converter.errors import PipesimError
from llm_converter.graph import CollectiveType, GraphBuilder, Workload

AR, RS, AG, A2A = (
    CollectiveType.ALL_REDUCE,
    CollectiveType.REDUCE_SCATTER,
    CollectiveType.ALL_GATHER,
    CollectiveType.ALL_TO_ALL,
)
DBT = "doubleBinaryTree"
E = 10
BYTES_PER_NS = 50.0 * 2**30 / 1e9


def delta(hops: int, size: int) -> int:
    return math.floor(hops * 500.0 + size / BYTES_PER_NS)


def reduction(size: int) -> int:
    return 3 * math.floor(size / 1600)


def _config(counts: list[int], splits: int = 1, topology: str = "Ring", **system) -> AstraConfig:
    dims = len(counts)
    return AstraConfig(
        network=NetworkConfig([topology] * dims, counts, [50.0] * dims, [500.0] * dims),
        system=SystemConfig(preferred_dataset_splits=splits, **system),
    )


def _dbt(counts: list[int], splits: int = 1, **system) -> AstraConfig:
    impls = {f"{kind}_implementation": [DBT] * len(counts) for kind in ("all_reduce", "reduce_scatter")}
    impls |= {f"{kind}_implementation": [DBT] * len(counts) for kind in ("all_gather", "all_to_all")}
    return _config(counts, splits, **(impls | system))


def _chain(npus: int, kinds: list[CollectiveType], size: int) -> Workload:
    """Every rank issues the collectives in order, each depending on the previous one."""
    graphs = []
    for rank in range(npus):
        builder = GraphBuilder(rank)
        previous: list[int] = []
        for number, kind in enumerate(kinds):
            previous = [builder.collective(f"COMM_COLL_NODE_{number}", kind, size, previous)]
        graphs.append(builder.graph)
    return Workload(graphs)


def test_binary_tree_shapes() -> None:
    # BinaryTree numbers the nodes in order; RootMax hangs the perfect tree of n - 1 nodes left of the root.
    assert binary_tree_parents(2, ROOT_MAX) == [1, -1]
    assert binary_tree_parents(2, ROOT_MIN) == [-1, 0]
    assert binary_tree_parents(4, ROOT_MAX) == [1, 3, 1, -1]
    assert binary_tree_parents(4, ROOT_MIN) == [-1, 2, 0, 2]
    assert binary_tree_parents(8, ROOT_MAX) == [1, 3, 1, 7, 5, 3, 5, -1]
    assert binary_tree_parents(8, ROOT_MIN) == [-1, 2, 4, 2, 0, 6, 4, 6]


def test_dbt_all_reduce_4_npus_one_chunk() -> None:
    """1 MiB, 4-ring, one chunk on RootMax (root 3, middle 1, leaves 0 and 2), everyone starts at 0.

    leaves 0, 2: bundle E, send up (1 hop)              -> at 1: E + d1
    middle 1:    both in, reducing bundle E + X, send up (2 hops)  -> at 3: 2E + X + d1 + d2
    root 3:      reducing bundle, send down: done        3E + 2X + d1 + d2
    middle 1:    in at 3E + 2X + d1 + 2d2, reducing bundle, send to both: done  4E + 3X + d1 + 2d2
    leaves:      in at 4E + 3X + 2d1 + 2d2, bundle E: done                       5E + 3X + 2d1 + 2d2
    """
    m = 1 << 20
    d1, d2, x = delta(1, m), delta(2, m), reduction(m)
    assert (d1, d2, x) == (20031, 20531, 1965)
    leaf, middle, root = 5 * E + 3 * x + 2 * d1 + 2 * d2, 4 * E + 3 * x + d1 + 2 * d2, 3 * E + 2 * x + d1 + d2
    result = simulate(_chain(4, [AR], m), _dbt([4]))
    assert result.finish_ns == [leaf, middle, leaf, root] == [87069, 67028, 87069, 44522]


def test_dbt_all_reduce_8_npus_one_chunk() -> None:
    """1 MiB, 8-ring, RootMax: root 7 <- 3 <- {1, 5}, 1 <- {0, 2}, 5 <- {4, 6}; hops 1 (leaf-1/5), 2 (1/5-3),
    4 (3-7). Up: leaves send at E, 1/5 at 2E + X + d1, 3 at 3E + 2X + d1 + d2; root done at 4E + 3X + d1 + d2 + d4;
    3 done at 5E + 4X + d1 + d2 + 2d4; 1/5 done at 6E + 5X + d1 + 2d2 + 2d4; leaves at 7E + 5X + 2d1 + 2d2 + 2d4.
    """
    m = 1 << 20
    d1, d2, d4, x = delta(1, m), delta(2, m), delta(4, m), reduction(m)
    leaf = 7 * E + 5 * x + 2 * d1 + 2 * d2 + 2 * d4
    low = 6 * E + 5 * x + d1 + 2 * d2 + 2 * d4
    top = 5 * E + 4 * x + d1 + d2 + 2 * d4
    root = 4 * E + 3 * x + d1 + d2 + d4
    result = simulate(_chain(8, [AR], m), _dbt([8]))
    assert result.finish_ns == [leaf, low, leaf, top, leaf, low, leaf, root]
    assert result.finish_ns[7] == 68028 and result.finish_ns[0] == 134081


def test_dbt_on_fully_connected_8_npus() -> None:
    """Every message is 1 hop: leaves done at 7E + 5X + 6d, root at 4E + 3X + 3d (256 KiB)."""
    m = 1 << 18
    d, x = delta(1, m), reduction(m)
    config = _dbt([8], topology="FullyConnected")
    result = simulate(_chain(8, [AR], m), config)
    assert result.finish_ns[0] == 7 * E + 5 * x + 6 * d
    assert result.finish_ns[7] == 4 * E + 3 * x + 3 * d
    assert result.finish_ns[3] == 5 * E + 4 * x + 4 * d


def test_dbt_two_chunks_alternate_trees() -> None:
    """1 MiB in 2 chunks of 512 KiB (d1 = 10265, d2 = 10765, X = 981), one active chunk.

    Chunk 0 on RootMax, all at 0: done [45053, 34778, 45053, 23022] (formulas of the one-chunk test).
    Chunk 1 on RootMin (root 0, middle 2, leaves 1, 3), each rank starting at its chunk 0 finish:
      leaf 1 sends at 34788, in at 2 at 45053; leaf 3 sends at 23032, in at 33297; 2 started at 45053
      -> 2 sends up at 45053 + 991 = 46044, in at 0 at 56809 (0 started at 45053) -> 0 done 57800;
      2 gets it at 68565 -> done 69556; leaves get it at 79821 -> done 79831.
    """
    result = simulate(_chain(4, [AR], 1 << 20), _dbt([4], splits=2))
    assert result.finish_ns == [57800, 79831, 69556, 79831]


def test_dbt_tree_counter_carries_over_collectives_per_type() -> None:
    """Two 1 MiB all-reduces in a row (one chunk each): the first on RootMax, the second on RootMin, each rank
    starting the second at its first finish s = [87069, 67028, 87069, 44522]:
      leaves 1 / 3 send at 67038 / 44532, in at 2 at 87069 / 64563; 2 (started 87069) sends up at 89044;
      in at 0 at 109575 -> 0 done 111550; 2 done 134056; leaves done 154097.
    A reduce-scatter after the all-reduce uses its own topology's counter: RootMax again, from the same s:
      leaves 0 / 2 send at 87079, in at 1 at 107110; 1 sends up at 109085; 3 done 131591; 1 done 154097;
      leaves done 174138.
    """
    result = simulate(_chain(4, [AR, AR], 1 << 20), _dbt([4]))
    assert result.finish_ns == [111550, 154097, 134056, 154097]
    result = simulate(_chain(4, [AR, RS], 1 << 20), _dbt([4]))
    assert result.finish_ns == [174138, 154097, 174138, 131591]


@pytest.mark.parametrize("kind", [RS, AG, A2A])
def test_dbt_named_for_other_collectives_runs_the_tree_all_reduce(kind: CollectiveType) -> None:
    # Sys::generate_collective_phase builds DoubleBinaryTreeAllReduce for any type, on the whole chunk.
    result = simulate(_chain(4, [kind], 1 << 20), _dbt([4]))
    assert result.finish_ns == [87069, 67028, 87069, 44522]


def test_dbt_lower_dimension_with_local_bw_aware() -> None:
    """Ring(4) x Ring(2), all-reduce [doubleBinaryTree, ring], localBWAware, 1 MiB, one chunk.

    Phase 1, "reduce-scatter" on dim 0: a tree all-reduce of 1 MiB on RootMax (first call of the counter):
      [87069, 67028, 87069, 44522] in both lines; the size stays 1 MiB.
    Phase 2, ring all-reduce on dim 1 (pairs r, r + 4 start together): 2 * d1(512 KiB) + X(512 KiB) + 30
      = 2 * 10265 + 981 + 30 = 21541 -> [108610, 88569, 108610, 66063].
    Phase 3, "all-gather" on dim 0: the counter's second call, RootMin, from those starts: leaves 1 / 3 send at
      88579 / 66073, in at 2 at 108610 / 86104; 2 sends up at 110585; 0 done 133091; 2 done 155597; leaves
      done 175638.
    """
    config = _config([4, 2], all_reduce_implementation=[DBT, "ring"])
    result = simulate(_chain(8, [AR], 1 << 20), config)
    assert result.finish_ns == [133091, 175638, 155597, 175638] * 2


def test_dbt_two_active_chunks_start_on_the_first_free_slot() -> None:
    """1 MiB in 4 chunks of 256 KiB (d1 = 5382, d2 = 5882, X = 489), active-chunks-per-dimension 2.

    Chunks 0 (RootMax) and 1 (RootMin) start at 0: f0 = [24045, 18653, 24045, 12272], f1 = [12272, 24045,
    18653, 24045]. Each rank starts chunk 2 when its first running chunk finishes, min(f0, f1) =
    [12272, 18653, 18653, 12272] (not chunk 0's finish):
      leaf 0 sends at 12282, in at 1 at 17664; leaf 2 sends at 18663, in at 24045; 1 sends up at 24544;
      3 done 30925; 1 done 37306; leaves done 42698.
    Chunk 3 (RootMin) starts when the other of chunks 0/1 finishes: 24045 on every rank, so it runs
    synchronously: 0 done 36317, 2 done 42698, leaves 1, 3 done 48090.
    Done = last chunk per rank: [42698, 48090, 42698, 48090].
    """
    result = simulate(_chain(4, [AR], 1 << 20), _dbt([4], splits=4, active_chunks_per_dimension=2))
    assert result.finish_ns == [42698, 48090, 42698, 48090]


def test_dbt_needs_power_of_two_npus() -> None:
    with pytest.raises(PipesimError, match="doubleBinaryTree needs a power-of-two number of NPUs per dimension, got 6"):
        simulate(_chain(6, [AR], 1 << 20), _dbt([6]))


def test_chunk_size_at_least_one_byte_per_npu() -> None:
    """Sys::determine_chunk_size: 10 bytes in 4 splits on 4 NPUs would be chunks of 2 < 4 NPUs, so ASTRA-Sim
    makes it 4 chunks of 4 bytes. Ring all-reduce per chunk: m = 1, 6 steps of floor(500 + 1 / B) = 500,
    no reduction cost (floor(1 / 1600) = 0), 7 * 10 -> 4 * (3000 + 70) = 12280 (not 5 chunks of 2 bytes).
    """
    result = simulate(_chain(4, [AR], 10), _config([4], splits=4))
    assert result.finish_ns == [12280] * 4


def test_all_gather_chunks_have_no_minimum() -> None:
    """All-gather is exempt: 8 bytes in 4 splits are 4 chunks of 2 bytes, 3 steps of 500 ns + 4 * 10 each."""
    result = simulate(_chain(4, [AG], 8), _config([4], splits=4))
    assert result.finish_ns == [4 * (3 * 500 + 40)] * 4
    with pytest.raises(PipesimError, match="ALL_GATHER comm_size 3 is smaller than preferred-dataset-splits 4"):
        simulate(_chain(4, [AG], 3), _config([4], splits=4))


def test_non_divisible_size_runs_whole_chunks() -> None:
    """10,000,000 bytes in 3 splits: chunk 3,333,333 bytes, and Sys::generate_collective subtracts whole chunks
    until nothing is left: 4 chunks of 3,333,333 (the last one is not shortened). Ring all-reduce, 4 NPUs:
    m = 833,333 per step: 4 * (6 * d1(m) + 3 * X(m) + 70).
    """
    m = 3_333_333 // 4
    expected = 4 * (6 * delta(1, m) + 3 * reduction(m) + 70)
    result = simulate(_chain(4, [AR], 10_000_000), _config([4], splits=3))
    assert result.finish_ns == [expected] * 4


def _grouped(npus: int, size: int, pg_name: str | None, involved: list[bool] | None, groups: dict) -> Workload:
    graphs = []
    for rank in range(npus):
        builder = GraphBuilder(rank)
        builder.collective("COMM_COLL_NODE_ar", AR, size, pg_name=pg_name, involved_dim=involved)
        graphs.append(builder.graph)
    return Workload(graphs, comm_groups=groups)


def test_group_of_every_npu_ignores_involved_dim() -> None:
    """CommunicatorGroup::get_collective_plan: a group holding all NPUs runs on the whole topology with every
    dimension involved (the spec: involved_dim is ignored when pg_name selects a group). So on a 2x2 network an
    all-reduce in group {0..3} with involved_dim [false, true] takes exactly as long as the default-group
    all-reduce over both dimensions, not as long as the default-group one restricted to dimension 1."""
    config = _config([2, 2])
    both = simulate(_grouped(4, 1 << 20, None, None, {}), config).finish_ns
    dim1 = simulate(_grouped(4, 1 << 20, None, [False, True], {}), config).finish_ns
    assert both != dim1
    grouped = simulate(_grouped(4, 1 << 20, "1", [False, True], {"1": [3, 2, 1, 0]}), config).finish_ns
    assert grouped == both


def test_one_member_group_and_no_involved_dimension_complete_at_issue() -> None:
    """Sys::generate_collective skips dimensions of one NPU; a one-member group's ring is such a dimension, so the
    collective has no phase and completes when issued, exactly like one whose involved_dim is all false."""
    config = _config([4])
    graphs = []
    for rank in range(4):
        builder = GraphBuilder(rank)
        start = builder.comp("COMP_NODE_before", 3)
        builder.collective("COMM_COLL_NODE_solo", AR, 1 << 20, [start], pg_name=str(rank + 1))
        graphs.append(builder.graph)
    groups = {str(rank + 1): [rank] for rank in range(4)}
    assert simulate(Workload(graphs, comm_groups=groups), config).finish_ns == [3000] * 4
    none = _grouped(4, 1 << 20, None, [False], {})
    assert simulate(none, config).finish_ns == [0] * 4
