"""The `pipesim` command: a typer app whose verbs are thin wrappers over library calls.

Each verb lives in its own module and registers itself on `app`. Every user-caused failure is a
PipesimError: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from pathlib import Path

import typer

from llm_converter.errors import PipesimError

app = typer.Typer(
    name="pipesim",
    help="LLM serving and pipeline-parallel training as Chakra traces, simulated with ASTRA-Sim semantics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def package_version() -> str:
    """pipesim's installed version (importlib.metadata), or "unknown" when run from a tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipesim")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pipesim {package_version()}")
        raise typer.Exit()


@app.callback()
def _group(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """LLM serving and pipeline-parallel training as Chakra traces, simulated with ASTRA-Sim semantics."""
    # A callback keeps the app a group of verbs even when only one verb module is imported (see below).


# Verb -> the module that registers it. Importing only the verb asked for keeps start-up short: `replay` does
# not need pydantic or the model catalog (0.2 s of a 0.45 s start).
_VERB_MODULES = {
    "trace": "trace_cmd",
    "convert": "trace_cmd",
    "inspect": "inspect_cmd",
    "validate": "inspect_cmd",
    "replay": "replay_cmd",
    "train": "train_cmd",
    "workload": "workload_cmd",
    "schedule": "schedule_cmd",
    "run": "serving_cmd",
    "simulate": "serving_cmd",
    "sweep": "sweep_cmd",
    "capacity": "sweep_cmd",
    "report": "report_cmd",
}


def _register_verbs(argv: list[str] | None = None) -> None:
    """Import the verb modules (each adds its commands to `app`): the one named in argv, else all of them."""
    args = sys.argv[1:] if argv is None else argv
    verb = args[0] if args else None
    module = _VERB_MODULES.get(verb or "")
    for name in [module] if module else sorted(set(_VERB_MODULES.values())):
        importlib.import_module(f"astra_driver.cli.{name}")


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached pipesim. A BaseException, so no `except Exception` swallows it and click does not
    turn it into an exit code: it unwinds the verb (atomic writes leave nothing half-written; backends stop the
    process or container they started) up to main(), which prints one line."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _raise_interrupted(signum: int, frame: object) -> None:
    # The first signal unwinds; later ones are ignored so they cannot cut short the cleanup it started.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def _install_stop_handlers() -> dict[int, object] | None:
    """Route SIGINT and SIGTERM to Interrupted (without this SIGTERM kills pipesim outright, leaving a simulator
    or container it started running; typer turns Ctrl-C into an exit code that was dropped). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _raise_interrupted)
    return previous


def _restore_handlers(previous: dict[int, object] | None) -> None:
    if previous is not None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    # Handlers first: importing a verb module is most of a short run's time (pydantic, the catalog), and a
    # signal there printed a KeyboardInterrupt traceback (SIGINT) or ended pipesim with no line (SIGTERM).
    previous = _install_stop_handlers()
    try:
        _register_verbs(argv)
        return _main(argv)
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"pipesim: interrupted by {name}; stopped (unfinished output files are not written)", file=sys.stderr)
        return 128 + exc.signum  # what a shell reports for a process the signal ended
    finally:
        _restore_handlers(previous)


_built: tuple[tuple[int, int], object] | None = None


def _click_command():  # noqa: ANN202 - typer's click (or bundled click) group
    """`app` as the click command typer builds, built once per set of registered verbs: building it inspects every
    verb's signature (0.07 s with all verbs registered), which tests calling main() hundreds of times paid on each
    call. Calling it is what `app(...)` does, minus typer's pretty-exception hook (disabled here anyway)."""
    global _built
    key = (len(app.registered_commands), len(app.registered_groups))
    if _built is None or _built[0] != key:
        _built = (key, typer.main.get_command(app))
    return _built[1]


def _main(argv: list[str] | None) -> int:
    try:
        # Without standalone mode click returns (does not raise) the code of a typer.Exit: Ctrl-C caught by
        # typer comes back as 130, which was dropped and read as success.
        code = _click_command()(args=argv, prog_name="pipesim", standalone_mode=False)
    except PipesimError as exc:
        print(f"pipesim: error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("pipesim: aborted", file=sys.stderr)
        return 130
    except OSError as exc:
        # The file system refused something no check foresaw (a folder where a file goes, permissions, a full
        # disk): still the user's environment, so one line naming the path rather than a traceback.
        print(f"pipesim: error: {_os_error_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Usage errors (missing flag, bad value) come from click, or from the copy of click typer bundles:
        # both carry format_message() and an exit code. Printed on one line like every other error, except
        # the bare command, which prints the help.
        format_message = getattr(exc, "format_message", None)
        if not callable(format_message) or not isinstance(getattr(exc, "exit_code", None), int):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
            return 2
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "pipesim"
        message = " ".join(str(format_message()).split()).rstrip(".")
        print(f"pipesim: error: {message}; see '{command} --help'", file=sys.stderr)
        return 2
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            print("pipesim: interrupted; stopped (unfinished output files are not written)", file=sys.stderr)
        return code
    return 0


def _os_error_message(exc: OSError) -> str:
    # os.replace(tmp, path) reports the hidden temporary file first: name the destination.
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    reason = exc.strerror or str(exc)
    if name is None:
        return f"{reason}; check the paths given and their permissions"
    if Path(str(name)).name.startswith("."):
        name = Path(str(name)).parent
    return f"{name}: {reason}; check that path (a file where a folder goes or the reverse, permissions, free space)"


def run() -> None:
    """The console script. Once main() returns, its outputs are written: a signal during the interpreter's teardown
    (a second or more after a big trace or convert) ended pipesim by the signal, with no line, after a complete run.
    Ignoring both signals before main() makes main() restore exactly that when it returns."""
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(main())
