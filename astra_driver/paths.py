"""Checks on where a command will write, made before any work so a bad path fails fast and leaves nothing."""

from __future__ import annotations

import os
from pathlib import Path

from llm_converter.errors import PipesimError


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
