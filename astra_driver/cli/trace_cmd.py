"""`pipesim trace` and `pipesim convert`: one serving iteration (or a researcher's layer table) as .et files.

pipesim trace --cluster-config configs/cluster/single_node_pp_instance.json --prefill 512 --decode 32x1024
pipesim trace --model meta-llama/Llama-3.1-8B --hardware H100-SXM --tp 2 --pp 2 --prefill 1024@2048
pipesim trace --model Llama-3.1-405B --hardware H100-SXM --tp 8 --pp 16 --decode 64x2048   # 16 nodes of 8
pipesim convert my_layers.csv --tp 2 --pp 2 -o traces/mine/llm --hidden 4096 --dtype bfloat16
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astra_driver.cli import app
from astra_driver.cluster_network import DEFAULT_GPUS_PER_NODE
from astra_driver.trace_job import DEFAULT_DTYPE, TraceRequest, iteration_from_flags, run_convert, run_trace


@app.command()
def trace(
    cluster_config: Annotated[
        Path | None, typer.Option("--cluster-config", help="Cluster config JSON (seed format).")
    ] = None,
    instance: Annotated[int, typer.Option("--instance", help="Which instance of the cluster config (0-based).")] = 0,
    model: Annotated[str | None, typer.Option("--model", help="Model name or HF config.json (no cluster).")] = None,
    hardware: Annotated[str | None, typer.Option("--hardware", help="Hardware name, e.g. H100-SXM.")] = None,
    tp: Annotated[int | None, typer.Option("--tp", help="Tensor-parallel size (with --model).")] = None,
    pp: Annotated[int | None, typer.Option("--pp", help="Pipeline stages (with --model).")] = None,
    link_bw: Annotated[
        float | None, typer.Option("--link-bw", help="GB/s between NPUs of a node (default: the hardware's link).")
    ] = None,
    link_latency: Annotated[
        float | None, typer.Option("--link-latency", help="ns per message inside a node (default: the hardware's).")
    ] = None,
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", help="NPUs per node (with --model); more span nodes, a stage per node.")
    ] = DEFAULT_GPUS_PER_NODE,
    inter_node_bw: Annotated[
        float | None, typer.Option("--inter-node-bw", help="GB/s per NPU across nodes (default 50: a 400 Gb/s NIC).")
    ] = None,
    inter_node_latency: Annotated[
        float | None, typer.Option("--inter-node-latency", help="ns per message across nodes (default 5000).")
    ] = None,
    prefill: Annotated[
        list[str] | None, typer.Option("--prefill", help="TOKENS[@CONTEXT] prefill chunk; repeatable.")
    ] = None,
    decode: Annotated[list[str] | None, typer.Option("--decode", help="COUNTxKV decode requests; repeatable.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float16, bfloat16 or fp8.")] = DEFAULT_DTYPE,
    profile_dir: Annotated[
        Path | None, typer.Option("--profile-dir", help="Measured profile bundle instead of the roofline.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Output folder name under --out-dir.")] = "trace",
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Where the trace folder goes.")] = Path("traces"),
) -> None:
    """Write one serving iteration as per-NPU Chakra traces plus ASTRA-Sim's config files."""
    request = TraceRequest(
        name=name,
        iteration=iteration_from_flags(prefill or [], decode or []),
        out_dir=out_dir,
        dtype=dtype,
        profile_dir=profile_dir,
        cluster_config=cluster_config,
        instance=instance,
        model=model,
        hardware=hardware,
        tp=tp,
        pp=pp,
        link_bw=link_bw,
        link_latency=link_latency,
        gpus_per_node=gpus_per_node,
        inter_node_bw=inter_node_bw,
        inter_node_latency=inter_node_latency,
    )
    typer.echo(run_trace(request).summary())


@app.command()
def convert(
    layers_csv: Annotated[Path, typer.Argument(help="Layer table (docs/layer_csv.md).")],
    tp: Annotated[
        int | None, typer.Option("--tp", help="Tensor-parallel size (default: the table's '# pipesim plan', or 1).")
    ] = None,
    pp: Annotated[
        int | None, typer.Option("--pp", help="Pipeline stages (default: the table's plan or stage column, or 1).")
    ] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Workload prefix: writes <prefix>.<npu>.et.")] = Path(
        "traces/converted/llm"
    ),
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Activation dtype (default: the CSV's comment line).")
    ] = None,
    hidden: Annotated[int | None, typer.Option("--hidden", help="Hidden size (default: the CSV's comment).")] = None,
    cluster_config: Annotated[
        Path | None, typer.Option("--cluster-config", help="Also write its instance's ASTRA-Sim configs beside.")
    ] = None,
    instance: Annotated[int, typer.Option("--instance", help="Instance of --cluster-config (0-based).")] = 0,
) -> None:
    """Convert a layer table into per-NPU Chakra traces (send/recv between stages, TP all-reduces)."""
    result = run_convert(
        layers_csv,
        tp=tp,
        pp=pp,
        prefix=output,
        dtype=dtype,
        hidden=hidden,
        cluster_config=cluster_config,
        instance=instance,
    )
    typer.echo(result.summary())
