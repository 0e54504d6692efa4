"""What `pipesim validate` does, as a library call: "ok" means replay runs the workload to completion.

1. Read the workload: one `.et` file (its own rank's checks only), or every `<prefix>.<rank>.et`.
2. Comm groups: the file given (--comm-group-configuration), else comm_groups.json beside the traces, else
   none; a pg_name naming no group is a problem, as replay refuses it.
3. The static checks of llm_converter.chakra.validator (ids, deps, cycles, attributes, send/recv pairs, groups,
   collective sequences); with system.json's roofline-enabled also num_ops/tensor_size.
4. Will it finish? With ASTRA-Sim's config at hand (the files given, else network.yml, system.json and
   memory.json beside the traces), a dry run on the builtin engine through its public API (`simulate`): a
   DeadlockError or anything else the engine refuses becomes a problem. Without the config, the validator's
   structural dry run (check_progress), which needs no config but does not model the one communication
   slot per NPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from astra_driver.astra_config import (
    COMM_GROUPS_FILE,
    MEMORY_FILE,
    NETWORK_FILE,
    SYSTEM_FILE,
    AstraConfig,
    load_astra_config,
    load_comm_groups,
)
from llm_converter.chakra.reader import read_graph, read_workload
from llm_converter.chakra.validator import Problem, ValidationReport, validate_graph, validate_workload
from llm_converter.chakra.writer import et_path
from llm_converter.errors import DeadlockError, PipesimError
from llm_converter.graph import Workload


def is_single_et(file_or_prefix: str | Path) -> bool:
    """A path naming one `.et` file (inspect and validate take one, or a workload prefix)."""
    path = Path(file_or_prefix)
    if path.suffix == ".et" and not path.exists() and not et_path(path, 0).is_file():
        # Read as a prefix it said "llm.5.et.0.et: no such file".
        raise PipesimError(f"{path}: no such file (give an .et file, or the prefix of a workload's files)")
    return path.suffix == ".et" and path.is_file()


def comm_groups_for(prefix: str | Path, explicit: Path | None, npus: int) -> dict[str, list[int]]:
    """The groups given, else comm_groups.json beside the traces, else none."""
    if explicit is not None:
        return load_comm_groups(explicit, npus=npus)
    beside = Path(prefix).parent / COMM_GROUPS_FILE
    return load_comm_groups(beside, npus=npus) if beside.is_file() else {}


@dataclass(frozen=True)
class FoundConfig:
    config: AstraConfig
    system_path: Path  # named by replay's endpoint-delay refusal
    where: str  # "given" or "beside the traces"


def astra_config_for(
    prefix: str | Path, system: Path | None, network: Path | None, memory: Path | None
) -> FoundConfig | None:
    """ASTRA-Sim's config from the files given, the rest from beside the traces; None when none is given and
    not all three lie beside them."""
    folder = Path(prefix).parent
    given = {"--system-configuration": system, "--network-configuration": network}
    given["--remote-memory-configuration"] = memory
    names = {"--system-configuration": SYSTEM_FILE, "--network-configuration": NETWORK_FILE}
    names["--remote-memory-configuration"] = MEMORY_FILE
    paths = {flag: path if path is not None else folder / names[flag] for flag, path in given.items()}
    if all(path is None for path in given.values()) and not all(path.is_file() for path in paths.values()):
        return None
    for flag, path in paths.items():
        if given[flag] is None and not path.is_file():
            raise PipesimError(f"{flag}: not given and no {names[flag]} beside the traces ({folder}); give all three")
    config = load_astra_config(
        paths["--system-configuration"], paths["--network-configuration"], paths["--remote-memory-configuration"]
    )
    where = "beside the traces" if all(path is None for path in given.values()) else "given"
    return FoundConfig(config, paths["--system-configuration"], where)


def dry_run(workload: Workload, found: FoundConfig, report: ValidationReport) -> None:
    """Run the workload on the builtin engine; what stops it becomes a problem of `report`."""
    # The engine only when there is a config to run it with; backends holds replay's own refusals.
    from astra_driver.backends import check_endpoint_delay
    from astra_driver.engine import simulate

    try:
        check_endpoint_delay(workload, found.config, 1.0, found.system_path)
        result = simulate(workload, found.config)
    except DeadlockError as exc:
        report.problems.append(Problem(None, (), f"replay would stall (builtin engine dry run): {exc}"))
        return
    except PipesimError as exc:
        report.problems.append(Problem(None, (), f"replay would refuse it (builtin engine dry run): {exc}"))
        return
    finish = max(result.finish_ns, default=0)
    report.note = f"runs to completion on the builtin engine with the ASTRA-Sim config {found.where} ({finish} ns)"


def validate_job(
    file_or_prefix: str | Path,
    comm_groups: Path | None = None,
    system: Path | None = None,
    network: Path | None = None,
    memory: Path | None = None,
    roofline: bool = False,
) -> ValidationReport:
    """Check that replay would load and finish the workload (see the module docstring)."""
    if is_single_et(file_or_prefix):
        for flag, value in (
            ("--comm-group-configuration", comm_groups),
            ("--system-configuration", system),
            ("--network-configuration", network),
            ("--remote-memory-configuration", memory),
        ):
            if value is not None:
                raise PipesimError(
                    f"{flag}: checks a whole workload; give the prefix of {file_or_prefix}, not one file"
                )
        return validate_graph(read_graph(file_or_prefix), roofline=roofline)
    workload = read_workload(file_or_prefix)
    workload.comm_groups = comm_groups_for(file_or_prefix, comm_groups, workload.npus)
    found = astra_config_for(file_or_prefix, system, network, memory)
    if found is None:
        report = validate_workload(workload, roofline=roofline, progress=True)
        report.note = "a structural dry run finishes it (give ASTRA-Sim's config for the engine's dry run)"
        return report
    roofline = roofline or found.config.system.roofline_enabled
    report = validate_workload(workload, roofline=roofline, progress=False)
    if report.ok:
        dry_run(workload, found, report)
    return report
