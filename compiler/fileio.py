"""Atomic file output: a failed write leaves no partial file behind."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputPathError


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Resolve ``path`` and make sure its directory exists and is writable."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputPathError(f"output path '{path}' is a directory; give a file name")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write '{path}': directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write '{path}': directory '{parent}' is not writable")
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside ``path``, on the same file system so ``os.replace`` is atomic.

    The caller writes its files there, then moves them into place with ``os.replace``. Whatever
    happens, the scratch directory is removed.
    """
    path = check_writable_dir(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise OutputPathError(f"cannot write '{path}': {e.strerror or e}") from e
    try:
        yield tmp
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    path = check_writable_dir(path)
    with atomic_dir(path) as tmp:
        part = tmp / path.name
        part.write_text(text)
        os.replace(part, path)
    return path
