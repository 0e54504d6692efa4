"""File helpers every layer uses: atomic writes of files and folders (a reader never sees half of one)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from llm_converter.errors import PipesimError

T = TypeVar("T")


def write_atomic(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file. `data` may be
    chunks (a generator), so a large file is never whole in memory."""
    write_all_or_none([(path, data)])


def write_all_or_none(files: Iterable[tuple[Path, bytes | Iterable[bytes]]]) -> list[Path]:
    """Write each (path, data) to a temporary file beside its path, then rename them all, with SIGINT and SIGTERM
    held back during the renames: an error or a signal before them leaves none of the files (and no temporary
    one), so the ranks of a workload never mix two runs. `files` may be a generator (one encoded file at a time)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            staged.append((Path(path), _write_temporary(Path(path), data)))
        with signals_held():
            for path, temporary in staged:
                try:
                    os.replace(temporary, path)
                except OSError as exc:
                    raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path") from None
    except BaseException:
        for _, temporary in staged:
            if os.path.lexists(temporary):
                os.unlink(temporary)
        raise
    return [path for path, _ in staged]


def _write_temporary(path: Path, data: bytes | Iterable[bytes]) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path") from None
    # The name is chosen before the file exists, so however this is interrupted the except below can remove it
    # (tempfile.mkstemp creates the file before it returns its name: a signal in between leaked it).
    temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}"
    try:
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        except OSError as exc:
            raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path") from None
        try:
            with os.fdopen(fd, "wb") as handle:
                if isinstance(data, bytes | bytearray | memoryview):
                    handle.write(data)
                else:
                    for chunk in data:
                        handle.write(chunk)
        except OSError as exc:
            raise PipesimError(f"{path}: cannot write ({exc.strerror}); choose another path or free space") from None
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    return temporary


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are raised again when it ends, to the handlers in place
    before it (pipesim's: Interrupted). Handlers, not a signal mask: with other threads running, a process signal
    goes to any thread that does not block it and Python runs its handler in the main thread anyway."""
    previous = {sig: signal.getsignal(sig) for sig in _HELD_SIGNALS}
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield  # handlers can only be changed (and only run) in the main thread; None: set outside Python
        return
    caught: list[int] = []
    for sig in _HELD_SIGNALS:
        signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


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
    # Signals wait while the staging folder is made and while it is swapped in: mkdtemp creates the folder before
    # it returns its name, and the swap moves the previous folder aside first (a signal there left it aside).
    staging = None
    try:
        with signals_held():  # a signal held here arrives once the name is assigned, inside this try
            staging = new_staging_folder(destination)
        result = write(staging)
        with signals_held():
            replace_folder(staging, destination)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return result
