"""Writing a file so that no reader, and no later run, ever sees part of it.

A crash, a full disk, a SIGKILL or an interrupted download in the middle of a write must leave the old file or no
file, never a torn one that a resume, a cache lookup or `prepare_data.py` would take for finished. Every file orca-jax
writes for later reading goes through `atomic_path`: the data go to a temporary sibling, are flushed to the disk, and
the sibling is renamed onto the target only when the writer finished without an error (a rename within a directory is
atomic on POSIX file systems; object stores such as GCS have no partial objects to begin with).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from etils import epath


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


@contextlib.contextmanager
def atomic_path(path: epath.PathLike) -> Iterator[epath.Path]:
    """Yields a temporary sibling of `path` to write (by name: np.save, open_memmap, a download); on a clean exit
    it is synced and moved onto `path`, on an error removed. The process id in its name keeps two processes
    writing the same path (a shared cache) out of each other's way."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.part"
    try:
        yield tmp
        if _is_local(tmp):
            descriptor = os.open(os.fspath(tmp), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: epath.PathLike, data: str | bytes) -> None:
    """`path` holds `data` afterwards, or its old content if the write failed."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
