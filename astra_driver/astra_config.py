"""ASTRA-Sim's own configuration files as data: network.yml, system.json, memory.json, comm groups.

One home for these concepts: the builtin engine reads them from here, and the template renderer writes them
from here. Field names follow the files' keys (see ../shared/astra-sim/README.md). One set of checks
(`check_network`, `check_system`, `check_memory`, `check_comm_groups`) refuses what ASTRA-Sim rejects: the
loaders run it on what they read, astra_files on what it writes. The loaders also survive hostile text
(not UTF-8, UTF-16, deep nesting, integers no double holds): every failure is one PipesimError line naming
the file and the field or line.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_converter.comm_groups import parse_group_id
from llm_converter.errors import PipesimError
from llm_converter.graph import Workload

TOPOLOGIES = ("Ring", "FullyConnected", "Switch")
COLLECTIVE_IMPLEMENTATIONS = (
    "ring",
    "oneRing",
    "direct",
    "oneDirect",
    "halvingDoubling",
    "oneHalvingDoubling",
    "doubleBinaryTree",
)
SCHEDULING_POLICIES = ("LIFO", "FIFO", "EXPLICIT")
COLLECTIVE_OPTIMIZATIONS = ("baseline", "localBWAware")
MEMORY_TYPES = ("NO_MEMORY_EXPANSION", "PER_NODE_MEMORY_EXPANSION", "PER_NPU_MEMORY_EXPANSION", "MEMORY_POOL")


@dataclass(frozen=True)
class NetworkConfig:
    """network.yml of the analytical backend: one entry per dimension, dimension 0 varies fastest."""

    topology: list[str]
    npus_count: list[int]
    bandwidth: list[float]  # GB/s, GB = 2^30 bytes
    latency: list[float]  # ns per hop

    @property
    def npus(self) -> int:
        total = 1
        for count in self.npus_count:
            total *= count
        return total

    @property
    def dims(self) -> int:
        return len(self.npus_count)


@dataclass(frozen=True)
class SystemConfig:
    """system.json. Lists hold one collective implementation per network dimension."""

    scheduling_policy: str = "LIFO"
    endpoint_delay: int = 10
    active_chunks_per_dimension: int = 1
    preferred_dataset_splits: int = 4
    all_reduce_implementation: list[str] = field(default_factory=lambda: ["ring"])
    all_gather_implementation: list[str] = field(default_factory=lambda: ["ring"])
    reduce_scatter_implementation: list[str] = field(default_factory=lambda: ["ring"])
    all_to_all_implementation: list[str] = field(default_factory=lambda: ["ring"])
    collective_optimization: str = "localBWAware"
    local_mem_bw: float = 1600.0  # GB/s, GB = 1e9 bytes
    peak_perf: float = 900.0  # TFLOPS
    roofline_enabled: bool = False
    replay_only: bool = False
    trace_enabled: bool = False
    track_local_mem: bool = False


@dataclass(frozen=True)
class MemoryConfig:
    """memory.json: remote memory for MEM_LOAD/MEM_STORE nodes."""

    memory_type: str = "NO_MEMORY_EXPANSION"
    num_nodes: int = 1
    num_npus_per_node: int = 1
    remote_mem_latency: float = 0.0  # ns
    remote_mem_bw: float = 0.0  # GB/s


@dataclass(frozen=True)
class AstraConfig:
    """Everything one ASTRA-Sim run is configured with, besides the workload."""

    network: NetworkConfig
    system: SystemConfig = field(default_factory=SystemConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    comm_groups: dict[str, list[int]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Checks: the one home of what ASTRA-Sim rejects (or silently mis-simulates). The loaders run them on what
# they read (`where` = the file's path), the writer (astra_files) on what it is about to write (`where` = the
# file's name), so both refuse the same values with the same words.
# ---------------------------------------------------------------------------------------------------------

NETWORK_FILE = "network.yml"
SYSTEM_FILE = "system.json"
MEMORY_FILE = "memory.json"
COMM_GROUPS_FILE = "comm_groups.json"

# ASTRA-Sim reads counts, delays and ranks into C++ ints (yaml-cpp `as<int>`, nlohmann `get<int>`, stoi).
INT32_MAX = 2**31 - 1

_IMPLEMENTATION_FIELDS = (
    "all_reduce_implementation",
    "all_gather_implementation",
    "reduce_scatter_implementation",
    "all_to_all_implementation",
)


def _finite_at_least(value: float, minimum: float, strict: bool) -> bool:
    return math.isfinite(value) and (value > minimum if strict else value >= minimum)


def check_network(network: NetworkConfig, where: str = NETWORK_FILE) -> None:
    dims = len(network.topology)
    if dims == 0:
        raise PipesimError(f"{where}: topology: empty; give one of {', '.join(TOPOLOGIES)} per dimension")
    for name in network.topology:
        if name not in TOPOLOGIES:
            raise PipesimError(f"{where}: topology: unknown {_show(name)}; allowed: {', '.join(TOPOLOGIES)}")
    for key in ("npus_count", "bandwidth", "latency"):
        values = getattr(network, key)
        if len(values) != dims:
            raise PipesimError(
                f"{where}: {key} has {len(values)} entries but topology has {dims} dimensions; give one per dimension"
            )
    for dim, count in enumerate(network.npus_count):
        if count < 2:
            raise PipesimError(
                f"{where}: npus_count[{dim}] = {count}; ASTRA-Sim needs at least 2 NPUs per dimension (drop the "
                "dimension, or simulate a 1-NPU run with pipesim's builtin engine)"
            )
        if count > INT32_MAX:
            raise PipesimError(f"{where}: npus_count[{dim}]: over {INT32_MAX}; ASTRA-Sim reads it as a 32-bit int")
    for dim, bandwidth in enumerate(network.bandwidth):
        if not _finite_at_least(bandwidth, 0, strict=True):
            raise PipesimError(
                f"{where}: bandwidth[{dim}] = {bandwidth:g}; bandwidth must be > 0 GB/s, a finite number"
            )
    for dim, latency in enumerate(network.latency):
        if not _finite_at_least(latency, 0, strict=False):
            raise PipesimError(f"{where}: latency[{dim}] = {latency:g}; latency must be >= 0 ns, a finite number")


def check_system(
    system: SystemConfig, dims: int | None, where: str = SYSTEM_FILE, allow_zero_endpoint_delay: bool = False
) -> None:
    """With `dims`, every implementation list must have one entry per network dimension. A user's endpoint-delay 0
    (allow_zero_endpoint_delay) is valid for sends and recvs only: backends.check_endpoint_delay sees the workload."""
    if system.scheduling_policy not in SCHEDULING_POLICIES:
        raise PipesimError(
            f"{where}: scheduling-policy: unknown {_show(system.scheduling_policy)}; "
            f"allowed: {', '.join(SCHEDULING_POLICIES)}"
        )
    if allow_zero_endpoint_delay and system.endpoint_delay == 0:
        pass
    elif not 0 < system.endpoint_delay <= INT32_MAX:
        raise PipesimError(
            f"{where}: endpoint-delay = {system.endpoint_delay}; ASTRA-Sim asserts it is > 0 (use 10) and reads "
            "it as a 32-bit int"
        )
    for key in ("active_chunks_per_dimension", "preferred_dataset_splits"):
        value = getattr(system, key)
        if not 1 <= value <= INT32_MAX:
            raise PipesimError(f"{where}: {key.replace('_', '-')} = {value}; it must be >= 1 (a 32-bit int)")
    for key in _IMPLEMENTATION_FIELDS:
        names = getattr(system, key)
        label = key.replace("_", "-")
        if not names:
            raise PipesimError(f"{where}: {label}: empty; give one implementation per network dimension")
        for name in names:
            if name not in COLLECTIVE_IMPLEMENTATIONS:
                raise PipesimError(
                    f"{where}: {label}: unknown {_show(name)}; allowed: {', '.join(COLLECTIVE_IMPLEMENTATIONS)}"
                )
        if dims is not None and len(names) != dims:
            raise PipesimError(
                f"{where}: {label} has {len(names)} entries but the network has {dims} dimensions; "
                "give one per dimension"
            )
    if system.collective_optimization not in COLLECTIVE_OPTIMIZATIONS:
        raise PipesimError(
            f"{where}: collective-optimization: unknown {_show(system.collective_optimization)}; "
            f"allowed: {', '.join(COLLECTIVE_OPTIMIZATIONS)}"
        )
    # Infinity/NaN: no simulated time comes out of them, and JSON (ASTRA-Sim's parser) cannot hold them.
    if not _finite_at_least(system.local_mem_bw, 0, strict=True):
        raise PipesimError(f"{where}: local-mem-bw = {system.local_mem_bw:g}; it must be > 0 GB/s, a finite number")
    if not _finite_at_least(system.peak_perf, 0, strict=True):
        raise PipesimError(f"{where}: peak-perf = {system.peak_perf:g}; it must be > 0 TFLOPS, a finite number")


def check_memory(memory: MemoryConfig, where: str = MEMORY_FILE) -> None:
    if memory.memory_type not in MEMORY_TYPES:
        raise PipesimError(
            f"{where}: memory-type: unknown {_show(memory.memory_type)}; allowed: {', '.join(MEMORY_TYPES)}"
        )
    if memory.memory_type == "NO_MEMORY_EXPANSION":
        return
    if not _finite_at_least(memory.remote_mem_bw, 0, strict=True):
        raise PipesimError(f"{where}: remote-mem-bw = {memory.remote_mem_bw:g}; it must be > 0 GB/s, a finite number")
    if not _finite_at_least(memory.remote_mem_latency, 0, strict=False):
        raise PipesimError(
            f"{where}: remote-mem-latency = {memory.remote_mem_latency:g}; it must be >= 0 ns, a finite number"
        )
    if not (1 <= memory.num_nodes <= INT32_MAX and 1 <= memory.num_npus_per_node <= INT32_MAX):
        raise PipesimError(f"{where}: num-nodes and num-npus-per-node must be >= 1 (32-bit ints)")


def check_comm_groups(groups: dict[str, list[int]], npus: int | None, where: str = COMM_GROUPS_FILE) -> None:
    """Keys are canonical group ids (see llm_converter.comm_groups); with `npus`, every rank must exist."""
    for name, ranks in groups.items():
        value = parse_group_id(name)
        if value is None or value == 0 or str(value) != name:
            raise PipesimError(
                f"{where}: group {_show(name)}: ids must be positive decimal integers up to {INT32_MAX} "
                "('0' and '' mean all NPUs)"
            )
        if not ranks:
            raise PipesimError(f"{where}: group {name}: no ranks; give at least one")
        for rank in ranks:
            if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= INT32_MAX:
                raise PipesimError(f"{where}: group {name}: rank {_show(rank)} is not a rank (an integer >= 0)")
            if npus is not None and rank >= npus:
                raise PipesimError(
                    f"{where}: group {name}: rank {rank} is outside the network's {npus} NPUs (ranks 0..{npus - 1}); "
                    "remove it from the group"
                )
        if len(set(ranks)) != len(ranks):
            raise PipesimError(f"{where}: group {name}: a rank appears twice")


def check_astra_config(config: AstraConfig) -> None:
    """Everything one run is configured with, as the files pipesim writes would hold it."""
    check_network(config.network)
    check_system(config.system, config.network.dims)
    check_memory(config.memory)
    check_comm_groups(config.comm_groups, config.network.npus)


# ---------------------------------------------------------------------------------------------------------
# Loaders: read ASTRA-Sim's own files into the dataclasses (types, keys, hostile text), then run the checks.
# ---------------------------------------------------------------------------------------------------------

_IMPLEMENTATION_KEYS = tuple(key.replace("_", "-") for key in _IMPLEMENTATION_FIELDS)

# Values quoted in messages stay short however large or nested they are (a YAML alias can nest a list
# exponentially; reprlib never expands more than a few levels and items).
_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 4


def _show(value: Any) -> str:
    return _REPR.repr(value)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PipesimError(f"{path}: no such file (give the path of the {what})") from None
    except IsADirectoryError:
        raise PipesimError(f"{path}: is a directory (give the path of the {what} file)") from None
    except OSError as exc:
        raise PipesimError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise PipesimError(f"{path}: the {what} is UTF-16 text; save it as UTF-8 (ASTRA-Sim reads UTF-8)")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise PipesimError(f"{path}: line {line}: a NUL byte (UTF-16 text?); save the {what} as UTF-8")
    return data


def _not_utf8(path: Path, what: str, data: bytes, exc: UnicodeDecodeError) -> PipesimError:
    line = data.count(b"\n", 0, exc.start) + 1
    return PipesimError(f"{path}: line {line}, byte {exc.start}: not valid UTF-8 text; save the {what} as UTF-8")


def _read_text(path: Path, what: str) -> str:
    data = _read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is skipped, as nlohmann::json and yaml-cpp do
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, what, data, exc) from None


# The config files hold flat lists: a few levels of [ ] / { }. Deeper text is refused before parsing, with its
# line: PyYAML's scanner is quadratic in the flow depth (a 1000-deep file takes a second) and both parsers recurse.
MAX_NESTING = 16
# Integers are read as text first: one longer than a double holds (ASTRA-Sim's JSON reader rejects it, and
# Python refuses to convert over 4300 digits) is kept as its digit count, so the field it sits in can be named.
MAX_INTEGER_DIGITS = 308


class HugeInteger:
    """An integer literal too long to be a value of any field (only its digit count is kept)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _integer(text: str) -> int | HugeInteger:
    digits = len(text.lstrip("+-").replace("_", ""))
    return HugeInteger(digits) if digits > MAX_INTEGER_DIGITS else int(text)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _field_label(name: str) -> str:
    """A field path for a message: short, with undecodable bytes shown as \\xNN (the name may hold them)."""
    try:
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        pass  # a lone surrogate from a JSON escape: PipesimError shows it as \\udNNN
    return _REPR.repr_str(name, 0)[1:-1] if len(name) > _REPR.maxstring else name


def _check_values(path: Path, data: Any, where: str = "") -> None:
    """Refuse, naming its field, the first value no ASTRA-Sim reader takes: an integer no double holds, or text
    that is not UTF-8 (bytes read as lone surrogates, or a JSON escape of a lone UTF-16 surrogate, which
    nlohmann::json refuses). Nesting is bounded already."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        name = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else str(key))
        label = _field_label(name)
        if isinstance(value, HugeInteger):
            raise PipesimError(
                f"{path}: {label}: an integer of {value.digits} digits; no double holds it and no field takes it"
            )
        for text in (key, value) if isinstance(key, str) else (value,):
            match = _SURROGATE.search(text) if isinstance(text, str) else None
            if match is None:
                continue
            if "\udc80" <= match.group() <= "\udcff":
                byte = ord(match.group()) - 0xDC00
                raise PipesimError(f"{path}: {label}: not valid UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8")
            raise PipesimError(
                f"{path}: {label}: a lone UTF-16 surrogate (\\u{ord(match.group()):04x}), which ASTRA-Sim's JSON "
                "reader refuses; write the character itself"
            )
        _check_values(path, value, name)


def _nesting_line(text: str) -> int | None:
    """The line where [ ] / { } nesting first goes deeper than MAX_NESTING (None if never), skipping quoted
    text and comments."""
    depth = 0
    line = 1
    quote = ""
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\n":
            line += 1
        if quote:
            if char == "\\" and quote == '"':
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t\n"):
            newline = text.find("\n", index)
            index = len(text) if newline < 0 else newline
            continue
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif char in "]}":
            depth = max(depth - 1, 0)
        index += 1
    return None


def _check_nesting(path: Path, text: str, what: str) -> None:
    line = _nesting_line(text)
    if line is not None:
        raise PipesimError(
            f"{path}: line {line}: nested over {MAX_NESTING} levels of [ ] or {{ }}, too deep to read; the {what} "
            "holds flat lists"
        )


def _parse_failure(path: Path, what: str, exc: BaseException) -> PipesimError:
    """The one-line error of a parser that gave up on hostile text (nesting, giant integers)."""
    if isinstance(exc, RecursionError):
        return PipesimError(f"{path}: nested too deeply to read; the {what} holds flat lists and numbers")
    if "4300 digits" in str(exc) or "integer string conversion" in str(exc):
        return PipesimError(f"{path}: an integer of over 4300 digits; no field of the {what} takes one")
    return PipesimError(f"{path}: cannot read the {what} ({exc}); fix the file")


def _load_json_object(path: Path, what: str) -> tuple[dict[str, Any], list[str]]:
    """The top-level object of a JSON file, and the keys that appear in it more than once."""
    data_bytes = _read_bytes(path, what)
    bad_utf8: UnicodeDecodeError | None = None
    try:
        text = data_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # Keep reading, with the bad bytes as lone surrogates, to name the field that holds them.
        bad_utf8 = exc
        text = data_bytes.decode("utf-8-sig", "surrogateescape")
    _check_nesting(path, text, what)
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                repeated.append(key)
            result[key] = value
        return result

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=_integer)
    except json.JSONDecodeError as exc:
        if bad_utf8 is not None:
            raise _not_utf8(path, what, data_bytes, bad_utf8) from None
        raise PipesimError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the {what}") from None
    except (RecursionError, ValueError) as exc:
        raise _parse_failure(path, what, exc) from None
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: the {what} must be a JSON object of key: value pairs")
    _check_values(path, data)
    return data, repeated


def _number(path: Path, key: str, value: Any, integer: bool = False) -> float | int:
    # bool is an int in Python; ASTRA-Sim's JSON reader would not take true/false for a number either.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PipesimError(f"{path}: {key}: expected a number, got {_show(value)}")
    # YAML's .inf/.nan and Python's JSON reader's Infinity/NaN pass here: the checks refuse them for every field,
    # in the same words as for a config about to be written.
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise PipesimError(f"{path}: {key}: expected an integer, got {value!r}")
        if abs(value) > INT32_MAX:
            raise PipesimError(f"{path}: {key}: {_show(value)} is over {INT32_MAX}; ASTRA-Sim reads a 32-bit int")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise PipesimError(f"{path}: {key}: {_show(value)} is too large for a number (over 1.8e308)") from None


def _name(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise PipesimError(f"{path}: {key}: expected a name (a string), got {_show(value)}")
    return value


def _flag(path: Path, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise PipesimError(f"{path}: {key}: expected 0 or 1, got {_show(value)}")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


class _NetworkYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (1e-05, 5E+1): yaml-cpp, which ASTRA-Sim reads
    network.yml with, takes them as numbers, while YAML 1.1 (PyYAML) would read them as strings."""


def _construct_yaml_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | HugeInteger:
    text = str(loader.construct_scalar(node))
    digits = len(text.lstrip("+-").replace("_", ""))
    if digits > MAX_INTEGER_DIGITS:
        return HugeInteger(digits)
    return loader.construct_yaml_int(node)


_NetworkYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_yaml_int)
_NetworkYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_network(path: Path | str) -> NetworkConfig:
    """network.yml of the analytical backend: topology, npus_count, bandwidth, latency (one entry per dim)."""
    path = Path(path)
    what = "network config (network.yml)"
    text = _read_text(path, what)
    _check_nesting(path, text, what)
    try:
        data = yaml.load(text, Loader=_NetworkYamlLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise PipesimError(f"{path}: {where}not valid YAML; fix the network config") from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise _parse_failure(path, what, exc) from None
    if not isinstance(data, dict):
        raise PipesimError(f"{path}: expected keys topology, npus_count, bandwidth, latency (a YAML mapping)")
    _check_values(path, data)
    for key in ("topology", "npus_count", "bandwidth", "latency"):
        if key not in data:
            raise PipesimError(f"{path}: missing key '{key}' (one entry per network dimension)")
    network = NetworkConfig(
        topology=[_name(path, "topology", v) for v in _as_list(data["topology"])],
        npus_count=[_number(path, "npus_count", v, integer=True) for v in _as_list(data["npus_count"])],
        bandwidth=[_number(path, "bandwidth", v) for v in _as_list(data["bandwidth"])],
        latency=[_number(path, "latency", v) for v in _as_list(data["latency"])],
    )
    check_network(network, str(path))
    return network


def load_system(path: Path | str, dims: int | None = None) -> SystemConfig:
    """system.json. With `dims`, the implementation lists must have one entry per network dimension."""
    path = Path(path)
    data, _ = _load_json_object(path, "system config (system.json)")
    kwargs: dict[str, Any] = {}
    for key in ("scheduling-policy", "collective-optimization"):
        if key in data:
            kwargs[key.replace("-", "_")] = _name(path, key, data[key])
    for key in ("endpoint-delay", "active-chunks-per-dimension", "preferred-dataset-splits"):
        if key in data:
            kwargs[key.replace("-", "_")] = _number(path, key, data[key], integer=True)
    for key in _IMPLEMENTATION_KEYS:
        if key in data:
            kwargs[key.replace("-", "_")] = [_name(path, key, v) for v in _as_list(data[key])]
    for key in ("local-mem-bw", "peak-perf"):
        if key in data:
            kwargs[key.replace("-", "_")] = _number(path, key, data[key])
    for key in ("roofline-enabled", "replay-only", "trace-enabled", "track-local-mem"):
        if key in data:
            kwargs[key.replace("-", "_")] = _flag(path, key, data[key])
    system = SystemConfig(**kwargs)
    check_system(system, dims, str(path), allow_zero_endpoint_delay=True)
    return system


def load_memory(path: Path | str) -> MemoryConfig:
    """memory.json (remote memory for MEM_LOAD/MEM_STORE nodes)."""
    path = Path(path)
    data, _ = _load_json_object(path, "remote memory config (memory.json)")
    if "memory-type" not in data:
        raise PipesimError(f"{path}: missing key 'memory-type'; allowed: {', '.join(MEMORY_TYPES)}")
    memory_type = _name(path, "memory-type", data["memory-type"])
    if memory_type == "NO_MEMORY_EXPANSION" or memory_type not in MEMORY_TYPES:
        memory = MemoryConfig(memory_type=memory_type)
    else:
        for key in ("remote-mem-latency", "remote-mem-bw"):
            if key not in data:
                raise PipesimError(f"{path}: missing key '{key}' (required with memory-type {memory_type})")
        memory = MemoryConfig(
            memory_type=memory_type,
            num_nodes=_number(path, "num-nodes", data.get("num-nodes", 1), integer=True),
            num_npus_per_node=_number(path, "num-npus-per-node", data.get("num-npus-per-node", 1), integer=True),
            remote_mem_latency=_number(path, "remote-mem-latency", data["remote-mem-latency"]),
            remote_mem_bw=_number(path, "remote-mem-bw", data["remote-mem-bw"]),
        )
    check_memory(memory, str(path))
    return memory


def load_comm_groups(path: Path | str, npus: int | None = None) -> dict[str, list[int]]:
    """groups.json: {"<id>": [ranks]}, keyed by canonical ids ("01" -> "1", as ASTRA-Sim's stoi reads them).
    With `npus`, every rank must exist in the network."""
    path = Path(path)
    data, repeated = _load_json_object(path, "comm group config")
    if repeated:
        raise PipesimError(f"{path}: group {_show(repeated[0])} appears twice; give each group once")
    groups: dict[str, list[int]] = {}
    spelled: dict[str, str] = {}
    for name, ranks in data.items():
        value = parse_group_id(name)
        if value is None or value == 0:
            raise PipesimError(
                f"{path}: group {_show(name)}: ids must be positive decimal integers up to {INT32_MAX} "
                "('0' and '' mean all NPUs)"
            )
        key = str(value)
        if key in groups:
            raise PipesimError(
                f"{path}: groups {_show(spelled[key])} and {_show(name)} are both group {key} (ASTRA-Sim reads ids "
                "as integers); give each group once"
            )
        if not isinstance(ranks, list):
            raise PipesimError(f"{path}: group {key}: expected a list of ranks, got {_show(ranks)}")
        groups[key] = list(ranks)
        spelled[key] = name
    check_comm_groups(groups, npus, str(path))
    return groups


def load_astra_config(
    system: Path | str,
    network: Path | str,
    memory: Path | str,
    comm_groups: Path | str | None = None,
) -> AstraConfig:
    """The four (or five) files one ASTRA-Sim run takes, checked against each other."""
    network_config = load_network(network)
    system_config = load_system(system, dims=network_config.dims)
    memory_config = load_memory(memory)
    groups = load_comm_groups(comm_groups, npus=network_config.npus) if comm_groups is not None else {}
    return AstraConfig(network=network_config, system=system_config, memory=memory_config, comm_groups=groups)


def check_workload_matches(workload: Workload, config: AstraConfig) -> None:
    """The workload must have one graph per NPU of the network, and its groups must name existing ranks."""
    npus = config.network.npus
    if workload.npus != npus:
        raise PipesimError(
            f"workload has {workload.npus} ranks but network.yml describes {npus} NPUs "
            f"(npus_count {config.network.npus_count}); make the product of npus_count equal {workload.npus} "
            "or write one .et file per NPU"
        )
    for source in (config.comm_groups, workload.comm_groups):
        for name, ranks in source.items():
            for rank in ranks:
                if not 0 <= rank < npus:
                    raise PipesimError(
                        f"comm group {name}: rank {rank} is outside the network's {npus} NPUs (ranks 0..{npus - 1})"
                    )
