"""The dry run: ranks execute their action lists in order, each action as soon as its inputs exist.

Dependencies (stage s, microbatch k, S stages):
    sF k  needs (s-1)F k                          (activation from the previous stage; none for s = 0)
    sB k / sI k needs sF k and (s+1)'s B or I of k (gradient from the next stage; none for s = S-1)
    sW k  needs sI k                              (weight gradient after the input gradient)
Each rank runs one action at a time in its listed order. Times: unit per action (torch's convention for its
step grid) unless an `ActionTimes` or a per-action function is given; a transfer between different ranks takes
`p2p` (0: free). The result is the timed grid, the step time and the bubble; a schedule that cannot finish
raises DeadlockError naming the first stuck action of every rank and what it waits for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.schedules.actions import Action, Computation, PipelineSchedule


@dataclass(frozen=True)
class ActionTimes:
    """Duration of each kind of action (same on every stage)."""

    forward: float = 1.0
    full_backward: float = 1.0
    backward_input: float = 1.0
    backward_weight: float = 1.0

    @classmethod
    def split(cls, forward: float = 1.0, backward_input: float = 1.0, backward_weight: float = 1.0) -> ActionTimes:
        """The zero-bubble paper's model: a full backward costs its two halves, B = I + W."""
        return cls(forward, backward_input + backward_weight, backward_input, backward_weight)

    def __call__(self, action: Action) -> float:
        return {
            Computation.F: self.forward,
            Computation.B: self.full_backward,
            Computation.I: self.backward_input,
            Computation.W: self.backward_weight,
        }[action.computation]


UNIT_TIMES = ActionTimes()


@dataclass(frozen=True, slots=True)
class TimedAction:
    start: float
    end: float
    action: Action


@dataclass(frozen=True)
class DryRun:
    schedule: PipelineSchedule
    timeline: tuple[tuple[TimedAction, ...], ...]  # per rank, in execution order

    @property
    def step_time(self) -> float:
        return max((rank[-1].end for rank in self.timeline if rank), default=0.0)

    def busy(self, rank: int) -> float:
        return sum(t.end - t.start for t in self.timeline[rank])

    def bubble_time(self, rank: int) -> float:
        """Idle time of `rank` within the step."""
        return self.step_time - self.busy(rank)

    @property
    def bubble_fraction(self) -> float:
        """1 - busy compute / (ranks x step time), as `pipesim train` reports it."""
        total = self.step_time * self.schedule.pp
        return 1.0 - sum(self.busy(r) for r in range(self.schedule.pp)) / total if total else 0.0

    def span(self, rank: int) -> float:
        """From the rank's first action's start to its last action's end."""
        timeline = self.timeline[rank]
        return timeline[-1].end - timeline[0].start if timeline else 0.0

    def span_bubble_time(self, rank: int) -> float:
        """Idle time between the rank's first and last action: what is left of its bubble when consecutive
        steps overlap (no end-of-step synchronisation; the zero-bubble paper's optimizer post-validation).
        The paper's (p-1)(F+B+W), (p-1)(F+B-W), (p-1)(F+B-2W) for 1F1B, ZB-H1, ZB-H2 are rank 0's value."""
        return self.span(rank) - self.busy(rank)

    @property
    def overlapped_step_time(self) -> float:
        """The step period when consecutive steps overlap: the longest rank span (a rank starts its next step
        as soon as it finishes this one; the p-1 ramp at the start and end is shared with the neighbours)."""
        return max((self.span(r) for r in range(self.schedule.pp)), default=0.0)

    @property
    def overlapped_bubble_fraction(self) -> float:
        """1 - busy compute / (ranks x overlapped step time)."""
        total = self.overlapped_step_time * self.schedule.pp
        return 1.0 - sum(self.busy(r) for r in range(self.schedule.pp)) / total if total else 0.0

    def step_rows(self) -> list[list[Action | None]]:
        """Per rank, the action occupying each unit step (None = idle). Integer times only; an action of
        duration d fills d consecutive steps."""
        steps = self.step_time
        if any(t.start != int(t.start) or t.end != int(t.end) for rank in self.timeline for t in rank):
            raise ValueError("step_rows needs integer action times")
        rows: list[list[Action | None]] = []
        for rank in self.timeline:
            row: list[Action | None] = [None] * int(steps)
            for t in rank:
                for step in range(int(t.start), int(t.end)):
                    row[step] = t.action
            while row and row[-1] is None:
                row.pop()
            rows.append(row)
        return rows


def check_structure(schedule: PipelineSchedule, where: str | None = None) -> None:
    """Every (stage, microbatch) has one F and either one B or one I and one W, each on its stage's rank."""
    prefix = f"{where}: " if where else f"schedule '{schedule.name}': "
    if len(schedule.stage_to_rank) != schedule.num_stages or len(schedule.actions) != schedule.pp:
        raise PipesimError(
            f"{prefix}stage_to_rank or actions do not match {schedule.num_stages} stages on {schedule.pp} ranks"
        )
    seen: dict[Action, int] = {}
    for rank, actions in enumerate(schedule.actions):
        for action in actions:
            if not 0 <= action.stage < schedule.num_stages or not 0 <= action.microbatch < schedule.microbatches:
                raise PipesimError(
                    f"{prefix}rank {rank}: {action} is outside {schedule.num_stages} stages x "
                    f"{schedule.microbatches} microbatches"
                )
            if schedule.stage_to_rank[action.stage] != rank:
                raise PipesimError(
                    f"{prefix}rank {rank}: {action} belongs to rank {schedule.stage_to_rank[action.stage]}, "
                    f"which holds stage {action.stage}"
                )
            if action in seen:
                raise PipesimError(f"{prefix}rank {rank}: {action} appears twice; run each action once")
            seen[action] = rank
    for stage in range(schedule.num_stages):
        for k in range(schedule.microbatches):
            has_f, has_b, has_i, has_w = (
                Action(stage, c, k) in seen for c in (Computation.F, Computation.B, Computation.I, Computation.W)
            )
            if not has_f:
                raise PipesimError(f"{prefix}{stage}F{k} is missing; every stage runs every microbatch's forward")
            if has_b and (has_i or has_w):
                raise PipesimError(f"{prefix}{stage}B{k} and a split I/W backward both given; use B or I + W")
            if not has_b and not (has_i and has_w):
                if has_i or has_w:
                    missing = f"{stage}W{k}" if has_i else f"{stage}I{k}"
                    raise PipesimError(f"{prefix}stage {stage} microbatch {k} has half a split backward; add {missing}")
                raise PipesimError(f"{prefix}stage {stage} microbatch {k} has no backward; add {stage}B{k}")


def _dependencies(
    action: Action, schedule: PipelineSchedule, grad_action: dict[tuple[int, int], Action]
) -> list[Action]:
    s, k = action.stage, action.microbatch
    if action.computation is Computation.F:
        return [Action(s - 1, Computation.F, k)] if s > 0 else []
    if action.computation is Computation.W:
        return [Action(s, Computation.I, k)]
    deps = [Action(s, Computation.F, k)]
    if s < schedule.num_stages - 1:
        deps.append(grad_action[(s + 1, k)])
    return deps


def dry_run(
    schedule: PipelineSchedule,
    times: ActionTimes | Callable[[Action], float] | None = None,
    p2p: float = 0.0,
    where: str | None = None,
) -> DryRun:
    """Simulate the schedule (see the module docstring). Assumes check_structure holds (validate_schedule
    checks both)."""
    duration = times or UNIT_TIMES
    rank_of = schedule.stage_to_rank
    # The action producing stage s's input gradient for microbatch k: B, or I when the backward is split.
    grad_action: dict[tuple[int, int], Action] = {}
    for actions in schedule.actions:
        for a in actions:
            if a.computation in (Computation.B, Computation.I):
                grad_action[(a.stage, a.microbatch)] = a
    end: dict[Action, float] = {}
    position = [0] * schedule.pp
    clock = [0.0] * schedule.pp
    timeline: list[list[TimedAction]] = [[] for _ in range(schedule.pp)]
    progress = True
    while progress:
        progress = False
        for rank, actions in enumerate(schedule.actions):
            while position[rank] < len(actions):
                action = actions[position[rank]]
                ready = 0.0
                for dep in _dependencies(action, schedule, grad_action):
                    if dep not in end:
                        break
                    ready = max(ready, end[dep] + (p2p if rank_of[dep.stage] != rank else 0.0))
                else:
                    start = max(clock[rank], ready)
                    finish = start + duration(action)
                    end[action] = finish
                    clock[rank] = finish
                    timeline[rank].append(TimedAction(start, finish, action))
                    position[rank] += 1
                    progress = True
                    continue
                break
    stuck = {r: [position[r]] for r, actions in enumerate(schedule.actions) if position[r] < len(actions)}
    if stuck:
        raise DeadlockError(_deadlock_message(schedule, position, end, grad_action, where), stuck)
    return DryRun(schedule, tuple(tuple(t) for t in timeline))


def _deadlock_message(
    schedule: PipelineSchedule,
    position: list[int],
    end: dict[Action, float],
    grad_action: dict[tuple[int, int], Action],
    where: str | None,
) -> str:
    parts = []
    for rank, actions in enumerate(schedule.actions):
        if position[rank] >= len(actions):
            continue
        action = actions[position[rank]]
        waits = [d for d in _dependencies(action, schedule, grad_action) if d not in end]
        dep = waits[0]
        later = " later on the same rank" if schedule.stage_to_rank[dep.stage] == rank else ""
        parts.append(f"rank {rank} stuck at {action} (waits for {dep}{later})")
    prefix = f"{where}: " if where else f"schedule '{schedule.name}': "
    return (
        f"{prefix}deadlock: " + ", ".join(parts) + "; reorder so every action's input (previous stage's F, "
        "next stage's B/I, the stage's own F before B/I and I before W) runs before it"
    )


def validate_schedule(
    schedule: PipelineSchedule,
    times: ActionTimes | Callable[[Action], float] | None = None,
    p2p: float = 0.0,
    where: str | None = None,
) -> DryRun:
    """check_structure, then the dry run; returns the dry run. PipesimError / DeadlockError otherwise."""
    check_structure(schedule, where)
    return dry_run(schedule, times, p2p, where)


def peak_inflight(schedule: PipelineSchedule) -> tuple[int, ...]:
    """Per stage, the most microbatches whose forward has run and whose backward has not finished (B, or W
    when split): the activations the stage holds at once. m for GPipe, p - stage for 1F1B."""
    inflight = [0] * schedule.num_stages
    peak = [0] * schedule.num_stages
    split = {(a.stage, a.microbatch) for acts in schedule.actions for a in acts if a.computation is Computation.W}
    for actions in schedule.actions:
        for a in actions:
            if a.computation is Computation.F:
                inflight[a.stage] += 1
                peak[a.stage] = max(peak[a.stage], inflight[a.stage])
            elif a.computation is Computation.W or (
                a.computation is Computation.B and (a.stage, a.microbatch) not in split
            ):
                inflight[a.stage] -= 1
    return tuple(peak)


def peak_inflight_per_rank(schedule: PipelineSchedule) -> tuple[int, ...]:
    """Per rank, the most (stage, microbatch) activations held at once over all its stages."""
    peaks = []
    for actions in schedule.actions:
        inflight = peak = 0
        for a in actions:
            if a.computation is Computation.F:
                inflight += 1
                peak = max(peak, inflight)
            elif a.computation in (Computation.W, Computation.B):
                inflight -= 1
        peaks.append(peak)
    return tuple(peaks)
