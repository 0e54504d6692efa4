"""File helpers every layer uses: atomic writes (a reader never sees half a file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llm_converter.errors import PipesimError


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
