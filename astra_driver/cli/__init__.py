"""The `pipesim` command: a typer app whose verbs are thin wrappers over library calls.

Each verb lives in its own module and registers itself on `app`. Every user-caused failure is a
PipesimError: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import importlib
import sys
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


@app.callback()
def _group() -> None:
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
    "workload": "workload_cmd",
    "schedule": "schedule_cmd",
}


def _register_verbs(argv: list[str] | None = None) -> None:
    """Import the verb modules (each adds its commands to `app`): the one named in argv, else all of them."""
    args = sys.argv[1:] if argv is None else argv
    verb = args[0] if args else None
    module = _VERB_MODULES.get(verb or "")
    for name in [module] if module else sorted(set(_VERB_MODULES.values())):
        importlib.import_module(f"astra_driver.cli.{name}")


def main(argv: list[str] | None = None) -> int:
    _register_verbs(argv)
    try:
        app(args=argv, prog_name="pipesim", standalone_mode=False)
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
    sys.exit(main())
