"""The sweep spec (YAML) and its expansion into points (docs/sweep.md, "The spec").

    base:                                    # a serving run ...
      cluster_config: configs/cluster/tp2.json       # a path (relative to the spec file) or an inline JSON object
      workload: {num_requests: 16, rate: 4, input_len: 256, output_len: 32}   # generated (WorkloadSpec) ...
      # dataset: configs/workloads/example_trace.jsonl                         # ... or a JSONL trace
      rate: 4                                # optional: the arrivals rescaled to this many requests/s
      run: {dtype: float16, max_num_seqs: 64}        # `pipesim run` flags (RunRequest fields)
    # base: {train: {model: gpt2, hardware: A100-80G, pp: 4, ...}}           # ... or a training step (TrainingConfig)
    grid:                                    # the product of these axes, in the order written, the last fastest
      run.max_num_seqs: [8, 64]
      workload.input_len: [128, 512]
    zip:                                     # fields that vary together: each group is one more axis
      - {nodes.0.instances.0.tp_size: [1, 2], nodes.0.instances.0.num_npus: [1, 2]}
    capacity: {slo_ttft_p90_ms: 200, slo_tpot_p90_ms: 30, rate: 4}        # optional (astra_driver.sweep.capacity)

A field is a dotted path: `cluster.<path>` or a bare path starting at a cluster config key (num_nodes, link_bw,
link_latency, nodes) edits the cluster JSON (list indices are numbers); `workload.<field>`, `run.<field>`,
`train.<field>` (bare <field> in a training spec) set those sections; `dataset`, `cluster_config` and `rate` are
fields of their own. Every problem is one line naming the spec file and the field.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from astra_driver.cluster_config import ClusterSpec
from astra_driver.serving.run_job import RunRequest
from astra_driver.serving.workload import WorkloadSpec
from astra_driver.training import TrainingConfig
from llm_converter.errors import PipesimError

SPEC_KEYS = ("base", "grid", "zip", "capacity")
SERVING_BASE_KEYS = ("cluster_config", "dataset", "workload", "rate", "run")
CLUSTER_TOP_FIELDS = tuple(ClusterSpec.model_fields)  # num_nodes, link_bw, link_latency, nodes
# `pipesim run` flags a sweep point may set: the outputs belong to the sweep, not to one point.
RUN_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(RunRequest)
    if f.name
    not in ("cluster_config", "dataset", "output", "keep_traces", "log_interval_s", "show_progress", "timeline")
)
WORKLOAD_FIELDS = tuple(f.name for f in dataclasses.fields(WorkloadSpec))
TRAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainingConfig) if f.name not in ("out_dir", "record_node_times")
)
# Fields holding paths: resolved against the spec file's folder, so a spec runs from any working directory.
PATH_FIELDS = frozenset(
    {"dataset", "cluster_config", "run.profile_dir", "workload.lengths_from", "train.schedule_csv"}
    | {"train.network_file"}
)
CAPACITY_KEYS = ("slo_ttft_p90_ms", "slo_tpot_p90_ms", "rate", "rtol", "max_steps")
DEFAULT_RTOL = 0.025  # Vidur's --min-search-granularity (2.5%)
DEFAULT_MAX_STEPS = 20  # Vidur's --max-iterations


@dataclass(frozen=True)
class Axis:
    """One dimension of the grid: its fields (one, or a zip group's) and their values, one tuple per step."""

    fields: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    origin: str = "grid"  # where the spec gives it ("grid" or "zip.N"), for messages


@dataclass(frozen=True)
class CapacitySpec:
    """The SLO of a sweep's `capacity:` section. `rate` given: every point runs at it and the cheapest point (fewest
    NPUs) meeting the SLO is marked best; `rate` absent: each point's highest rate meeting the SLO is searched and
    the point with the most requests/s per NPU is marked best (Vidur's config search, QPS per dollar)."""

    slo_ttft_p90_ms: float | None
    slo_tpot_p90_ms: float | None
    rate: float | None = None
    rtol: float = DEFAULT_RTOL
    max_steps: int = DEFAULT_MAX_STEPS

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: its index in grid order, its parameter values (column order) and the job a
    worker runs (plain picklable data: the edited cluster JSON, paths as absolute strings)."""

    index: int
    params: tuple[tuple[str, Any], ...]
    job: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    kind: str  # "serving" or "training"
    base: dict[str, Any]  # paths resolved
    axes: tuple[Axis, ...]
    capacity: CapacitySpec | None
    # cluster JSON files read for this spec, by path (a grid over 100 points reads each file once)
    cluster_files: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def parameter_names(self) -> list[str]:
        return [name for axis in self.axes for name in axis.fields]

    def points(self) -> list[Point]:
        return expand(self)


# ---------------------------------------------------------------------------------------------------------
# Reading the spec
# ---------------------------------------------------------------------------------------------------------


def load_spec(path: Path | str) -> SweepSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such sweep spec (give a YAML file, e.g. configs/sweeps/)") from None
    except IsADirectoryError:
        raise PipesimError(f"{path}: is a folder; give the sweep spec YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PipesimError(f"{path}: cannot read the sweep spec ({exc}); give a YAML text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PipesimError(f"{path}: {where}{problem}; fix the YAML syntax") from None
    return spec_from_dict(data, path)


def spec_from_dict(data: Any, path: Path | str = Path("<sweep spec>")) -> SweepSpec:
    """The checks of load_spec on an in-memory document; relative paths are taken from `path`'s folder."""
    path = Path(path)
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: a sweep spec is a mapping with keys {', '.join(SPEC_KEYS)}; see docs/sweep.md")
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise PipesimError(f"{path}: {unknown[0]}: not a sweep spec key; use {', '.join(SPEC_KEYS)}")
    base = data.get("base")
    if not isinstance(base, dict) or not base:
        raise PipesimError(
            f"{path}: base: missing or not a mapping; give a serving base (cluster_config, dataset or "
            "workload, run) or a training base (train)"
        )
    kind = "training" if "train" in base else "serving"
    root = path.parent
    base = _check_base(path, kind, base, root)
    axes = _read_axes(path, data, root)
    capacity = _read_capacity(path, data.get("capacity"), kind)
    spec = SweepSpec(path=path, kind=kind, base=base, axes=tuple(axes), capacity=capacity)
    names = spec.parameter_names
    if capacity is not None and capacity.rate is not None and ("rate" in names or "rate" in base):
        where = "grid: rate" if "rate" in names else "base.rate"
        raise PipesimError(f"{path}: {where}: capacity.rate fixes every point's rate; drop one of them")
    _point_config(spec, {}, where="base")  # the base's files can be read
    for axis in spec.axes:  # every value resolves on the base: a typo fails here, not once per point
        for step in axis.values:
            for name, value in zip(axis.fields, step, strict=True):
                _point_config(spec, {name: value}, where=axis.origin)
    return spec


def _check_base(path: Path, kind: str, base: dict[str, Any], root: Path) -> dict[str, Any]:
    base = copy.deepcopy(base)
    if kind == "training":
        extra = [k for k in base if k != "train"]
        if extra:
            raise PipesimError(f"{path}: base.{extra[0]}: a training base has only `train` (TrainingConfig fields)")
        train = base["train"]
        if not isinstance(train, dict):
            raise PipesimError(f"{path}: base.train: give a mapping of TrainingConfig fields ({_list(TRAIN_FIELDS)})")
        for key in train:
            _check_section_field(path, "train", key, f"base.train.{key}", train[key])
        for required in ("model", "hardware"):
            if required not in train:
                raise PipesimError(f"{path}: base.train.{required}: missing; a training point needs model and hardware")
        base["train"] = {k: _resolve_path(f"train.{k}", v, root) for k, v in train.items()}
        return base
    for key in base:
        if key not in SERVING_BASE_KEYS:
            raise PipesimError(
                f"{path}: base.{key}: not a serving base key; use {', '.join(SERVING_BASE_KEYS)} (or `train` alone)"
            )
    if "cluster_config" not in base:
        raise PipesimError(f"{path}: base.cluster_config: missing; give a cluster config path or an inline object")
    if ("dataset" in base) == ("workload" in base):
        raise PipesimError(f"{path}: base: give exactly one of dataset (a JSONL path) and workload (generated)")
    for section in ("workload", "run"):
        value = base.setdefault(section, {}) if section == "run" else base.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise PipesimError(f"{path}: base.{section}: give a mapping of fields")
        for key in value:
            _check_section_field(path, section, key, f"base.{section}.{key}", value[key])
        base[section] = {k: _resolve_path(f"{section}.{k}", v, root) for k, v in value.items()}
    for key in ("dataset", "cluster_config"):
        if key in base:
            base[key] = _resolve_path(key, base[key], root)
    return base


def _check_section_field(path: Path, section: str, key: Any, where: str, value: Any) -> None:
    fields = {"run": RUN_FIELDS, "workload": WORKLOAD_FIELDS, "train": TRAIN_FIELDS}[section]
    if key not in fields:
        raise PipesimError(f"{path}: {where}: not a {section} field; use one of {_list(fields)}")
    members = _union_members(_HINTS[section][key])
    if not any(_fits(value, member) for member in members):
        wanted = " or ".join(_KIND_NAMES.get(typing.get_origin(m) or m, str(m)) for m in members)
        raise PipesimError(f"{path}: {where}: {value!r} is not {wanted}")


_HINTS = {
    "run": typing.get_type_hints(RunRequest),
    "workload": typing.get_type_hints(WorkloadSpec),
    "train": typing.get_type_hints(TrainingConfig),
}
_KIND_NAMES: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    Path: "a path",
    tuple: "a list of numbers",
    type(None): "null",
}


def _fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value can be the field's type (bool is not an int here; a path is a string)."""
    kind = typing.get_origin(annotation) or annotation
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, int | float)
    if kind is str or kind is Path:
        return isinstance(value, str)
    if kind is tuple:
        return isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
    return True  # a type the sweep does not know: the run checks it


def _read_axes(path: Path, data: dict[str, Any], root: Path) -> list[Axis]:
    axes: list[Axis] = []
    seen: set[str] = set()
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise PipesimError(f"{path}: grid: give a mapping of field -> list of values")
    for name, values in grid.items():
        _check_axis_values(path, f"grid: {name}", name, values)
        _check_new(path, f"grid: {name}", name, seen)
        axes.append(Axis((name,), tuple((_resolve_path(name, v, root),) for v in values)))
    groups = data.get("zip") or []
    if isinstance(groups, dict):
        groups = [groups]
    if not isinstance(groups, list):
        raise PipesimError(f"{path}: zip: give a list of groups, each a mapping of field -> list of values")
    for g, group in enumerate(groups):
        if not isinstance(group, dict) or not group:
            raise PipesimError(f"{path}: zip.{g}: give a mapping of field -> list of values (equal lengths)")
        lengths = set()
        for name, values in group.items():
            _check_axis_values(path, f"zip.{g}: {name}", name, values)
            _check_new(path, f"zip.{g}: {name}", name, seen)
            lengths.add(len(values))
        if len(lengths) != 1:
            sizes = ", ".join(f"{name} {len(values)}" for name, values in group.items())
            raise PipesimError(f"{path}: zip.{g}: the lists of a zip group must have equal lengths ({sizes})")
        names = tuple(group)
        rows = zip(*(group[n] for n in names), strict=True)
        axes.append(
            Axis(
                names,
                tuple(tuple(_resolve_path(n, v, root) for n, v in zip(names, row, strict=True)) for row in rows),
                origin=f"zip.{g}",
            )
        )
    return axes


def _check_axis_values(path: Path, where: str, name: Any, values: Any) -> None:
    if not isinstance(name, str) or not name:
        raise PipesimError(f"{path}: {where}: a field is a dotted path string, e.g. run.max_num_seqs")
    if not isinstance(values, list) or not values:
        raise PipesimError(f"{path}: {where}: give a non-empty list of values, e.g. [1, 2]")


def _check_new(path: Path, where: str, name: str, seen: set[str]) -> None:
    if name in seen:
        raise PipesimError(f"{path}: {where}: this field is already swept (grid and zip fields must be distinct)")
    seen.add(name)


def _read_capacity(path: Path, data: Any, kind: str) -> CapacitySpec | None:
    if data is None:
        return None
    if kind != "serving":
        raise PipesimError(f"{path}: capacity: only a serving sweep has an SLO; drop it from a training sweep")
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: capacity: give a mapping ({', '.join(CAPACITY_KEYS)})")
    for key in data:
        if key not in CAPACITY_KEYS:
            raise PipesimError(f"{path}: capacity.{key}: not a capacity key; use {', '.join(CAPACITY_KEYS)}")
    values: dict[str, Any] = {}
    for key in ("slo_ttft_p90_ms", "slo_tpot_p90_ms", "rate", "rtol"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise PipesimError(f"{path}: capacity.{key}: {value!r}; give a number > 0")
        if value is not None and not math.isfinite(value):
            raise PipesimError(f"{path}: capacity.{key}: {value!r}; give a finite number")
        values[key] = None if value is None else float(value)
    if values["slo_ttft_p90_ms"] is None and values["slo_tpot_p90_ms"] is None:
        raise PipesimError(f"{path}: capacity: give slo_ttft_p90_ms, slo_tpot_p90_ms or both")
    steps = data.get("max_steps", DEFAULT_MAX_STEPS)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise PipesimError(f"{path}: capacity.max_steps: {steps!r}; give an integer >= 1")
    return CapacitySpec(
        slo_ttft_p90_ms=values["slo_ttft_p90_ms"],
        slo_tpot_p90_ms=values["slo_tpot_p90_ms"],
        rate=values["rate"],
        rtol=values["rtol"] if values["rtol"] is not None else DEFAULT_RTOL,
        max_steps=steps,
    )


def _resolve_path(field: str, value: Any, root: Path) -> Any:
    if field in PATH_FIELDS and isinstance(value, str):
        return str((root / value).resolve()) if not Path(value).is_absolute() else value
    return value


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(names)


# ---------------------------------------------------------------------------------------------------------
# Expansion
# ---------------------------------------------------------------------------------------------------------


def expand(spec: SweepSpec) -> list[Point]:
    """Every point, in grid order: itertools.product over the axes as written (grid first, then zip groups)."""
    names = spec.parameter_names
    points = []
    for index, combo in enumerate(itertools.product(*(axis.values for axis in spec.axes))):
        values = [v for step in combo for v in step]
        params = dict(zip(names, values, strict=True))
        job = _point_config(spec, params, where=f"point {index}")
        points.append(Point(index=index, params=tuple(params.items()), job=job))
    return points


def _point_config(spec: SweepSpec, params: dict[str, Any], where: str) -> dict[str, Any]:
    """The job of one point: the base with the point's values set. Cluster paths apply to the cluster JSON of the
    point's cluster_config (a grid over cluster_config files and over their fields combine)."""
    config = copy.deepcopy(spec.base)
    cluster_edits: list[tuple[str, Any]] = []
    for name, value in params.items():
        section, _, rest = name.partition(".")
        if spec.kind == "training":
            train_field = rest if section == "train" else name
            if train_field not in TRAIN_FIELDS:
                raise PipesimError(f"{spec.path}: {where}: {name}: not a training field; use {_list(TRAIN_FIELDS)}")
            _check_section_field(spec.path, "train", train_field, f"{where}: {name}", value)
            config["train"][train_field] = value
        elif section in ("run", "workload") and rest:
            if section == "workload" and config.get("workload") is None:
                raise PipesimError(
                    f"{spec.path}: {where}: {name}: the base reads a dataset; sweep `rate` instead, or "
                    "give a generated `workload`"
                )
            _check_section_field(spec.path, section, rest, f"{where}: {name}", value)
            config[section][rest] = value
        elif name in ("dataset", "rate", "cluster_config"):
            if name == "dataset" and config.get("workload") is not None:
                raise PipesimError(f"{spec.path}: {where}: dataset: the base generates a workload; drop one of them")
            config[name] = value
        elif section == "cluster" and rest:
            cluster_edits.append((rest, value))
        elif section in CLUSTER_TOP_FIELDS:
            cluster_edits.append((name, value))
        else:
            raise PipesimError(
                f"{spec.path}: {where}: {name}: not a sweep field; use cluster.<path> (or a path from "
                f"{'/'.join(CLUSTER_TOP_FIELDS)}), workload.<field>, run.<field>, dataset, rate or cluster_config"
            )
    if spec.kind == "training":
        return {"kind": "training", "train": config["train"]}
    dataset = config.get("dataset")
    if dataset is not None and not (isinstance(dataset, str) and Path(dataset).is_file()):
        raise PipesimError(f"{spec.path}: {where}: dataset: {dataset!r} is not a file; give a JSONL trace path")
    cluster, source = _cluster_json(spec, config["cluster_config"], where)
    for dotted, value in cluster_edits:
        _set_path(spec.path, where, cluster, dotted, value)
    job = {
        "kind": "serving",
        "cluster": cluster,
        "cluster_source": source,
        "dataset": config.get("dataset"),
        "workload": config.get("workload"),
        "rate": spec.capacity.rate
        if spec.capacity is not None and spec.capacity.rate is not None
        else config.get("rate"),
        "run": config["run"],
        "capacity": spec.capacity.to_json() if spec.capacity is not None else None,
    }
    return job


def _cluster_json(spec: SweepSpec, value: Any, where: str) -> tuple[Any, str]:
    if isinstance(value, dict):
        return copy.deepcopy(value), f"{spec.path}: cluster_config"
    if not isinstance(value, str):
        raise PipesimError(f"{spec.path}: {where}: cluster_config: give a path to a cluster JSON or an inline object")
    if value not in spec.cluster_files:
        try:
            spec.cluster_files[value] = json.loads(Path(value).read_text())
        except OSError as exc:
            raise PipesimError(f"{spec.path}: cluster_config: {value}: cannot read it ({exc.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PipesimError(f"{spec.path}: cluster_config: {value}: not valid JSON ({exc})") from None
    return copy.deepcopy(spec.cluster_files[value]), value


def _set_path(spec_path: Path, where: str, document: Any, dotted: str, value: Any) -> None:
    """Set document[a][b]... = value for "a.b..." (list indices as numbers). The path must exist in the document,
    except its last key when that is a cluster config field the document leaves at its default (e.g. pd_type)."""
    keys = dotted.split(".")
    node = document
    model: Any = ClusterSpec
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        here = dotted if last else ".".join(keys[: depth + 1])
        where_path = f"{where}: {dotted}" if last else f"{where}: {dotted}: {here}"
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise PipesimError(
                    f"{spec_path}: {where_path}: the cluster config has {len(node)} entries there "
                    f"(indices 0..{len(node) - 1})"
                )
            index = int(key)
            if last:
                node[index] = value
                return
            node = node[index]
            model = _item_model(model)
            continue
        if not isinstance(node, dict):
            parent = ".".join(keys[:depth])
            raise PipesimError(f"{spec_path}: {where}: {dotted}: {parent} is a value, not an object or list")
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if key not in node and key not in fields:
            known = ", ".join(sorted(set(node) | set(fields)))
            raise PipesimError(f"{spec_path}: {where_path}: not a cluster config field; fields there: {known}")
        if last:
            node[key] = value
            return
        if key not in node:
            raise PipesimError(
                f"{spec_path}: {where_path}: absent from the cluster config; set the whole object instead"
            )
        node = node[key]
        model = fields[key].annotation if key in fields else None


def _item_model(annotation: Any) -> Any:
    """The element type of a list[...] field annotation (list[NodeConfig] -> NodeConfig), None if unknown."""
    for candidate in _union_members(annotation):
        if typing.get_origin(candidate) is list:
            args = typing.get_args(candidate)
            return args[0] if args else None
    return None


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def format_value(value: Any) -> str:
    """A parameter or metric as a CSV cell: the same value always gives the same text (points are identified by
    their cells on resume). Numbers as Python writes them (floats round-trip), booleans true/false, None empty,
    lists and mappings as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value) if not isinstance(value, float) else repr(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
