"""Which instance serves a request: round-robin, least-loaded (outstanding tokens) or seeded random.

New requests go to the instances that take new work: every instance when none is disaggregated, the
"prefill"-typed ones under P/D (a decode instance only receives requests whose prefill is done). Under P/D the
decode instance that receives a finished prefill's KV is picked by the same policy among the "decode"-typed
instances (`route_decode`), as LLMServingSim's router hands a prefill's requests to a decode instance.

Outstanding tokens of an instance (least_loaded): over the unfinished requests routed to it, the prompt
tokens whose KV is not computed yet (input_tokens - min(num_computed_tokens, input_tokens); a preempted
request's recompute counts again) plus the output tokens not generated yet (output_tokens - num_generated).
A prefill instance only owes the prompt: its requests count their remaining prompt tokens until their first
token exists, then leave its load; a decode instance only owes the output (the prompt's KV arrives computed).
Ties go to the first tied instance after the one chosen last (LLMServingSim's LOAD scans from a round-robin
position), so idle instances take turns; runs stay reproducible.

least_loaded is the default, as LLMServingSim's `--request-routing-policy LOAD` (serving/__main__.py) is. Its
LOAD scores an instance by vLLM's data-parallel balancer, (4 x waiting + running requests) / max_num_seqs;
pipesim counts outstanding tokens instead (issue 7), which also sees how long the queued requests are.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from llm_converter.errors import PipesimError

if TYPE_CHECKING:
    from astra_driver.serving.request import Request

RoutingPolicy = Literal["round_robin", "least_loaded", "random"]
ROUTING_POLICIES: tuple[str, ...] = ("round_robin", "least_loaded", "random")


def _target(instance: Any) -> tuple[int, str | None]:
    """(instance id, pd_type) of a cluster_config.PlacedInstance, or of anything with instance_id and pd_type."""
    if hasattr(instance, "spec"):
        return instance.index, instance.spec.pd_type
    return instance.instance_id, instance.pd_type


def _finished(request: Request) -> bool:
    return request.finish_ns is not None


def _remaining_prompt(request: Request) -> int:
    return request.input_tokens - min(request.num_computed_tokens, request.input_tokens)


def _remaining_output(request: Request) -> int:
    return request.output_tokens - request.num_generated


class Router:
    """Routes requests to instances with one policy; keeps what it routed where (least_loaded reads it)."""

    def __init__(self, policy: RoutingPolicy, seed: int = 0) -> None:
        if policy not in ROUTING_POLICIES:
            raise PipesimError(
                f"--routing: {policy!r} is not a routing policy; use one of {', '.join(ROUTING_POLICIES)}"
            )
        self.policy = policy
        self.seed = seed
        self._rng = random.Random(seed)
        self._next = {"new": 0, "decode": 0}  # round-robin position, separately for the two kinds of choice
        # Unfinished requests each instance was given, and its role: "prefill", "decode" or None (both).
        self._routed: dict[int, list[Request]] = {}
        self._role: dict[int, str | None] = {}

    # -- choosing ------------------------------------------------------------------------------------------

    def route(self, request: Request, instances: Sequence[Any]) -> int:
        """The instance a newly arrived request goes to (sets request.instance_id)."""
        targets = [_target(i) for i in instances]
        disaggregated = any(role is not None for _, role in targets)
        candidates = [iid for iid, role in targets if role == "prefill" or not disaggregated]
        if not candidates:
            raise PipesimError('cluster config: no instance takes new requests (none has pd_type "prefill")')
        chosen = self._choose(candidates, "new")
        self._role[chosen] = "prefill" if disaggregated else None
        return self._assign(request, chosen)

    def route_decode(self, request: Request, instances: Sequence[Any]) -> int:
        """The decode instance that receives a finished prefill's KV (sets request.instance_id)."""
        candidates = [iid for iid, role in (_target(i) for i in instances) if role == "decode"]
        if not candidates:
            raise PipesimError('cluster config: a prefill finished but no instance has pd_type "decode"')
        chosen = self._choose(candidates, "decode")
        self._role[chosen] = "decode"
        return self._assign(request, chosen)

    def outstanding_tokens(self, instance_id: int) -> int:
        """Prompt tokens still to compute plus output tokens still to generate, over the unfinished requests
        routed to the instance (only the prompt on a prefill instance, only the output on a decode one)."""
        requests = self._routed.get(instance_id)
        if not requests:
            return 0
        role = self._role.get(instance_id)
        live: list[Request] = []
        load = 0
        for r in requests:
            if _finished(r) or (role == "prefill" and r.num_generated > 0):
                continue  # done here: drop it, so the list stays as long as the instance's queue
            live.append(r)
            if role == "prefill":
                load += _remaining_prompt(r)
            elif role == "decode":
                load += _remaining_output(r)
            else:
                load += _remaining_prompt(r) + _remaining_output(r)
        self._routed[instance_id] = live
        return load

    def _choose(self, candidates: list[int], kind: str) -> int:
        if self.policy == "round_robin":
            chosen = candidates[self._next[kind] % len(candidates)]
            self._next[kind] += 1
            return chosen
        if self.policy == "random":
            return self._rng.choice(candidates)
        # Least loaded; ties go to the first candidate after the last one chosen, as LLMServingSim's LOAD scans
        # from its round-robin position (idle instances take turns instead of the lowest id taking everything).
        start = self._next[kind] % len(candidates)
        best_position, best_load = start, None
        for offset in range(len(candidates)):
            position = (start + offset) % len(candidates)
            load = self.outstanding_tokens(candidates[position])
            if best_load is None or load < best_load:
                best_position, best_load = position, load
        self._next[kind] = best_position + 1
        return candidates[best_position]

    def _assign(self, request: Request, instance_id: int) -> int:
        request.instance_id = instance_id
        if self.policy == "least_loaded":
            self._routed.setdefault(instance_id, []).append(request)
        return instance_id


def make_router(name: str, seed: int = 0) -> Router:
    """The router for `--routing NAME` (round_robin, least_loaded, random; random draws from `seed`).
    Hyphens are accepted for underscores (round-robin)."""
    return Router(name.replace("-", "_"), seed)  # type: ignore[arg-type]
