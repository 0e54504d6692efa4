"""The scheduler and latency flags every serving verb takes (`run`, `capacity`), declared once.

typer reads options from a verb's signature, so each verb still lists them, but as these aliases: the flag
names, help texts and defaults (RunRequest's, the one home of a serving run's defaults) cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from astra_driver.serving.run_job import DEFAULT_DTYPE, RunRequest

DtypeFlag = Annotated[str, typer.Option("--dtype", help="float16, bfloat16 or fp8.")]
BlockSizeFlag = Annotated[int, typer.Option("--block-size", help="Tokens per KV-cache block.")]
MaxNumBatchedTokensFlag = Annotated[
    int | None, typer.Option("--max-num-batched-tokens", help="Token budget per step (default: vLLM 0.19's).")
]
MaxNumSeqsFlag = Annotated[
    int | None, typer.Option("--max-num-seqs", help="Running requests per instance (default: vLLM 0.19's).")
]
NumGpuBlocksFlag = Annotated[
    int | None, typer.Option("--num-gpu-blocks", help="KV blocks per instance (default: from NPU memory).")
]
EnablePrefixCachingFlag = Annotated[
    bool, typer.Option("--enable-prefix-caching/--no-enable-prefix-caching", help="Prefix caching on token ids.")
]
EnableChunkedPrefillFlag = Annotated[
    bool,
    typer.Option(
        "--enable-chunked-prefill/--no-enable-chunked-prefill",
        help="Split long prompts over steps (vLLM v1's default); off: a prompt is one step.",
    ),
]
LongPrefillTokenThresholdFlag = Annotated[
    int, typer.Option("--long-prefill-token-threshold", help="Most prompt tokens of one request per step (0: no cap).")
]
RoutingFlag = Annotated[
    str, typer.Option("--routing", help="least_loaded (fewest outstanding tokens), round_robin or random (--seed).")
]
SeedFlag = Annotated[int, typer.Option("--seed", help="Seed of the random router.")]
ProfileDirFlag = Annotated[
    Path | None, typer.Option("--profile-dir", help="Measured profile bundle instead of the roofline.")
]

# Defaults, from RunRequest.
DTYPE = DEFAULT_DTYPE
BLOCK_SIZE = RunRequest.block_size
ENABLE_PREFIX_CACHING = RunRequest.enable_prefix_caching
ENABLE_CHUNKED_PREFILL = RunRequest.enable_chunked_prefill
LONG_PREFILL_TOKEN_THRESHOLD = RunRequest.long_prefill_token_threshold
ROUTING = RunRequest.routing
SEED = RunRequest.seed
