"""Atomic file writes: the one writer every module uses (checkpoints, mask nets, the image cache, task
files, Label Studio's database template).

A file is written to a temporary dot-file in the same folder (``.<name>.<host>-<pid>.<random>.tmp``,
which ``CheckpointStore`` recognises as stale once its writer is gone) and renamed over the target, so a
reader never sees half a file. ``durable=True`` also fsyncs the file and its folder (checkpoints and
pointers must survive a crash; caches can always be made again). ``overwrite=False`` links instead of
renaming, so a finished file is never clobbered (``FileExistsError``).
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def host_tag() -> str:
    """This machine's name as it appears in temporary file names (for the stale-file sweep)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]


@contextmanager
def atomic_path(path: Path, *, durable: bool = False, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path``: whatever the block writes there becomes ``path`` when it ends
    without an exception; otherwise the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{host_tag()}-{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], *, durable: bool = True,
                 overwrite: bool = True) -> None:
    """Call ``write(f)`` on a binary file that becomes ``path`` atomically (``atomic_path``)."""
    with atomic_path(path, durable=durable, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
        write(f)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """``data`` as the whole of ``path``, atomically (no fsync unless ``durable``)."""
    atomic_write(path, lambda f: f.write(data), durable=durable)


def _fsync(path: Path) -> None:
    """fsync a file or folder; a filesystem that cannot is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
