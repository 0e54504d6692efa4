"""One serving request: what the workload asked for, and what the simulation made of it.

The scheduler owns the progress fields (status, computed tokens, generated tokens); the loop and the metrics read
them. Times are simulated nanoseconds.

Memory: a run holds every request of its workload, so per-token data is kept compact. Token ids are array('i')
(4 B per id instead of ~36 B for a tuple of Python ints; `token_id_array`) and a finished request drops them (the
scheduler does: nothing reads them afterwards); the output-token times are a TokenTimes (array('q'), 8 B per token).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum


def token_id_array(ids: Iterable[int]) -> array:
    """Token ids as array('i'): OverflowError for an id outside the signed 32-bit range (no tokenizer has one)."""
    return array("i", ids)


class TokenTimes(array):
    """When each output token became available: an array('q') that also compares equal to a list or tuple of the same
    ints, as the plain list it replaces did (the metrics index and iterate it; tests compare it with lists)."""

    __slots__ = ()

    def __new__(cls, values: Iterable[int] = ()) -> TokenTimes:
        return super().__new__(cls, "q", values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return array.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


class RequestStatus(Enum):
    WAITING = "waiting"  # arrived, not admitted (or admitted before and now back after a preemption)
    RUNNING = "running"  # holds KV blocks; scheduled every step until finished or preempted
    PREEMPTED = "preempted"  # lost its KV to make room; back at the front of the waiting queue
    FINISHED = "finished"  # generated all its output tokens; KV freed


@dataclass(eq=False, slots=True)
class Request:
    """A request of a workload. `output_tokens` is how many tokens it generates (>= 1), the first included."""

    request_id: int
    arrival_ns: int
    input_tokens: int
    output_tokens: int
    input_token_ids: Sequence[int] | None = None  # array('i') from the workload readers; a tuple works too
    output_token_ids: Sequence[int] | None = None
    instance_id: int = -1  # set by the router
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV exists or is being computed (prompt + generated)
    num_generated: int = 0  # output tokens available so far
    token_times_ns: TokenTimes = field(default_factory=TokenTimes)  # when each output token became available
    first_scheduled_ns: int | None = None
    finish_ns: int | None = None
    num_preemptions: int = 0
    num_cached_prompt_tokens: int = 0  # prefix-cache hit tokens at its first admission
    source: str = ""  # where it came from, for error messages ("trace.jsonl:3"); empty when generated in memory

    @property
    def num_tokens(self) -> int:
        """Tokens of the sequence so far: the prompt plus every generated token (vLLM's request.num_tokens)."""
        return self.input_tokens + self.num_generated

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    def describe(self) -> str:
        """How error messages name the request: its dataset line when it has one."""
        return f"{self.source}: request {self.request_id}" if self.source else f"request {self.request_id}"
