"""Reading the published files: every read failure becomes the one message saying which file is corrupt and
how to fetch it again (`files.corrupt`)."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from orca_jax.data.benchmarks.arrays import npy_memmap
from orca_jax.data.benchmarks.files import corrupt


UNREADABLE = (EOFError, OSError, ValueError, pickle.UnpicklingError, KeyError, tarfile.TarError)


def load_pickle(task: str, path: Path, data_dir, *, opener=open, **options):
    try:
        with opener(path, "rb") as f:
            return pickle.load(f, **options)
    except UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def load_npy(task: str, path: Path, data_dir, **options) -> np.ndarray:
    try:
        return np.load(path, **options)
    except UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def memmap(task: str, path: Path, data_dir) -> np.memmap:
    try:
        return npy_memmap(path)
    except UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def expect_shape(task: str, path: Path, data_dir, array, shape: tuple) -> None:
    """`shape` with None for any size; a mismatch means a different file than the published one."""
    if len(array.shape) != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise corrupt(task, path, data_dir, ValueError(f"array of shape {tuple(array.shape)}, expected {wanted}"))


def read_mat(task: str, path: Path, data_dir, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Fields of a MATLAB file: v5 through SciPy, v7.3 (HDF5, stored transposed) through h5py."""
    import scipy.io

    try:
        try:
            data = scipy.io.loadmat(path, variable_names=fields)
        except NotImplementedError:  # v7.3
            import h5py

            with h5py.File(path, "r") as f:
                data = {k: np.asarray(f[k]).transpose() for k in fields if k in f}
    except UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error
    missing = [k for k in fields if k not in data]
    if missing:
        raise corrupt(task, path, data_dir, KeyError(f"fields {missing} missing"))
    return data
