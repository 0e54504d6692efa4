"""Performance helpers shared by the hot paths (reading traces, building graphs, simulating)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while bulk-creating objects that all stay alive.

    Reading or building a trace allocates hundreds of thousands of nodes and lists and frees none of them, so
    each automatic collection rescans an ever larger heap for cycles that are not there: on a 160,000-node
    trace that was 60% of the read time. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
