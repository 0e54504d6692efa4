"""The cluster config: which model runs on which hardware, how many NPUs, how it is parallelised, and the links.

The JSON is the interface of the LLM serving simulator pipesim follows (seed 000): `num_nodes`, `link_bw`,
`link_latency`, then per node its CPU memory and its instances (model, hardware, NPU memory, `num_npus`,
`tp_size`, `pp_size`, `pd_type`). `load_cluster_config` checks the structure with pydantic and the meaning
against the model and hardware catalogs, and turns every problem into one line that names the file, the JSON
path of the field, what is wrong and the fix.

Units: bandwidths in GB/s and latencies in ns, passed to ASTRA-Sim unchanged; memory sizes in GB of
2^30 bytes, as LLMServingSim reads them (llm_converter/memory.py: an RTXPRO6000's 96 GB is mem_size 96).
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_converter.errors import PipesimError
from llm_converter.hardware import HardwareSpec, get_hardware, list_hardware
from llm_converter.memory import DEFAULT_MEM_UTIL, MEM_GB, npu_memory_bytes, weight_bytes_per_npu
from llm_converter.models import ModelSpec, dtype_bytes, get_model, list_models
from llm_converter.plan import ParallelPlan

# ---------------------------------------------------------------------------------------------------------
# The JSON's structure. strict=True: "2" is not an integer and 2.0 is not an NPU count; extra keys are errors.
# ---------------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    # allow_inf_nan=False: Python's JSON reader takes Infinity, NaN and 1e400 (= inf); no bandwidth is infinite.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class CpuMemConfig(_Strict):
    """Host memory of a node (used as remote memory when an ASTRA-Sim memory expansion is asked for)."""

    mem_size: float = Field(gt=0)  # GB
    mem_bw: float = Field(gt=0)  # GB/s
    mem_latency: float = Field(ge=0)  # ns


class NpuMemConfig(_Strict):
    """Memory of each NPU of an instance."""

    mem_size: float = Field(gt=0)  # GB
    mem_bw: float = Field(gt=0)  # GB/s
    mem_latency: float = Field(ge=0)  # ns
    # Share of mem_size the serving engine may use (vLLM's gpu_memory_utilization); checked in (0, 1] below.
    mem_util: float = DEFAULT_MEM_UTIL


class InstanceConfig(_Strict):
    """One serving instance: a model replica spread over num_npus = tp_size * pp_size NPUs."""

    model_name: str
    hardware: str
    npu_mem: NpuMemConfig
    num_npus: int = Field(ge=1)
    tp_size: int = Field(ge=1)
    pp_size: int = Field(ge=1)
    pd_type: Literal["prefill", "decode"] | None = None
    # Consecutive nodes this instance's NPUs occupy, starting at the node that lists it: 1, or pp_size (one stage
    # of tp_size NPUs per node: TP inside a node, PP across). The other nodes of the span list no instances.
    span_nodes: int = Field(default=1, ge=1)


class NodeConfig(_Strict):
    num_instances: int = Field(ge=0)
    cpu_mem: CpuMemConfig
    instances: list[InstanceConfig]


class ClusterSpec(_Strict):
    """The JSON document as written."""

    num_nodes: int = Field(ge=1)
    link_bw: float = Field(gt=0)  # GB/s between NPUs (the network the stages' send/recv and collectives use)
    link_latency: float = Field(ge=0)  # ns
    nodes: list[NodeConfig]


# ---------------------------------------------------------------------------------------------------------
# The checked, resolved config the rest of pipesim uses.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacedInstance:
    """An instance with where it sits: its node(s), its global NPU ids, its resolved model and hardware."""

    index: int  # global instance number, in file order
    node_index: int  # the node that lists it (first node of its span)
    local_index: int  # position in that node's instances list
    npu_offset: int  # global id of its first NPU; its NPUs are npu_offset .. npu_offset + num_npus - 1
    spec: InstanceConfig
    model: ModelSpec
    hardware: HardwareSpec
    weight_bytes_per_npu: int  # the largest stage's weights divided by tp (what must fit in each NPU)

    @property
    def path(self) -> str:
        """JSON path of the instance in the cluster file, e.g. `nodes[0].instances[1]`."""
        return f"nodes[{self.node_index}].instances[{self.local_index}]"

    @property
    def num_npus(self) -> int:
        return self.spec.num_npus

    @property
    def tp_size(self) -> int:
        return self.spec.tp_size

    @property
    def pp_size(self) -> int:
        return self.spec.pp_size

    @property
    def span_nodes(self) -> int:
        return self.spec.span_nodes

    @property
    def npus_per_node(self) -> int:
        return self.spec.num_npus // self.spec.span_nodes

    @property
    def node_indices(self) -> list[int]:
        return list(range(self.node_index, self.node_index + self.spec.span_nodes))

    @property
    def npu_ids(self) -> list[int]:
        return list(range(self.npu_offset, self.npu_offset + self.spec.num_npus))

    @property
    def usable_mem_bytes(self) -> int:
        """mem_size * mem_util of one NPU, in bytes: what weights, activations and KV cache share."""
        return npu_memory_bytes(self.spec.npu_mem.mem_size, self.spec.npu_mem.mem_util)


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster config. `spec` is the JSON as written; `instances()` resolves and places them."""

    source: Path
    dtype: str
    spec: ClusterSpec
    placed: tuple[PlacedInstance, ...]

    def instances(self) -> list[PlacedInstance]:
        """Every instance in file order (node 0's first), with node index and global NPU offset."""
        return list(self.placed)

    def instance(self, index: int) -> PlacedInstance:
        if not 0 <= index < len(self.placed):
            raise PipesimError(
                f"{self.source}: instance {index} does not exist; the cluster has {len(self.placed)} instances "
                f"(0..{len(self.placed) - 1})"
            )
        return self.placed[index]

    @property
    def num_nodes(self) -> int:
        return self.spec.num_nodes

    @property
    def link_bw(self) -> float:
        return self.spec.link_bw

    @property
    def link_latency(self) -> float:
        return self.spec.link_latency

    @property
    def total_npus(self) -> int:
        return sum(p.num_npus for p in self.placed)

    def node(self, index: int) -> NodeConfig:
        return self.spec.nodes[index]


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def load_cluster_config(path: Path | str, dtype: str = "bfloat16") -> ClusterConfig:
    """Read and check a cluster config JSON; weights are sized with `dtype` (bfloat16, float16, ...)."""
    path = Path(path)
    return cluster_config_from_dict(_read_json(path), source=path, dtype=dtype)


def cluster_config_from_dict(
    data: Any, source: Path | str = "<cluster config>", dtype: str = "bfloat16"
) -> ClusterConfig:
    """The same checks on an in-memory document (`source` names it in messages)."""
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise PipesimError(f"{source}: {_describe_validation_error(exc)}") from None
    return _resolve(Path(source), spec, dtype)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PipesimError(
            f"{path}: no such file (give the path of a cluster config JSON, e.g. configs/cluster/)"
        ) from None
    except IsADirectoryError:
        raise PipesimError(f"{path}: is a directory (give the path of a cluster config JSON file)") from None
    except UnicodeDecodeError:
        raise PipesimError(f"{path}: not a text file (give a cluster config JSON)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PipesimError(
            f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg}); fix the syntax"
        ) from None


def _resolve(path: Path, spec: ClusterSpec, dtype: str) -> ClusterConfig:
    if spec.num_nodes != len(spec.nodes):
        raise PipesimError(
            f"{path}: num_nodes: says {spec.num_nodes} but nodes lists {len(spec.nodes)}; make them equal"
        )
    element_bytes = dtype_bytes(dtype)
    spanned_by: dict[int, str] = {}  # node index -> path of the instance whose span covers it
    placed: list[PlacedInstance] = []
    offset = 0
    for node_index, node in enumerate(spec.nodes):
        where = f"nodes[{node_index}]"
        if node.num_instances != len(node.instances):
            raise PipesimError(
                f"{path}: {where}.num_instances: says {node.num_instances} but instances lists "
                f"{len(node.instances)}; make them equal"
            )
        if node_index in spanned_by and node.instances:
            raise PipesimError(
                f"{path}: {where}.instances: this node is occupied by {spanned_by[node_index]} (its span_nodes "
                "covers it); list no instances here or lower that span_nodes"
            )
        for local_index, instance in enumerate(node.instances):
            field_path = f"{where}.instances[{local_index}]"
            model = _resolve_model(path, field_path, instance)
            hardware = _resolve_hardware(path, field_path, instance)
            _check_parallelism(path, field_path, instance, model, spec.num_nodes, node_index)
            # The fullest NPU of the even block split (trace re-checks its time-balanced split with the batch).
            even = ParallelPlan.even(tp=instance.tp_size, pp=instance.pp_size, num_blocks=model.num_layers)
            weight_bytes = max(weight_bytes_per_npu(model, even, element_bytes))
            _check_memory(path, field_path, instance, weight_bytes, dtype)
            for covered in range(node_index + 1, node_index + instance.span_nodes):
                spanned_by[covered] = field_path
            placed.append(
                PlacedInstance(
                    index=len(placed),
                    node_index=node_index,
                    local_index=local_index,
                    npu_offset=offset,
                    spec=instance,
                    model=model,
                    hardware=hardware,
                    weight_bytes_per_npu=weight_bytes,
                )
            )
            offset += instance.num_npus
    if not placed:
        raise PipesimError(f"{path}: nodes: no node lists an instance; add at least one to some node's instances")
    _check_disaggregation(path, placed)
    return ClusterConfig(source=path, dtype=dtype, spec=spec, placed=tuple(placed))


def _check_disaggregation(path: Path, placed: list[PlacedInstance]) -> None:
    """Prefill/decode disaggregation needs both roles, on every instance, serving one model (KV moves P -> D)."""
    roles = [p.spec.pd_type for p in placed]
    if all(role is None for role in roles):
        return
    for p in placed:
        if p.spec.pd_type is None:
            raise PipesimError(
                f'{path}: {p.path}.pd_type: null while other instances are "prefill"/"decode"; with '
                "disaggregation every instance takes a role (or set all pd_type to null)"
            )
    for needed in ("prefill", "decode"):
        if needed not in roles:
            raise PipesimError(
                f'{path}: {placed[0].path}.pd_type: no instance is "{needed}"; disaggregated serving needs at '
                f'least one "prefill" and one "decode" instance (or set all pd_type to null)'
            )
    first = placed[0]
    for p in placed[1:]:
        if p.model.name != first.model.name:
            raise PipesimError(
                f"{path}: {p.path}.model_name: {p.model.name} differs from {first.path}'s {first.model.name}; "
                "prefill and decode instances hand KV caches to each other, so they must serve the same model"
            )


def _resolve_model(path: Path, field_path: str, instance: InstanceConfig) -> ModelSpec:
    name = instance.model_name
    if name.endswith(".json"):
        # An HF config.json: relative paths are taken from the cluster file's folder first, then the cwd.
        beside = path.parent / name
        try:
            return get_model(str(beside) if beside.is_file() else name)
        except PipesimError as exc:
            raise PipesimError(f"{path}: {field_path}.model_name: {exc}") from None
    try:
        return get_model(name)
    except PipesimError:
        known = ", ".join(str(name) for name in list_models())
        raise PipesimError(
            f"{path}: {field_path}.model_name: unknown model {instance.model_name!r}; use one of {known} "
            "or the path of a HuggingFace config.json"
        ) from None


def _resolve_hardware(path: Path, field_path: str, instance: InstanceConfig) -> HardwareSpec:
    try:
        return get_hardware(instance.hardware)
    except PipesimError:
        known = ", ".join(str(name) for name in list_hardware())
        raise PipesimError(
            f"{path}: {field_path}.hardware: unknown hardware {instance.hardware!r}; use one of {known}"
        ) from None


def _check_parallelism(
    path: Path, field_path: str, instance: InstanceConfig, model: ModelSpec, num_nodes: int, node_index: int
) -> None:
    tp, pp = instance.tp_size, instance.pp_size
    if instance.num_npus != tp * pp:
        raise PipesimError(
            f"{path}: {field_path}.num_npus: {instance.num_npus} != tp_size * pp_size = {tp} * {pp} = {tp * pp}; "
            f"set num_npus to {tp * pp} or change tp_size/pp_size"
        )
    if pp > model.num_layers:
        raise PipesimError(
            f"{path}: {field_path}.pp_size: {pp} stages but {model.name} has {model.num_layers} decoder layers; "
            f"use pp_size <= {model.num_layers}"
        )
    heads, kv_heads = model.num_attention_heads, model.num_kv_heads
    if heads % tp or kv_heads % tp:
        common = math.gcd(heads, kv_heads)
        choices = ", ".join(str(d) for d in range(1, common + 1) if common % d == 0)
        raise PipesimError(
            f"{path}: {field_path}.tp_size: {tp} does not divide num_attention_heads {heads} and num_kv_heads "
            f"{kv_heads} of {model.name}; use one of {choices}"
        )
    span = instance.span_nodes
    if node_index + span > num_nodes:
        raise PipesimError(
            f"{path}: {field_path}.span_nodes: {span} nodes from node {node_index} runs past the last node "
            f"({num_nodes - 1}); use span_nodes <= {num_nodes - node_index} or add nodes"
        )
    if instance.num_npus % span:
        raise PipesimError(
            f"{path}: {field_path}.span_nodes: {instance.num_npus} NPUs do not split evenly over {span} nodes; "
            "use a span_nodes that divides num_npus"
        )
    per_node = instance.num_npus // span
    if span > 1 and per_node != tp:
        # ASTRA-Sim's analytical network times a message on the first dimension where two ranks' coordinates
        # differ; with several stages per node, a send between stages on different nodes would differ in
        # dimension 0 too and be timed at intra-node speed. One stage (one TP group) per node avoids that.
        raise PipesimError(
            f"{path}: {field_path}.span_nodes: {per_node} NPUs per node but tp_size is {tp}; an instance across "
            f"nodes must put exactly one pipeline stage on each node (set span_nodes to pp_size = {pp})"
        )


def _check_memory(path: Path, field_path: str, instance: InstanceConfig, weight_bytes: int, dtype: str) -> None:
    try:
        available = npu_memory_bytes(instance.npu_mem.mem_size, instance.npu_mem.mem_util)
    except PipesimError as exc:  # memory.py names the npu_mem field; add the file and the instance
        raise PipesimError(f"{path}: {field_path}.{exc}") from None
    if weight_bytes <= available:
        return
    raise PipesimError(
        f"{path}: {field_path}.npu_mem.mem_size: the {dtype} weights need {weight_bytes / MEM_GB:.2f} GB per NPU "
        f"(largest of {instance.pp_size} stages / tp {instance.tp_size}) but mem_size * mem_util = "
        f"{instance.npu_mem.mem_size:g} * {instance.npu_mem.mem_util:g} = {available / MEM_GB:.2f} GB; "
        "use a larger tp_size or pp_size (and num_npus), or more memory"
    )


# ---------------------------------------------------------------------------------------------------------
# pydantic's ValidationError as one line
# ---------------------------------------------------------------------------------------------------------


def _describe_validation_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    text = f"{_json_path(loc)}: {_describe_error(first, loc)}"
    if len(errors) > 1:
        more = len(errors) - 1
        text += f" ({more} more problem{'s' if more > 1 else ''} after this one)"
    return text


def _json_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "list_type": "a list [...]",
    "model_type": "an object {...}",
    "model_attributes_type": "an object {...}",
    "dict_type": "an object {...}",
    "bool_type": "true or false",
}


def _describe_error(error: dict[str, Any], loc: tuple[Any, ...]) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return f"missing; add it ({_field_hint(loc)})"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        return f"unknown field; remove it (allowed here: {', '.join(allowed)})"
    if kind in _TYPE_NAMES:
        if _is_section(loc) and kind in ("model_type", "dict_type", "model_attributes_type"):
            return f"expected {_TYPE_NAMES[kind]} with {', '.join(_allowed_fields(loc))}, got {_show(value)}"
        return f"expected {_TYPE_NAMES[kind]}, got {_show(value)}"
    if kind == "finite_number":
        return f"must be a finite number, got {_show(value)}; write a plain number"
    if kind == "greater_than":
        return f"must be > {_bound(ctx.get('gt'))}, got {_show(value)}"
    if kind == "greater_than_equal":
        return f"must be >= {_bound(ctx.get('ge'))}, got {_show(value)}"
    if kind == "literal_error":
        return f'expected null, "prefill" or "decode", got {_show(value)}'
    if kind == "none_required":
        return f"expected null, got {_show(value)}"
    return " ".join(str(error.get("msg", kind)).split()) + f", got {_show(value)}"


def _bound(value: Any) -> str:
    # pydantic reports the bound of a float field as 0.0; the user wrote 0.
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return json.dumps(value) if isinstance(value, str | bool | int | float) or value is None else repr(value)


_UNITS = {
    "link_bw": "GB/s",
    "link_latency": "ns",
    "mem_size": "GB",
    "mem_bw": "GB/s",
    "mem_latency": "ns",
}


def _field_hint(loc: tuple[Any, ...]) -> str:
    name = loc[-1] if loc else ""
    if name in _UNITS:
        return f"a number in {_UNITS[name]}"
    if _is_section(loc):
        return "an object with " + ", ".join(_allowed_fields(loc))
    if name == "instances":
        return "a list of instance objects"
    if name == "nodes":
        return "a list of node objects"
    if name in ("model_name", "hardware"):
        return "a string"
    return "see docs/cluster_config.md"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model describing the object at `loc` (None if `loc` is not an object)."""
    model: type[BaseModel] | None = ClusterSpec
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        model = _object_type(info.annotation)
    return model


def _object_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _object_type(arg)
            if found is not None:
                return found
    return None


def _is_section(loc: tuple[Any, ...]) -> bool:
    return bool(loc) and not isinstance(loc[-1], int) and loc[-1] in ("cpu_mem", "npu_mem")


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model is not None else []
