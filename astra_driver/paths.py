"""Checks on where a command will write, made before any work so a bad path fails fast and leaves nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from llm_converter.errors import PipesimError, name_first


def check_output_path(path: Path | str, flag: str, folder: bool = False) -> Path:
    """`path` (a file, or a folder when `folder`) can be written: it is not the wrong kind of thing, and its
    nearest existing ancestor is a writable folder. Creates nothing."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise PipesimError(f"{path}: exists and is not a folder (given as {flag}); remove it or choose another")
        if not folder and path.is_dir():
            raise PipesimError(f"{path}: is a folder (given as {flag}); give the path of a file")
        target = path if folder else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
    if target.exists() and not target.is_dir():
        raise PipesimError(
            f"{target}: is a file, so {path} cannot be created under it (given as {flag}); choose another path"
        )
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        raise PipesimError(f"{target}: not writable (given as {flag}); choose a folder you can write to")
    return path


def check_replaceable_folder(path: Path | str, flag: str, is_output: Callable[[str], bool]) -> None:
    """A folder the command replaces whole holds nothing but a previous run's outputs (names `is_output` accepts):
    anything else there would be deleted with it, so it is refused, naming the first few entries."""
    path = Path(path)
    if not path.is_dir():
        return
    foreign = sorted(entry.name for entry in path.iterdir() if not is_output(entry.name))
    if foreign:
        raise PipesimError(
            f"{path}: holds files this command did not write ({name_first(foreign, 3)}), and the folder is replaced "
            f"whole (given as {flag}); choose a new or empty folder, or remove them"
        )
