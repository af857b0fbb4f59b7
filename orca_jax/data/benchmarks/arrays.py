"""Lazy arrays over benchmark files: split arrays that read only the rows a batch asks for.

Every class here is an `orca_jax.data.types.LazyArray` (the split-array protocol: it reads each distinct row once,
in ascending order), so a benchmark of any size runs: PSICOV's inputs would be ~200 GB as float32, FSD50K's and
PDEBench's several GB.

Readers hold file names, not open handles, so they pickle to grain's worker processes; each process opens a file on
its first read.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orca_jax.atomic import atomic_path
from orca_jax.data.types import LazyArray


class Mapped(LazyArray):
    """`fn(base[rows])` for each batch of rows: per-example preprocessing (scaling, normalisation, layout) applied
    when a batch is read instead of to a copy of the whole split."""

    def __init__(self, base: Any, fn: Callable[[np.ndarray], np.ndarray]):
        self.base, self.fn = base, fn
        example = fn(np.asarray(base[np.arange(min(len(base), 1))]))
        self.shape, self.dtype = (len(base), *example.shape[1:]), example.dtype

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return self.fn(np.asarray(self.base[rows]))


class Concat(LazyArray):
    """Arrays of the same example shape, one after the other (e.g. a published train and validation split that the
    official code trains on together)."""

    def __init__(self, parts: Sequence[Any]):
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"Cannot concatenate arrays of example shapes {sorted(shapes)}.")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), *shapes.pop())
        self.dtype = np.result_type(*(p.dtype for p in parts))

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for k in np.unique(part):
            here = part == k
            out[here] = np.asarray(self.parts[k][rows[here] - self.starts[k]])
        return out


class PerExample(LazyArray):
    """Row i is `read(i)`, an array of `example_shape`: one file (or HDF5 group) per example."""

    def __init__(self, count: int, read: Callable[[int], np.ndarray], example_shape: tuple[int, ...], dtype):
        self.read, self.shape, self.dtype = read, (count, *example_shape), np.dtype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k, row in enumerate(rows):
            out[k] = self.read(int(row))
        return out


class H5File:
    """An HDF5 file opened on first use in each process (h5py handles do not pickle)."""

    def __init__(self, path: Path):
        self.path, self._file = Path(path), None

    def __getstate__(self):
        return {"path": self.path, "_file": None}

    def __getitem__(self, key: str):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file[key]


class H5Rows(LazyArray):
    """Examples `rows` of an HDF5 file through `select(file, sorted_distinct_file_rows) -> [n, *example_shape]`
    (which datasets, which time step, which subsampling: h5py reads only that hyperslab)."""

    def __init__(self, file: H5File, rows: np.ndarray, select: Callable[[H5File, np.ndarray], np.ndarray]):
        self.file, self.rows, self.select = file, np.asarray(rows, np.int64), select
        example = np.asarray(select(file, self.rows[:1]))
        self.shape, self.dtype = (len(self.rows), *example.shape[1:]), example.dtype

    def _read(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.select(self.file, self.rows[rows]))


def npy_memmap(path: Path, offset: int = 0) -> np.memmap:
    """The `.npy` array that starts at byte `offset` of `path` (a file, or a member stored uncompressed in a zip),
    memory-mapped; a file shorter than its header promises raises `EOFError` naming the sizes."""
    with open(path, "rb") as f:
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        start = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects (a pickle), which cannot be memory-mapped.")
    needed = start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise EOFError(f"{path} holds {size} bytes but its array {shape} {dtype} needs {needed}")
    return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape, order="F" if fortran else "C")


def npz_arrays(path: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` archive without reading them: members stored uncompressed (`np.savez`) are
    memory-mapped in place; compressed ones (`np.savez_compressed`) are decompressed once into `cache_dir/KEY.npy`
    and memory-mapped from there."""
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as f:  # the member's data follows its local header, whose name/extra vary
                    f.seek(info.header_offset + 26)
                    name_length, extra_length = np.frombuffer(f.read(4), "<u2")
                arrays[key] = npy_memmap(path, info.header_offset + 30 + int(name_length) + int(extra_length))
                continue
            target = cache_dir / f"{key}.npy"
            if not target.is_file():
                with atomic_path(target) as partial, archive.open(info) as source, open(partial, "wb") as sink:
                    while chunk := source.read(1 << 24):
                        sink.write(chunk)
            arrays[key] = npy_memmap(target)
    return arrays
