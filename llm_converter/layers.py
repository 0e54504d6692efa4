"""The layer list of one iteration: every layer each pipeline stage runs, in order, with its time and traffic.

It is the hand-off between the model/latency side and the graph side: `serving.build_serving_workload` turns
it into per-NPU Chakra graphs, and its CSV form (docs/layer_csv.md) lets a researcher bring their own table.
Rows carry per-NPU figures: ns, flops and bytes of one TP rank, comm_bytes of the TP all-reduce after the layer.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from llm_converter.errors import PipesimError
from llm_converter.io import write_atomic
from llm_converter.iteration import Iteration
from llm_converter.latency import LatencyModel
from llm_converter.layer_ops import LayerOp, iteration_ops
from llm_converter.models import ModelSpec
from llm_converter.models import dtype_bytes as dtype_size
from llm_converter.plan import ParallelPlan, split_stages

# all_reduce: the layer's output is all-reduced across its stage's TP group (o_proj, down_proj, the embedding);
# all_gather: each rank's comm_bytes are all-gathered across it (lm_head's logits shards).
COMM_KINDS = ("none", "all_reduce", "all_gather")
CSV_COLUMNS = ("name", "block", "stage", "tokens", "ns", "flops", "bytes", "params", "comm", "comm_bytes")
REQUIRED_CSV_COLUMNS = ("name", "block", "tokens", "ns")
_HEADER_COMMENT = re.compile(r"#\s*pipesim layer list:\s*hidden_size=(\d+)\s+dtype_bytes=(\d+)\s*$")
# The plan the rows were made for (per-NPU values depend on tp, the stage column on pp); absent in older tables.
_PLAN_COMMENT = re.compile(r"#\s*pipesim plan:\s*tp=(\d+)\s+pp=(\d+)\s*$")
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# The largest value a Chakra node can carry (num_ops, comm_size are int64): a row over it cannot be written.
MAX_VALUE = (1 << 63) - 1
_NUMBER_COLUMNS = ("tokens", "ns", "flops", "bytes", "params", "comm_bytes")


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One layer on one stage. block is -1 for the embedding (before the blocks) and the head (after them)."""

    name: str
    block: int
    stage: int
    tokens: int
    ns: int
    flops: int = 0
    bytes: int = 0
    params: int = 0
    comm: str = "none"
    comm_bytes: int = 0


@dataclass(slots=True)
class LayerList:
    """Rows in execution order (stage by stage). hidden_size and dtype_bytes size the activation sent
    between pipeline stages: tokens * hidden_size * dtype_bytes."""

    rows: list[LayerRow]
    hidden_size: int
    dtype_bytes: int
    tp: int | None = None  # the TP degree the rows' per-NPU values were made for, when known
    num_stages: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_stages = check_rows(self.rows)
        tokens = max(row.tokens for row in self.rows)
        if tokens * self.hidden_size * self.dtype_bytes > MAX_VALUE:
            raise PipesimError(
                f"layer list: an activation of {tokens} tokens x hidden_size {self.hidden_size} x dtype_bytes "
                f"{self.dtype_bytes} is over the largest size a Chakra trace holds ({MAX_VALUE} bytes); "
                "make the batch smaller"
            )

    def stage_rows(self, stage: int) -> list[LayerRow]:
        return [row for row in self.rows if row.stage == stage]

    def stage_ns(self) -> list[int]:
        """Compute time of each stage (one pass, no communication)."""
        totals = [0] * self.num_stages
        for row in self.rows:
            totals[row.stage] += row.ns
        return totals

    def boundary_tokens(self, stage: int) -> int:
        """Tokens of the hidden state leaving `stage`: the tokens of its last decoder-block row."""
        for row in reversed(self.stage_rows(stage)):
            if row.block >= 0:
                return row.tokens
        raise PipesimError(f"layer list: stage {stage} has no decoder-block row, so no activation leaves it")

    def activation_bytes(self, stage: int) -> int:
        """Bytes sent from `stage` to `stage + 1`."""
        return self.boundary_tokens(stage) * self.hidden_size * self.dtype_bytes

    def to_csv_text(self) -> str:
        out = io.StringIO()
        out.write(f"# pipesim layer list: hidden_size={self.hidden_size} dtype_bytes={self.dtype_bytes}\n")
        if self.tp is not None:
            out.write(f"# pipesim plan: tp={self.tp} pp={self.num_stages}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in self.rows:
            writer.writerow([getattr(row, column) for column in CSV_COLUMNS])
        return out.getvalue()

    def write_csv(self, path: Path | str) -> None:
        write_atomic(Path(path), self.to_csv_text().encode())


def check_rows(rows: list[LayerRow]) -> int:
    """Check execution order and values; returns the number of stages (stages 0..n-1 must all have rows)."""
    if not rows:
        raise PipesimError("layer list: no rows; a layer list needs at least one decoder-block row per stage")
    stage = 0
    for index, row in enumerate(rows):
        if row.stage < stage or row.stage > stage + 1 or (index == 0 and row.stage != 0):
            raise PipesimError(
                f"layer list: row {index} ({row.name}) is on stage {row.stage} after stage {stage}; "
                "rows must be in execution order with stages 0, 1, 2, ... and none skipped"
            )
        stage = row.stage
        if row.comm not in COMM_KINDS:
            raise PipesimError(
                f"layer list: row {index} ({row.name}) has comm {row.comm!r}; use none, all_reduce or all_gather"
            )
        if min(row.tokens, row.ns, row.flops, row.bytes, row.params, row.comm_bytes) < 0:
            raise PipesimError(f"layer list: row {index} ({row.name}) has a negative value; all numbers must be >= 0")
        for column in _NUMBER_COLUMNS:
            if getattr(row, column) > MAX_VALUE:
                raise PipesimError(
                    f"layer list: row {index} ({row.name}) has {column} {getattr(row, column)}, over the largest "
                    f"value a Chakra trace holds ({MAX_VALUE}); make the batch or the layer smaller"
                )
        if row.comm != "none" and row.comm_bytes <= 0:
            raise PipesimError(
                f"layer list: row {index} ({row.name}) has {row.comm} of 0 bytes; set comm_bytes > 0 or comm none"
            )
    return stage + 1


# --- building from a model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimedOps:
    """An iteration's ops with their per-NPU time: embedding ops, ONE decoder block's ops, head ops."""

    pre: list[tuple[LayerOp, int]]
    block: list[tuple[LayerOp, int]]
    post: list[tuple[LayerOp, int]]

    @property
    def block_ns(self) -> int:
        return sum(ns for _, ns in self.block)

    @property
    def pre_ns(self) -> int:
        return sum(ns for _, ns in self.pre)

    @property
    def post_ns(self) -> int:
        return sum(ns for _, ns in self.post)


def timed_ops(model: ModelSpec, iteration: Iteration, tp: int, latency: LatencyModel, dtype: str) -> TimedOps:
    """Each distinct op of the iteration timed once (every decoder block runs the same ops)."""
    pre, block, post = iteration_ops(model, iteration, tp, dtype)
    return TimedOps(
        pre=[(op, latency.layer_ns(op, iteration)) for op in pre],
        block=[(op, latency.layer_ns(op, iteration)) for op in block],
        post=[(op, latency.layer_ns(op, iteration)) for op in post],
    )


def balanced_plan(ops: TimedOps, num_blocks: int, tp: int, pp: int, dp: int = 1) -> ParallelPlan:
    """The plan whose stages split the blocks so the slowest stage (embedding and head included) is fastest."""
    bounds = split_stages([ops.block_ns] * num_blocks, pp, pre_cost=ops.pre_ns, post_cost=ops.post_ns)
    return ParallelPlan(tp=tp, pp=pp, dp=dp, stage_blocks=bounds)


def tp_comm(op: LayerOp, tp: int, hidden: int, element_bytes: int) -> tuple[str, int]:
    """(comm kind, bytes per rank) of the TP collective after `op`: ("none", 0) when tp is 1 or it has none."""
    if tp <= 1:
        return "none", 0
    if op.tp_gather_bytes:
        return "all_gather", op.tp_gather_bytes
    if op.tp_all_reduce:
        # The all-reduce carries the layer's whole output: tokens x hidden x dtype bytes on every rank.
        return "all_reduce", op.tp_comm_bytes or op.tokens * hidden * element_bytes
    return "none", 0


def build_layer_list(
    model: ModelSpec,
    iteration: Iteration,
    plan: ParallelPlan,
    latency: LatencyModel,
    dtype: str,
    ops: TimedOps | None = None,
) -> LayerList:
    """Every layer of one iteration on its stage. `ops` may be passed when already timed (balanced_plan)."""
    if plan.num_blocks != model.num_layers:
        raise PipesimError(
            f"parallel plan: it covers {plan.num_blocks} blocks but {model.name} has {model.num_layers} layers; "
            "build the plan from this model"
        )
    if ops is None:
        ops = timed_ops(model, iteration, plan.tp, latency, dtype)
    element_bytes = dtype_size(dtype)
    hidden = model.hidden_size

    def make_row(op: LayerOp, ns: int, block: int, stage: int) -> LayerRow:
        comm, comm_bytes = tp_comm(op, plan.tp, hidden, element_bytes)
        return LayerRow(
            name=op.name,
            block=block,
            stage=stage,
            tokens=op.tokens,
            ns=ns,
            flops=op.flops,
            bytes=op.bytes,
            params=op.params,
            comm=comm,
            comm_bytes=comm_bytes,
        )

    last_stage = plan.pp - 1
    rows = [make_row(op, ns, -1, 0) for op, ns in ops.pre]
    for stage in range(plan.pp):
        for block in plan.blocks_of(stage):
            rows.extend(make_row(op, ns, block, stage) for op, ns in ops.block)
    rows.extend(make_row(op, ns, -1, last_stage) for op, ns in ops.post)
    return LayerList(rows=rows, hidden_size=hidden, dtype_bytes=element_bytes)


# --- CSV in ------------------------------------------------------------------------------------------------


def read_layer_csv(
    path: Path | str,
    hidden_size: int | None = None,
    dtype_bytes: int | None = None,
    pp: int | None = None,
    tp: int | None = None,
) -> LayerList:
    """Read a layer table (docs/layer_csv.md). hidden_size/dtype_bytes override the `# pipesim` comment line.
    A `# pipesim plan: tp=T pp=P` line (what `trace` writes) must agree with `tp` and `pp` when they are given.

    Without a stage column, rows are cut into `pp` stages by a balanced split of their own block times (block
    -1 rows before the blocks go to stage 0, after them to the last stage). Errors name the line and column.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file (give the path of a layer CSV, see docs/layer_csv.md)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    lines = text.splitlines()
    # Line numbers are 1-based and count the comment lines, so they match what an editor shows.
    first_data = 0
    recorded_tp: int | None = None
    while first_data < len(lines) and (lines[first_data].startswith("#") or not lines[first_data].strip()):
        plan_match = _PLAN_COMMENT.match(lines[first_data].strip())
        if plan_match:
            recorded_tp = int(plan_match.group(1))
            _check_recorded_plan(path, first_data + 1, recorded_tp, int(plan_match.group(2)), tp, pp)
        match = _HEADER_COMMENT.match(lines[first_data].strip())
        if match:
            hidden_size = hidden_size if hidden_size is not None else int(match.group(1))
            dtype_bytes = dtype_bytes if dtype_bytes is not None else int(match.group(2))
        first_data += 1
    if first_data == len(lines):
        raise PipesimError(f"{path}: no header line; the first line must name the columns: {','.join(CSV_COLUMNS)}")
    reader = csv.reader(lines[first_data:])
    header = [column.strip() for column in next(reader)]
    header_line = first_data + 1
    for column in header:
        if column not in CSV_COLUMNS:
            raise PipesimError(
                f"{path}: line {header_line}: unknown column {column!r}; known columns: {','.join(CSV_COLUMNS)}"
            )
    for column in REQUIRED_CSV_COLUMNS:
        if column not in header:
            raise PipesimError(f"{path}: line {header_line}: column {column!r} is missing; add it to the header")
    if len(set(header)) != len(header):
        raise PipesimError(f"{path}: line {header_line}: a column is named twice in the header")
    if hidden_size is None or dtype_bytes is None:
        raise PipesimError(
            f"{path}: hidden size and dtype unknown; pass --hidden and --dtype (or add the line "
            "'# pipesim layer list: hidden_size=N dtype_bytes=B' before the header)"
        )
    if hidden_size < 1 or dtype_bytes < 1:
        raise PipesimError(f"{path}: hidden_size {hidden_size} and dtype_bytes {dtype_bytes} must be >= 1")

    parsed: list[dict[str, object]] = []
    for offset, values in enumerate(reader):
        line = header_line + 1 + offset
        if not values or all(not value.strip() for value in values):
            continue
        if len(values) != len(header):
            raise PipesimError(f"{path}: line {line}: {len(values)} fields for {len(header)} columns; fix the row")
        cells = dict(zip(header, (value.strip() for value in values), strict=True))
        parsed.append(_parse_row(path, line, cells, hidden_size, dtype_bytes))

    if not parsed:
        raise PipesimError(f"{path}: no rows after the header; add one row per layer")
    _fill_stages(path, parsed, pp)
    rows = [LayerRow(**cells) for cells in parsed]  # type: ignore[arg-type]
    try:
        layers = LayerList(rows=rows, hidden_size=hidden_size, dtype_bytes=dtype_bytes, tp=recorded_tp or tp)
    except PipesimError as exc:
        raise PipesimError(f"{path}: {exc}") from None
    if pp is not None and layers.num_stages != pp:
        raise PipesimError(f"{path}: column 'stage' uses {layers.num_stages} stages but --pp is {pp}; make them agree")
    return layers


def _parse_row(path: Path, line: int, cells: dict[str, str], hidden: int, dtype_bytes: int) -> dict[str, object]:
    def integer(column: str, default: int | None = None, minimum: int = 0) -> int | None:
        text = cells.get(column, "")
        if text == "":
            if default is None and column in REQUIRED_CSV_COLUMNS:
                raise PipesimError(f"{path}: line {line}: column {column!r} is empty; it needs an integer")
            return default
        try:
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else _whole(text)
        except ValueError:
            raise PipesimError(f"{path}: line {line}: column {column!r} is {text!r}; it needs an integer") from None
        if value < minimum:
            raise PipesimError(f"{path}: line {line}: column {column!r} is {text}; it must be >= {minimum}")
        if value > MAX_VALUE:
            raise PipesimError(f"{path}: line {line}: column {column!r} is {text}; it must be <= {MAX_VALUE}")
        return value

    name = cells["name"]
    if not _NAME.fullmatch(name):
        raise PipesimError(
            f"{path}: line {line}: column 'name' is {name!r}; use letters, digits, '_', '.', '-' (no spaces)"
        )
    comm = cells.get("comm", "") or "none"
    if comm not in COMM_KINDS:
        raise PipesimError(f"{path}: line {line}: column 'comm' is {comm!r}; use none, all_reduce or all_gather")
    tokens = integer("tokens")
    comm_bytes = integer("comm_bytes", default=0)
    if comm == "all_reduce" and not comm_bytes:
        comm_bytes = tokens * hidden * dtype_bytes  # the TP all-reduce of the hidden state
    return {
        "name": name,
        "block": integer("block", minimum=-1),
        "stage": integer("stage", default=-1),
        "tokens": tokens,
        "ns": integer("ns"),
        "flops": integer("flops", default=0),
        "bytes": integer("bytes", default=0),
        "params": integer("params", default=0),
        "comm": comm,
        "comm_bytes": comm_bytes,
    }


def _whole(text: str) -> int:
    """Spreadsheets write 1234.0 or 1.5e6: accept whole numbers, refuse fractions. Decimal, not float, so a
    value over 2**53 keeps its last digits and 1.00000000000000001 is not taken for 1."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(text) from None
    if not value.is_finite() or value != value.to_integral_value():
        raise ValueError(text)
    if abs(value) > MAX_VALUE:  # refused by the caller; don't build a huge int for 1e999999
        return (MAX_VALUE + 1) * (-1 if value < 0 else 1)
    return int(value)


def _check_recorded_plan(path: Path, line: int, tp: int, pp: int, want_tp: int | None, want_pp: int | None) -> None:
    for flag, recorded, wanted in (("--tp", tp, want_tp), ("--pp", pp, want_pp)):
        if wanted is not None and wanted != recorded:
            raise PipesimError(
                f"{path}: line {line}: the table was made for tp {tp} x pp {pp} (its per-NPU times, sizes and stages "
                f"depend on them) but {flag} is {wanted}; pass --tp {tp} --pp {pp}, or make the table for the plan "
                "you want (pipesim trace ... --tp/--pp)"
            )


def _fill_stages(path: Path, parsed: list[dict[str, object]], pp: int | None) -> None:
    """Give rows without a stage one from a balanced split of the table's own block times over pp stages."""
    missing = [cells for cells in parsed if cells["stage"] == -1]
    if not missing:
        return
    if len(missing) != len(parsed):
        raise PipesimError(f"{path}: column 'stage' is empty on some rows only; fill it on every row or on none")
    if pp is None:
        raise PipesimError(f"{path}: column 'stage' is empty or absent; pass --pp so the stages can be assigned")
    block_ns: list[int] = []
    pre_ns = post_ns = 0
    for cells in parsed:
        block = int(cells["block"])  # type: ignore[call-overload]
        ns = int(cells["ns"])  # type: ignore[call-overload]
        if block < 0:
            if block_ns:
                post_ns += ns
            else:
                pre_ns += ns
            continue
        if block == len(block_ns):
            block_ns.append(0)
        elif block != len(block_ns) - 1:
            raise PipesimError(
                f"{path}: column 'block' jumps to {block} after block {len(block_ns) - 1}; "
                "blocks must be numbered 0, 1, 2, ... in execution order"
            )
        block_ns[block] += ns
    if not block_ns:
        raise PipesimError(f"{path}: no row has block >= 0; a layer list needs decoder-block rows to split in stages")
    try:
        bounds = split_stages(block_ns, pp, pre_cost=pre_ns, post_cost=post_ns)
    except PipesimError as exc:
        raise PipesimError(f"{path}: {exc}") from None
    plan = ParallelPlan(tp=1, pp=pp, stage_blocks=bounds)
    seen_block = False
    for cells in parsed:
        block = int(cells["block"])  # type: ignore[call-overload]
        if block >= 0:
            cells["stage"] = plan.stage_of_block(block)
            seen_block = True
        else:
            cells["stage"] = pp - 1 if seen_block else 0


def plan_of_layers(layers: LayerList, tp: int, dp: int = 1) -> ParallelPlan:
    """The plan a layer list was cut with: stage s runs the blocks its rows name."""
    bounds: list[list[int]] = [[-1, -1] for _ in range(layers.num_stages)]
    for row in layers.rows:
        if row.block < 0:
            continue
        low, high = bounds[row.stage]
        bounds[row.stage] = [row.block if low < 0 else min(low, row.block), max(high, row.block + 1)]
    for stage, (low, _) in enumerate(bounds):
        if low < 0:
            raise PipesimError(f"layer list: stage {stage} has no decoder-block row; every stage needs one block")
    return ParallelPlan(tp=tp, pp=layers.num_stages, dp=dp, stage_blocks=tuple((low, high) for low, high in bounds))
