"""File helpers every layer uses: atomic writes of files and folders (a reader never sees half of one)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from llm_converter.errors import PipesimError

T = TypeVar("T")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path or free space") from None
        raise


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, two system calls per file otherwise.
_UMASK = _read_umask()


def new_staging_folder(destination: Path) -> Path:
    """A fresh hidden folder beside `destination` to fill before `replace_folder` swaps it into place."""
    parent = destination.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipesimError(f"{parent}: cannot create the output folder ({exc.strerror}); choose another path") from None
    if destination.exists() and not destination.is_dir():
        raise PipesimError(f"{destination}: exists and is not a folder; choose another path or remove it")
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.new-", dir=parent))
    staging.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; the output is an ordinary folder
    return staging


def replace_folder(staging: Path, destination: Path) -> None:
    """Swap a filled staging folder into `destination`; a previous folder there is put back if the swap fails."""
    old = None
    try:
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            os.replace(destination, old / destination.name)
        os.replace(staging, destination)
    except BaseException:
        if old is not None and not destination.exists():
            os.replace(old / destination.name, destination)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_folder_atomically(destination: Path, write: Callable[[Path], T]) -> T:
    """Run `write(folder)` on a staging folder, then swap it into `destination`: a reader (or a failed or
    interrupted run) never leaves half a folder; a failure leaves the previous one untouched."""
    staging = new_staging_folder(destination)
    try:
        result = write(staging)
        replace_folder(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result
