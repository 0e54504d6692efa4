"""The `pipesim` console script's first code: SIGINT/SIGTERM handled from the first instant.

Before `astra_driver.cli` is imported (typer, ~60 ms, plus the interpreter's own start), a Ctrl-C printed a
KeyboardInterrupt traceback and a SIGTERM ended pipesim without a line. Nothing has been written that early, so
the handler here prints the same one line as pipesim's own and exits at once with the shell's code; `cli.run`
then takes over (its handlers stop a run cleanly)."""

from __future__ import annotations

import os
import signal

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_now(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"pipesim: interrupted by {name}; stopped (unfinished output files are not written)\n".encode())
    os._exit(128 + signum)


def install_early_handlers() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _exit_now)


def run() -> None:
    install_early_handlers()
    from astra_driver.cli import run as cli_run  # the slow import, now covered

    cli_run()
