"""`pipesim workload`: generate a serving workload (LLMServingSim JSONL) with seeded arrivals and lengths.

pipesim workload -o trace.jsonl --num-requests 300 --rate 10 --input-len 1024 --output-len 256 --length-dist lognormal
pipesim workload -o bursty.jsonl --num-requests 100 --rate 5 --arrival gamma --burstiness 0.5 --lengths-from sg.jsonl
pipesim workload -o prefix.jsonl --num-requests 64 --rate 20 --shared-prefix-groups 4 --prefix-len 512 --seed 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.paths import check_output_path
from astra_driver.serving.workload import DEFAULT_VOCAB_SIZE, WorkloadSpec, generate_workload, write_workload_jsonl


def _describe(spec: WorkloadSpec, path: Path, num_requests: int, last_arrival_ns: int, total_in: int, total_out: int):
    span_s = last_arrival_ns / 1e9
    return (
        f"{path}: {num_requests} requests over {span_s:.3f} s ({spec.arrival} arrivals), "
        f"{total_in} prompt tokens (mean {total_in / num_requests:.1f}), "
        f"{total_out} output tokens (mean {total_out / num_requests:.1f})"
    )


@app.command()
def workload(
    output: Annotated[Path, typer.Option("-o", "--output", help="JSONL file to write (LLMServingSim format).")],
    num_requests: Annotated[int, typer.Option("--num-requests", help="How many requests.")] = 100,
    rate: Annotated[float, typer.Option("--rate", help="Requests per second; inf: all arrive at time 0.")] = 10.0,
    arrival: Annotated[str, typer.Option("--arrival", help="poisson or gamma.")] = "poisson",
    burstiness: Annotated[
        float,
        typer.Option("--burstiness", help="Gamma shape (vLLM bench's burstiness): 1 Poisson, < 1 burstier, inf even."),
    ] = 1.0,
    input_len: Annotated[int, typer.Option("--input-len", help="Prompt tokens (the mean for random lengths).")] = 1024,
    output_len: Annotated[int, typer.Option("--output-len", help="Output tokens (the mean for random lengths).")] = 128,
    length_dist: Annotated[str, typer.Option("--length-dist", help="fixed, uniform or lognormal.")] = "fixed",
    range_ratio: Annotated[
        float, typer.Option("--range-ratio", help="uniform: lengths in [len*(1-r), len*(1+r)].")
    ] = 0.5,
    length_sigma: Annotated[float, typer.Option("--length-sigma", help="lognormal: sigma of log length.")] = 0.5,
    lengths_from: Annotated[
        Path | None, typer.Option("--lengths-from", help="Resample (input, output) length pairs from this JSONL.")
    ] = None,
    shared_prefix_groups: Annotated[
        int, typer.Option("--shared-prefix-groups", help="Groups whose members share their first --prefix-len ids.")
    ] = 0,
    prefix_len: Annotated[int, typer.Option("--prefix-len", help="Shared prefix length in tokens.")] = 0,
    token_ids: Annotated[
        bool, typer.Option("--token-ids/--no-token-ids", help="Write input_tok_ids (prefix caching needs them).")
    ] = True,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Token ids are drawn from [0, vocab).")] = (
        DEFAULT_VOCAB_SIZE
    ),
    seed: Annotated[int, typer.Option("--seed", help="Same seed and flags, same file.")] = 0,
) -> None:
    """Generate a serving workload: Poisson or gamma arrivals, fixed/uniform/lognormal or resampled lengths."""
    check_output_path(output, "--output")
    spec = WorkloadSpec(
        num_requests=num_requests,
        rate=rate,
        arrival=arrival,
        burstiness=burstiness,
        input_len=input_len,
        output_len=output_len,
        length_dist=length_dist,
        range_ratio=range_ratio,
        length_sigma=length_sigma,
        lengths_from=lengths_from,
        shared_prefix_groups=shared_prefix_groups,
        prefix_len=prefix_len,
        token_ids=token_ids,
        vocab_size=vocab_size,
        seed=seed,
    )
    requests = generate_workload(spec)
    write_workload_jsonl(output, requests)
    typer.echo(
        _describe(
            spec,
            output,
            len(requests),
            requests[-1].arrival_ns,
            sum(r.input_tokens for r in requests),
            sum(r.output_tokens for r in requests),
        )
    )
