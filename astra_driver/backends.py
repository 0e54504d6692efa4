"""Backends that run one workload with one set of ASTRA-Sim config files and return per-rank timings.

- "builtin": pipesim's embedded engine (astra_driver.engine.simulate), in process.
- "astra-sim": the user's ASTRA-Sim binary (--astra-sim-bin or $ASTRA_SIM_BIN), run with ASTRA-Sim's own
  command line; its stdout is parsed for the per-rank "finished" lines, log.log for the node trace.
- "docker": the same binary inside a user-given image (--docker-image or $PIPESIM_DOCKER_IMAGE), with every
  file it reads or writes bind-mounted at the same absolute path.

ASTRA-Sim exits 0 even when the simulation stalls, so a binary run is only accepted when every rank printed
its "finished" line. Every failure is a one-line PipesimError naming what to fix.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from astra_driver import engine
from astra_driver.astra_config import AstraConfig, load_astra_config, load_network
from astra_driver.astra_output import (
    NodeTime,
    TraceEvent,
    format_finish_line,
    format_trace_line,
    iter_lines,
    node_times_from_trace,
    parse_finish_lines,
    read_lines,
)
from astra_driver.paths import check_output_path
from llm_converter.chakra.reader import count_ranks, prefix_hint, read_workload
from llm_converter.chakra.writer import et_path
from llm_converter.errors import PipesimError
from llm_converter.graph import NodeType, Workload
from llm_converter.io import write_atomic

ASTRA_SIM_BIN_ENV = "ASTRA_SIM_BIN"
DOCKER_IMAGE_ENV = "PIPESIM_DOCKER_IMAGE"
DEFAULT_DOCKER_BINARY = "AstraSim_Analytical_Congestion_Unaware"
# ASTRA-Sim's own default for --logging-folder.
DEFAULT_LOGGING_FOLDER = Path("log")
DEFAULT_TIMEOUT_S = 3600.0
# What the binary backends write into the logging folder, beside ASTRA-Sim's own log.log and err.log.
STDOUT_NAME = "astra-sim.stdout.txt"
STDERR_NAME = "astra-sim.stderr.txt"
TRACE_LOG_NAME = "log.log"
# After a timeout: SIGTERM the process group, then SIGKILL if it is still there after this long.
_KILL_GRACE_S = 2.0
_DOCKER_QUERY_TIMEOUT_S = 60.0
_DOCKER_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ReplayRun:
    """One run, as ASTRA-Sim's command line describes it: the workload prefix and the config files."""

    workload: Path  # prefix: <workload>.<rank>.et for every rank
    system: Path
    network: Path
    memory: Path
    comm_groups: Path | None = None
    # Where logs go; None means ASTRA-Sim's default ./log for the binary backends and no log for "builtin".
    logging_folder: Path | None = None
    timeout_s: float | None = DEFAULT_TIMEOUT_S  # None or 0: no limit
    record_node_times: bool = False
    # ASTRA-Sim's other flags; None means not given (the binary's own default applies).
    injection_scale: float | None = None  # multiplies endpoint-delay
    comm_scale: float | None = None  # read by the binary, unused by its analytical backend
    compute_scale: float | None = None
    num_queues_per_dim: int | None = None
    rendezvous_protocol: str | None = None  # passed verbatim: "true" / "false"
    logging_configuration: Path | None = None  # spdlog configuration file


@dataclass
class BackendResult:
    """Per-rank finish tick and exposed communication (ns); node times when recorded; where the logs are."""

    backend: str
    finish_ns: list[int]
    exposed_comm_ns: list[int]
    node_times: list[list[NodeTime]] | None = None
    stdout_path: Path | None = None
    log_path: Path | None = None

    def finish_lines(self) -> list[str]:
        """ASTRA-Sim's per-rank result lines, rank order."""
        return [
            format_finish_line(rank, finish, exposed)
            for rank, (finish, exposed) in enumerate(zip(self.finish_ns, self.exposed_comm_ns, strict=True))
        ]


class Backend(Protocol):
    name: str

    def run(self, run: ReplayRun) -> BackendResult: ...


@dataclass(frozen=True)
class BackendOptions:
    """What the binary backends need besides the run; None falls back to the environment, then defaults."""

    astra_sim_bin: str | None = None
    docker_image: str | None = None
    docker_binary: str | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


# ---------------------------------------------------------------------------------------------------------
# builtin
# ---------------------------------------------------------------------------------------------------------


class BuiltinBackend:
    """pipesim's embedded engine: reads the same files ASTRA-Sim would and simulates in process."""

    name = "builtin"

    def run(self, run: ReplayRun) -> BackendResult:
        _check_builtin_flags(run)
        if run.logging_folder is not None:
            check_output_path(run.logging_folder, "--logging-folder", folder=True)
        config = load_astra_config(run.system, run.network, run.memory, run.comm_groups)
        npus = config.network.npus
        present = count_ranks(run.workload)
        if present < npus:
            raise PipesimError(
                f"{et_path(run.workload, present)}: no such file; network.yml describes {npus} NPUs "
                f"but the workload prefix has {present} .et files (write one per NPU or fix npus_count)"
                f"{prefix_hint(run.workload) if present == 0 else ''}"
            )
        # Like ASTRA-Sim, read exactly one file per NPU of the network.
        workload = read_workload(run.workload, npus=npus)  # simulate() checks it against the config
        injection_scale = 1.0 if run.injection_scale is None else run.injection_scale
        check_endpoint_delay(workload, config, injection_scale, run.system)
        write_trace = run.logging_folder is not None and config.system.trace_enabled
        result = engine.simulate(
            workload,
            config,
            record_node_times=run.record_node_times or write_trace,
            injection_scale=injection_scale,
        )
        node_times = None
        if result.node_times is not None:
            # Node id order on every backend (the engine lists nodes as they complete).
            node_times = [
                sorted((NodeTime(*entry) for entry in rank_times), key=lambda entry: entry.node_id)
                for rank_times in result.node_times
            ]
        log_path = None
        if run.logging_folder is not None:
            log_path = run.logging_folder / TRACE_LOG_NAME
            write_atomic(
                log_path, _builtin_log(result.finish_ns, result.exposed_comm_ns, node_times if write_trace else None)
            )
        return BackendResult(
            backend=self.name,
            finish_ns=list(result.finish_ns),
            exposed_comm_ns=list(result.exposed_comm_ns),
            node_times=node_times if run.record_node_times else None,
            log_path=log_path,
        )


def check_endpoint_delay(workload: Workload, config: AstraConfig, injection_scale: float, system: Path) -> None:
    """endpoint-delay 0 (after --injection-scale, which multiplies it): ASTRA-Sim runs sends and recvs with it,
    with the same times (they never wait on it), and aborts on an assertion in its event queue as soon as a
    collective runs (an event scheduled at the current tick). Refused only for a workload holding a collective."""
    if int(config.system.endpoint_delay * injection_scale) > 0:
        return
    for graph in workload.graphs:
        for node in graph.nodes:
            if node.type == NodeType.COMM_COLL_NODE:
                scaled = "" if injection_scale == 1.0 else f" (times --injection-scale {injection_scale:g})"
                raise PipesimError(
                    f"{system}: endpoint-delay = {config.system.endpoint_delay}{scaled} is 0 ns and rank "
                    f"{graph.rank} runs collective node {node.id} ({node.name!r}): ASTRA-Sim aborts on an event-"
                    "queue assertion once a collective runs; set endpoint-delay >= 1 (ASTRA-Sim's default is 10); "
                    "only send/recv workloads run with 0"
                )


def _check_builtin_flags(run: ReplayRun) -> None:
    """ASTRA-Sim flags the builtin engine does not model are refused unless they hold the binary's default."""
    if run.injection_scale is not None and not run.injection_scale > 0:
        raise PipesimError(f"--injection-scale {run.injection_scale:g}: must be > 0 (it multiplies endpoint-delay)")
    unmodelled = "the builtin engine does not model it; drop the flag or use --backend astra-sim"
    if run.compute_scale is not None and run.compute_scale != 1.0:
        raise PipesimError(f"--compute-scale {run.compute_scale:g}: {unmodelled}")
    if run.num_queues_per_dim is not None and run.num_queues_per_dim != 1:
        raise PipesimError(f"--num-queues-per-dim {run.num_queues_per_dim}: {unmodelled} (it uses 1)")
    if run.rendezvous_protocol is not None and run.rendezvous_protocol.strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    ):
        raise PipesimError(f"--rendezvous-protocol {run.rendezvous_protocol}: {unmodelled}")
    # --comm-scale is unused by ASTRA-Sim's analytical backend and --logging-configuration only shapes its logs.


def _builtin_log(finish_ns: list[int], exposed_ns: list[int], node_times: list[list[NodeTime]] | None) -> bytes:
    """ASTRA-Sim's log.log bodies: the trace lines in causal order, then the per-rank results."""
    lines: list[str] = []
    if node_times is not None:
        # Within one tick: completions of earlier nodes, then the issues they allowed, then completions of
        # zero-time nodes issued at that tick (a node's issue line always precedes its callback line).
        events: list[tuple[int, int, int, int, TraceEvent]] = []
        for rank, times in enumerate(node_times):
            for entry in times:
                issue = TraceEvent("issue", rank, entry.issue_ns, entry.node_id, entry.name, entry.type)
                callback = TraceEvent("callback", rank, entry.end_ns, entry.node_id, entry.name, entry.type)
                events.append((entry.issue_ns, 1, rank, entry.node_id, issue))
                events.append((entry.end_ns, 0 if entry.end_ns > entry.issue_ns else 2, rank, entry.node_id, callback))
        events.sort(key=lambda item: item[:4])
        lines.extend(format_trace_line(item[4]) for item in events)
    for rank, (finish, exposed) in enumerate(zip(finish_ns, exposed_ns, strict=True)):
        lines.append(format_finish_line(rank, finish, exposed))
    return ("\n".join(lines) + "\n").encode()


# ---------------------------------------------------------------------------------------------------------
# binaries: astra-sim and docker
# ---------------------------------------------------------------------------------------------------------


def astra_sim_arguments(run: ReplayRun, logging_folder: Path, absolute: bool = False) -> list[str]:
    """ASTRA-Sim's flags for this run (README: Command line), in ASTRA-Sim's `--flag=value` form."""

    def path(value: Path) -> str:
        return str(Path(os.path.abspath(value))) if absolute else str(value)

    args = [
        f"--workload-configuration={path(run.workload)}",
        f"--system-configuration={path(run.system)}",
        f"--network-configuration={path(run.network)}",
        f"--remote-memory-configuration={path(run.memory)}",
    ]
    if run.comm_groups is not None:
        args.append(f"--comm-group-configuration={path(run.comm_groups)}")
    for flag, value in (
        ("--injection-scale", run.injection_scale),
        ("--comm-scale", run.comm_scale),
        ("--compute-scale", run.compute_scale),
        ("--num-queues-per-dim", run.num_queues_per_dim),
        ("--rendezvous-protocol", run.rendezvous_protocol),
    ):
        if value is not None:
            args.append(f"{flag}={_flag_number(value)}" if isinstance(value, float) else f"{flag}={value}")
    if run.logging_configuration is not None:
        args.append(f"--logging-configuration={path(run.logging_configuration)}")
    args.append(f"--logging-folder={path(logging_folder)}")
    return args


def _flag_number(value: float) -> str:
    """A float flag value as the binary must read it: integral values bare (2), others exactly (repr: 1.0000001,
    not :g's six significant digits, which would hand the binary another scale than the builtin engine uses)."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _check_inputs(run: ReplayRun) -> None:
    """Fail before starting a process when a config file is missing (ASTRA-Sim would abort less clearly)."""
    files = [("--system-configuration", run.system), ("--network-configuration", run.network)]
    files.append(("--remote-memory-configuration", run.memory))
    if run.comm_groups is not None:
        files.append(("--comm-group-configuration", run.comm_groups))
    if run.logging_configuration is not None:
        files.append(("--logging-configuration", run.logging_configuration))
    for flag, path in files:
        if not Path(path).is_file():
            raise PipesimError(f"{path}: no such file (given as {flag})")
    first = Path(f"{run.workload}.0.et")
    if not first.is_file():
        raise PipesimError(f"{first}: no such file (--workload-configuration names the prefix before .<rank>.et)")


def _system_value(system: Path, key: str) -> object:
    """One key of system.json, read leniently (the binary decides what it accepts); None when unreadable."""
    try:
        data = json.loads(Path(system).read_text())
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def _trace_enabled(system: Path) -> bool:
    """Whether system.json asks ASTRA-Sim for the per-node trace lines."""
    return _system_value(system, "trace-enabled") in (1, True)


def _abort_hint(run: ReplayRun) -> str:
    """What an abort most likely means when the config says so: endpoint-delay 0 aborts once a collective runs."""
    delay = _system_value(run.system, "endpoint-delay")
    scale = 1.0 if run.injection_scale is None else run.injection_scale
    if isinstance(delay, int | float) and not isinstance(delay, bool) and int(delay * scale) == 0:
        return (
            f" (endpoint-delay is {delay:g} in {run.system}: ASTRA-Sim aborts on it once a collective runs; "
            "set it >= 1, 10 is the default)"
        )
    return ""


def _expected_ranks(run: ReplayRun) -> int:
    """How many ranks must print "finished": the network's NPU count (ASTRA-Sim reads one .et per NPU)."""
    try:
        return load_network(run.network).npus
    except PipesimError:
        # The binary accepted a file pipesim's loader rejects; fall back to the trace files present.
        return count_ranks(run.workload)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Terminate the process and everything it started (it leads its own session/process group)."""
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass(frozen=True)
class _Execution:
    returncode: int
    stdout_path: Path
    stderr_path: Path


def _stop(process: subprocess.Popen[bytes], stop_extra: Callable[[], None] | None) -> None:
    """Stop what a run started: `stop_extra` (the container: killing the docker client does not stop it), the
    process group, then `stop_extra` again (a container the daemon was still creating when the client died)."""
    if stop_extra is not None:
        stop_extra()
    _kill_group(process)
    if stop_extra is not None:
        stop_extra()


def _execute(
    command: list[str],
    logging_folder: Path,
    timeout_s: float | None,
    what: str,
    stop_extra: Callable[[], None] | None = None,
) -> _Execution:
    """Run `command` with stdout/stderr to files in the logging folder; stop it on a timeout, Ctrl-C or SIGTERM
    (the CLI turns both signals into an exception, which lands here)."""
    try:
        logging_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipesimError(
            f"{logging_folder}: cannot create the logging folder ({exc.strerror}); fix --logging-folder"
        ) from None
    stdout_path = logging_folder / STDOUT_NAME
    stderr_path = logging_folder / STDERR_NAME
    limit = timeout_s if timeout_s else None
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
            )
        except PermissionError:
            raise PipesimError(f"{command[0]}: not executable (chmod +x it, or point {what} at the binary)") from None
        except OSError as exc:
            raise PipesimError(
                f"{command[0]}: cannot start ({exc.strerror}); point {what} at an ASTRA-Sim binary"
            ) from None
        try:
            returncode = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            _stop(process, stop_extra)
            raise PipesimError(
                f"{command[0]}: still running after the {timeout_s:g} s timeout, killed; raise --timeout "
                f"or check {stdout_path}"
            ) from None
        except BaseException:
            # Ctrl-C, SIGTERM or any other interruption: never leave the simulator running behind us.
            _stop(process, stop_extra)
            raise
    return _Execution(returncode, stdout_path, stderr_path)


def _failure_message(execution: _Execution) -> str:
    """The last line the process wrote to stderr (else stdout): an assertion, `terminate called ...`, ..."""
    last = _last_line(execution.stderr_path) or _last_line(execution.stdout_path)
    return f": {last}" if last else " (it printed nothing)"


def _collect(
    backend: str,
    program: str,
    run: ReplayRun,
    execution: _Execution,
    logging_folder: Path,
) -> BackendResult:
    """Turn a finished process into a result, or into the one-line error that says what went wrong."""
    code = execution.returncode
    if code == 255:
        raise PipesimError(
            f"{program} rejected its options (exit 255){_failure_message(execution)}; see {execution.stderr_path}"
        )
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise PipesimError(f"{program} was killed by {name}{_failure_message(execution)}; see {execution.stderr_path}")
    if code != 0:
        kind = "aborted" if code == 134 else "failed"
        hint = _abort_hint(run) if code == 134 else ""
        raise PipesimError(
            f"{program} {kind} (exit {code}){_failure_message(execution)}{hint}; see {execution.stderr_path}"
        )
    npus = _expected_ranks(run)
    finished = parse_finish_lines(read_lines(execution.stdout_path))
    missing = [rank for rank in range(npus) if rank not in finished]
    if missing:
        shown = ", ".join(str(rank) for rank in missing[:16]) + (", ..." if len(missing) > 16 else "")
        raise PipesimError(
            f"{program} exited 0 but rank(s) {shown} of {npus} never printed 'finished': the simulation stalled "
            f"(unmatched send/recv, a send/recv size mismatch or a dependency cycle); see {execution.stdout_path}"
        )
    log_path = logging_folder / TRACE_LOG_NAME
    node_times = None
    if run.record_node_times:
        if not _trace_enabled(run.system):
            raise PipesimError(
                f'{run.system}: trace-enabled is not set; add "trace-enabled": 1 to record node times with the '
                f"{backend} backend"
            )
        node_times = node_times_from_trace(iter_lines(log_path), npus, log_path)
    return BackendResult(
        backend=backend,
        finish_ns=[finished[rank].finish_ns for rank in range(npus)],
        exposed_comm_ns=[finished[rank].exposed_comm_ns for rank in range(npus)],
        node_times=node_times,
        stdout_path=execution.stdout_path,
        log_path=log_path if log_path.is_file() else None,
    )


def _clear_previous_logs(logging_folder: Path) -> None:
    check_output_path(logging_folder, "--logging-folder", folder=True)
    # A stale log.log from an earlier run would be parsed as this run's trace (ASTRA-Sim appends to it).
    for name in (TRACE_LOG_NAME, STDOUT_NAME, STDERR_NAME):
        try:
            (logging_folder / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PipesimError(f"{logging_folder / name}: cannot remove the old log ({exc.strerror})") from None


def resolve_astra_sim_bin(explicit: str | None, env: dict[str, str]) -> Path:
    """The user's ASTRA-Sim binary: --astra-sim-bin, else $ASTRA_SIM_BIN; a bare name is looked up on PATH."""
    given = explicit or env.get(ASTRA_SIM_BIN_ENV)
    if not given:
        raise PipesimError(
            f"no ASTRA-Sim binary: pass --astra-sim-bin PATH or set {ASTRA_SIM_BIN_ENV} "
            f"(e.g. build/astra_analytical/build/bin/{DEFAULT_DOCKER_BINARY})"
        )
    source = "--astra-sim-bin" if explicit else f"${ASTRA_SIM_BIN_ENV}"
    if os.sep not in given and not Path(given).exists():
        found = shutil.which(given, path=env.get("PATH"))
        if found is None:
            raise PipesimError(f"{given}: not found on PATH (given as {source}); give the binary's full path")
        return Path(found)
    path = Path(given)
    if not path.exists():
        raise PipesimError(f"{path}: no such file (given as {source}); point it at the ASTRA-Sim binary")
    if path.is_dir():
        raise PipesimError(f"{path}: is a directory (given as {source}); point it at the ASTRA-Sim binary inside it")
    if not os.access(path, os.X_OK):
        raise PipesimError(f"{path}: not executable (given as {source}); chmod +x it")
    return path


class AstraSimBackend:
    """The user's ASTRA-Sim binary, run exactly as on its own command line."""

    name = "astra-sim"

    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    def command(self, run: ReplayRun) -> list[str]:
        binary = resolve_astra_sim_bin(self.options.astra_sim_bin, self.options.env)
        return [str(binary), *astra_sim_arguments(run, run.logging_folder or DEFAULT_LOGGING_FOLDER)]

    def run(self, run: ReplayRun) -> BackendResult:
        command = self.command(run)
        _check_inputs(run)
        logging_folder = run.logging_folder or DEFAULT_LOGGING_FOLDER
        _clear_previous_logs(logging_folder)
        execution = _execute(command, logging_folder, run.timeout_s, "--astra-sim-bin")
        return _collect(self.name, command[0], run, execution, logging_folder)


# Folders of the image's own system: a host folder mounted over one would hide the image's binaries, libraries or
# users. Their subfolders may be mounted (a workload under /usr/share or /dev/shm hides nothing the binary needs),
# except inside the kernel's own file systems.
_SYSTEM_FOLDERS = frozenset(
    Path(p)
    for p in (
        "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc", "/run",
        "/sbin", "/sys", "/usr", "/usr/bin", "/usr/lib", "/usr/lib64", "/usr/libexec", "/usr/local",
        "/usr/local/bin", "/usr/local/lib", "/usr/sbin", "/usr/share", "/var", "/var/lib",
    )
)  # fmt: skip
_KERNEL_FOLDERS = (Path("/proc"), Path("/sys"))
# The line docker adds after its real error message on exit 125.
_DOCKER_HELP_HINT = "run 'docker run --help'"


def _link_folders(path: Path) -> list[Path]:
    """The folder of `path` and of every hop of its symlink chain (absolute, as written): each must be mounted,
    at its own path, for the link to resolve inside the container as it does outside."""
    folders: list[Path] = []
    current = Path(os.path.abspath(path))
    for _ in range(40):  # Linux follows at most 40 links
        folders.append(current.parent)
        if not current.is_symlink():
            break
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return folders


def _mount_option(folder: Path) -> str:
    """`--mount` (not `-v`, whose `SRC:DST` spec cannot hold a path with `:`) binding `folder` at its own path.
    docker reads the value as one CSV record: a path with `,` or `"` is quoted as CSV quotes it."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["type=bind", f"source={folder}", f"target={folder}"])
    return f"--mount={buffer.getvalue()}"


def _docker_error_line(execution: _Execution) -> str:
    """docker's own error on exit 125: the last stderr line that is not its `Run 'docker run --help'` hint."""
    try:
        lines = [line.strip() for line in execution.stderr_path.read_text(errors="replace").splitlines()]
    except OSError:
        lines = []
    lines = [line for line in lines if line and not line.lower().startswith(_DOCKER_HELP_HINT)]
    return f": {lines[-1]}" if lines else " (it printed nothing)"


def _docker_query_failure(reason: str) -> PipesimError | None:
    """A `docker` query that failed for a reason other than the image: no daemon, or no right to its socket."""
    lowered = reason.lower()
    if "no such image" in lowered:
        return None
    if "permission denied" in lowered:
        return PipesimError(
            f"docker: no permission to talk to the daemon ({reason}); add your user to the docker group "
            "(sudo usermod -aG docker $USER, then log in again) or fix DOCKER_HOST"
        )
    if "cannot connect" in lowered or "daemon running" in lowered or "connection refused" in lowered:
        return PipesimError(f"docker: the daemon is not reachable ({reason}); start dockerd or fix DOCKER_HOST")
    return None


class DockerBackend:
    """ASTRA-Sim inside a container image: files mounted at their own absolute paths, run as the calling user.

    `docker run --init`: the binary is not PID 1, so an abort reads 134 as it does natively (as PID 1 the kernel
    drops SIGABRT's default action and the exit reads 139); the container is named so it can be killed when
    pipesim is stopped, and removed when it exits (--rm).
    """

    name = "docker"

    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    def docker(self) -> str:
        found = shutil.which("docker", path=self.options.env.get("PATH"))
        if found is None:
            raise PipesimError(
                "docker: not found on PATH; install Docker, or use --backend astra-sim with a local binary"
            )
        return found

    def image(self) -> str:
        image = self.options.docker_image or self.options.env.get(DOCKER_IMAGE_ENV)
        if not image:
            raise PipesimError(f"no docker image: pass --docker-image IMAGE or set {DOCKER_IMAGE_ENV}")
        return image

    def binary(self) -> str:
        return self.options.docker_binary or DEFAULT_DOCKER_BINARY

    def mounted_folders(self, run: ReplayRun) -> list[Path]:
        """Every folder the simulator reads from or writes to, and every folder a symlink among its inputs leads
        through, mounted at the same path inside the container so the flags need no rewriting."""
        folders = {Path(os.path.abspath(run.logging_folder or DEFAULT_LOGGING_FOLDER))}
        inputs = [run.system, run.network, run.memory, run.comm_groups, run.logging_configuration]
        inputs += [et_path(run.workload, rank) for rank in range(max(1, count_ranks(run.workload)))]
        for path in inputs:
            if path is not None:
                folders.update(_link_folders(Path(path)))
        for folder in folders:
            if folder in _SYSTEM_FOLDERS or any(top in folder.parents for top in _KERNEL_FOLDERS):
                raise PipesimError(
                    f"{folder}: the docker backend mounts the folders of its files at their own paths and this one "
                    "would hide the image's own; move the workload and config files (or what they link to) elsewhere"
                )
        return sorted(folders)

    def command(self, run: ReplayRun, docker: str, image: str, container: str) -> list[str]:
        logging_folder = Path(os.path.abspath(run.logging_folder or DEFAULT_LOGGING_FOLDER))
        mounts = [_mount_option(folder) for folder in self.mounted_folders(run)]
        user = [f"--user={os.getuid()}:{os.getgid()}"] if hasattr(os, "getuid") else []
        return [
            docker,
            "run",
            "--rm",
            "--init",
            f"--name={container}",
            *user,
            *mounts,
            f"--workdir={logging_folder}",
            image,
            self.binary(),
            *astra_sim_arguments(run, logging_folder, absolute=True),
        ]

    def _check_image(self, docker: str, image: str) -> None:
        try:
            probe = subprocess.run(
                [docker, "image", "inspect", image],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_DOCKER_QUERY_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise PipesimError(
                f"docker image inspect {image}: no answer in {_DOCKER_QUERY_TIMEOUT_S:g} s; start the docker daemon"
            ) from None
        except OSError as exc:
            raise PipesimError(f"{docker}: cannot start ({exc.strerror}); install Docker or fix PATH") from None
        if probe.returncode != 0:
            detail = probe.stderr.decode(errors="replace").strip().splitlines()
            reason = detail[-1] if detail else "not found"
            failure = _docker_query_failure(reason)
            if failure is not None:
                raise failure
            raise PipesimError(
                f"docker image {image}: not found locally ({reason}); docker pull {image} or docker build it"
            )

    def _stop_container(self, docker: str, container: str) -> None:
        # `docker rm -f` kills and removes it; "No such container" (already gone, or never created) is fine. In
        # its own session: a second Ctrl-C at the terminal (sent to the whole foreground group) cannot kill it.
        try:
            subprocess.run(
                [docker, "rm", "-f", container],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_DOCKER_STOP_TIMEOUT_S,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired):
            pass

    def run(self, run: ReplayRun) -> BackendResult:
        docker = self.docker()
        image = self.image()
        _check_inputs(run)
        self._check_image(docker, image)
        container = f"pipesim-{uuid.uuid4().hex[:12]}"
        command = self.command(run, docker, image, container)
        logging_folder = run.logging_folder or DEFAULT_LOGGING_FOLDER
        _clear_previous_logs(logging_folder)
        execution = _execute(
            command,
            logging_folder,
            run.timeout_s,
            "--docker-image",
            stop_extra=lambda: self._stop_container(docker, container),
        )
        code = execution.returncode
        program = f"{self.binary()} in {image}"
        if code == 127:
            raise PipesimError(
                f"{self.binary()}: not found inside image {image}; set --docker-binary to its path in the image"
            )
        if code == 126:
            raise PipesimError(f"{self.binary()}: not executable inside image {image}; fix --docker-binary")
        if code == 125:
            raise PipesimError(f"docker run {image} failed{_docker_error_line(execution)}; see {execution.stderr_path}")
        if code > 128 and code != 134:
            # The init process reports a binary killed by signal N as 128 + N (134, SIGABRT, is an abort).
            try:
                name = signal.Signals(code - 128).name
            except ValueError:
                name = ""
            if name:
                raise PipesimError(
                    f"{program} was killed by {name} (exit {code}){_failure_message(execution)}; "
                    f"see {execution.stderr_path}"
                )
        return _collect(self.name, program, run, execution, logging_folder)


# ---------------------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------------------

BACKENDS: dict[str, Callable[[BackendOptions], Backend]] = {
    "builtin": lambda options: BuiltinBackend(),
    "astra-sim": AstraSimBackend,
    "docker": DockerBackend,
}


def get_backend(name: str, options: BackendOptions | None = None) -> Backend:
    factory = BACKENDS.get(name)
    if factory is None:
        raise PipesimError(f"--backend: unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return factory(options or BackendOptions())


def replay(run: ReplayRun, backend_name: str = "builtin", options: BackendOptions | None = None) -> BackendResult:
    """Run `run` on the named backend: what `pipesim replay` does, without printing."""
    return get_backend(backend_name, options).run(run)
