"""One serving request: what the workload asked for, and what the simulation made of it.

The scheduler owns the progress fields (status, computed tokens, generated tokens); the loop and the metrics read
them. Times are simulated nanoseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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
    input_token_ids: tuple[int, ...] | None = None
    output_token_ids: tuple[int, ...] | None = None
    instance_id: int = -1  # set by the router
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV exists or is being computed (prompt + generated)
    num_generated: int = 0  # output tokens available so far
    token_times_ns: list[int] = field(default_factory=list)  # when each output token became available
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
