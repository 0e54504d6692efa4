"""The tracks a serving run adds to its timeline: per instance, its iterations and its requests.

    tracks = serving_tracks(result.iterations, result.requests)     # a ServingResult's lists
    write_timelines(request, node_times, facts=..., tracks=tracks)

Process "instance i" holds two tracks: `iterations` (one span per batch, scheduled to tokens ready; batches in
flight at once with pp > 1 get lanes) and `requests` (one span per request, arrival to finish, with instants at
its first token; overlapping requests get lanes). Duck-typed on the records' fields (serving/metrics.py's
IterationRecord, serving/request.py's Request), so this module does not import the serving loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from astra_driver.report.timeline import Instant, Span, Track


def instance_process(instance_id: int) -> str:
    return f"instance {instance_id}"


def iteration_spans(iterations: Iterable[Any]) -> dict[int, list[Span]]:
    """Per instance id, a span per IterationRecord (instance_id, batch_id, start_ns, end_ns, token counts...)."""
    spans: dict[int, list[Span]] = {}
    for record in iterations:
        args = {
            "batch_id": record.batch_id,
            "prefill_tokens": record.prefill_tokens,
            "decode_tokens": record.decode_tokens,
            "num_seqs": record.num_seqs,
            "kv_blocks_in_use": record.kv_blocks_in_use,
        }
        spans.setdefault(record.instance_id, []).append(
            Span(f"batch {record.batch_id}", record.start_ns, record.end_ns, args, category="iteration")
        )
    return spans


def request_spans(requests: Iterable[Any], end_ns: int | None = None) -> dict[int, tuple[list[Span], list[Instant]]]:
    """Per instance id, a span per Request from arrival to finish (unfinished ones end at `end_ns`, or are left
    out without it) and an instant at its first token."""
    tracks: dict[int, tuple[list[Span], list[Instant]]] = {}
    for request in requests:
        finish = request.finish_ns if request.finish_ns is not None else end_ns
        if finish is None:
            continue
        spans, instants = tracks.setdefault(request.instance_id, ([], []))
        first_token = request.token_times_ns[0] if request.token_times_ns else None
        args: dict[str, Any] = {
            "request_id": request.request_id,
            "input_tokens": request.input_tokens,
            "output_tokens": request.output_tokens,
            "arrival_ns": request.arrival_ns,
            "first_scheduled_ns": request.first_scheduled_ns,
            "first_token_ns": first_token,
            "finish_ns": request.finish_ns,
            "num_preemptions": request.num_preemptions,
            "num_cached_prompt_tokens": request.num_cached_prompt_tokens,
        }
        if first_token is not None:
            args["ttft_ns"] = first_token - request.arrival_ns
        spans.append(Span(f"request {request.request_id}", request.arrival_ns, finish, args, category="request"))
        if first_token is not None:
            instants.append(Instant(f"request {request.request_id} first token", first_token))
    return tracks


def serving_tracks(iterations: Iterable[Any], requests: Iterable[Any], end_ns: int | None = None) -> list[Track]:
    """The iterations and requests tracks of every instance, instance order."""
    by_instance = iteration_spans(iterations)
    by_requests = request_spans(requests, end_ns)
    tracks: list[Track] = []
    for instance in sorted(set(by_instance) | set(by_requests)):
        process = instance_process(instance)
        tracks.append(Track(process, "iterations", by_instance.get(instance, [])))
        spans, instants = by_requests.get(instance, ([], []))
        tracks.append(Track(process, "requests", spans, instants))
    return tracks
