"""Message delays of ASTRA-Sim's congestion-unaware analytical network.

A message crosses only the first dimension in which the two NPUs' coordinates differ (dimension 0 varies
fastest), with that dimension's hop count, latency and bandwidth:
    delay = floor(hops * latency + size / (bw * 2^30 / 1e9))   ns
Ring: the shorter way round a bidirectional ring; FullyConnected: 1 hop; Switch: 2 hops (up and down).
"""

from __future__ import annotations

from astra_driver.astra_config import NetworkConfig
from llm_converter.errors import PipesimError

_GIB_PER_GB_NS = (1 << 30) / 1e9  # bytes per ns for 1 GB/s, GB = 2^30 bytes


class Network:
    """Coordinates of every NPU and the delay of a message between two of them (memoised per size)."""

    __slots__ = ("config", "npus", "dims", "counts", "topology", "latency", "bytes_per_ns", "_cache")

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self.npus = config.npus
        self.dims = config.dims
        self.counts = list(config.npus_count)
        self.topology = list(config.topology)
        self.latency = [float(v) for v in config.latency]
        self.bytes_per_ns = [float(bw) * _GIB_PER_GB_NS for bw in config.bandwidth]
        self._cache: dict[tuple[int, int, int], int] = {}

    def coords(self, rank: int) -> list[int]:
        out = []
        for count in self.counts:
            out.append(rank % count)
            rank //= count
        return out

    def hops(self, dim: int, a: int, b: int) -> int:
        """Hops between local ids a and b within one dimension."""
        kind = self.topology[dim]
        if kind == "Ring":
            distance = abs(a - b)
            return min(distance, self.counts[dim] - distance)
        if kind == "FullyConnected":
            return 1
        return 2  # Switch

    def dim_between(self, src: int, dst: int) -> int:
        stride = 1
        for dim, count in enumerate(self.counts):
            if (src // stride) % count != (dst // stride) % count:
                return dim
            stride *= count
        raise PipesimError(
            f"a message from NPU {src} to itself: ASTRA-Sim's network exits on it (send to another rank)"
        )

    def delay(self, src: int, dst: int, size: int) -> int:
        key = (src, dst, size)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        dim = self.dim_between(src, dst)
        stride = 1
        for count in self.counts[:dim]:
            stride *= count
        count = self.counts[dim]
        hops = self.hops(dim, (src // stride) % count, (dst // stride) % count)
        value = int(hops * self.latency[dim] + size / self.bytes_per_ns[dim])
        self._cache[key] = value
        return value
