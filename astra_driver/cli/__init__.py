"""The `pipesim` command: a typer app whose verbs are thin wrappers over library calls.

Each verb lives in its own module and registers itself on `app`. Every user-caused failure is a
PipesimError: printed as one line on stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import sys

import typer

from llm_converter.errors import PipesimError

app = typer.Typer(
    name="pipesim",
    help="LLM serving and pipeline-parallel training as Chakra traces, simulated with ASTRA-Sim semantics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_verbs() -> None:
    # Imported for their side effect of adding commands to `app`.
    from astra_driver.cli import inspect_cmd, replay_cmd, trace_cmd  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    _register_verbs()
    try:
        app(args=argv, standalone_mode=False)
    except PipesimError as exc:
        print(f"pipesim: error: {exc}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("pipesim: aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Usage errors (missing flag, bad value) come from click, or from the copy of click typer bundles:
        # both carry show() and an exit code. Print click's own short message and exit 2 like any user error.
        show = getattr(exc, "show", None)
        if callable(show) and isinstance(getattr(exc, "exit_code", None), int):
            show()
            return 2
        raise
    return 0


def run() -> None:
    sys.exit(main())
