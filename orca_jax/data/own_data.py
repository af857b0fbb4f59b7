"""Your own data as a task, without code: `--config.task.name=npz:PATH` (or `task_from_arrays` from Python).

The file holds arrays `x` and `y`, and optionally `x_test` and `y_test` (without them, `task.test_fraction` of the
examples is held out as test with a constant seed). The layout follows from the rank of `x`: `[N, length,
channels]` is a sequence (a text body: RoBERTa, BERT...), `[N, height, width, channels]` an image (Swin). Channels
come last; a single-channel array needs its channel axis (`x[..., None]`). The kind of task defaults to
`classification` when `y` is integer and one-dimensional; otherwise set `--config.task.kind` (see
`orca_jax.data.kinds`). Class ids must run from 0; their count is max + 1 unless `task.num_classes` says more.

An `.npz` archive is read into memory (NumPy cannot memory-map inside a zip). For data larger than memory, save the
arrays as separate `.npy` files in a directory and pass `npz:DIR`: `DIR/x.npy`, `DIR/y.npy` (and the optional test
files) are memory-mapped, and batches read only their rows.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from orca_jax.data.types import LAYOUTS, DataError, Split, TaskData

_NAMES = ("x", "y", "x_test", "y_test")


def load_npz(path: str, *, data_dir: str | None = None) -> TaskData:
    """Arrays from an `.npz` file, or memory-mapped from a directory of `.npy` files (relative paths: under
    `data_dir` when given)."""
    file = Path(path).expanduser()
    if not file.is_absolute() and data_dir:
        file = Path(data_dir).expanduser() / file
    if file.is_dir():
        arrays = {n: np.load(file / f"{n}.npy", mmap_mode="r") for n in _NAMES if (file / f"{n}.npy").is_file()}
        missing = [f"{n}.npy" for n in ("x", "y") if n not in arrays]
        if missing:
            raise DataError(f"npz:{path}: the directory {file} lacks {', '.join(missing)}; it needs x.npy and y.npy "
                            "(and optionally x_test.npy, y_test.npy).")
    elif file.is_file():
        arrays = read_archive(file, f"npz:{path}")
        missing = [n for n in ("x", "y") if n not in arrays]
        unknown = sorted(set(arrays) - set(_NAMES))
        if missing or unknown:
            raise DataError(
                f"npz:{path}: the archive holds {sorted(arrays)}; it needs x and y (and optionally x_test, y_test)"
                + (f", and {unknown} are not read: rename them" if unknown else "") + "."
            )
    else:
        raise DataError(f"npz:{path}: no file or directory {file}; write one with np.savez(path, x=..., y=...).")
    return task_data_from_arrays(arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"),
                                 source=f"npz:{path}")


def read_archive(file: Path, where: str, names=None) -> dict[str, np.ndarray]:
    """The arrays of an `.npz` file (those in `names`, or all), read into memory; a file that is not one, or is
    damaged, is a `DataError` naming it."""
    with open(file, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if not is_zip:  # NumPy's own error would be about allow_pickle, which reads as advice to load unsafely
        raise DataError(f"{where}: {file} is not an .npz archive (a zip file of arrays); write it with "
                        "np.savez(path, x=..., y=...).")
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {n: archive[n] for n in archive.files if names is None or names(n)}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{where}: {file} is damaged or truncated ({type(error).__name__}: {error}); write it again "
                        "with np.savez(path, x=..., y=...).") from error


def task_data_from_arrays(x: Any, y: Any, x_test: Any = None, y_test: Any = None, *, source: str) -> TaskData:
    """`TaskData` from arrays laid out as described in the module docstring."""
    if (x_test is None) != (y_test is None):
        raise DataError(f"{source}: give both x_test and y_test, or neither (then a test split is held out).")
    x, y = _as_array(x, f"{source} x"), _as_array(y, f"{source} y")
    layouts = {rank: layout for layout, rank in LAYOUTS.items()}
    if x.ndim not in layouts:
        raise DataError(
            f"{source}: x has shape {x.shape}; use [N, length, channels] for sequences or [N, height, width, "
            "channels] for images (channels last; add a channel axis with x[..., None] for one channel; a table "
            "[N, features] is one token of `features` channels: x[:, None, :])."
        )
    if len(x) != len(y):
        raise DataError(f"{source}: x has {len(x)} examples but y has {len(y)}.")
    test = None
    if x_test is not None:
        x_test, y_test = _as_array(x_test, f"{source} x_test"), _as_array(y_test, f"{source} y_test")
        if len(x_test) != len(y_test):
            raise DataError(f"{source}: x_test has {len(x_test)} examples but y_test has {len(y_test)}.")
        test = Split(x_test, y_test)
    kind = "classification" if y.ndim == 1 and np.issubdtype(y.dtype, np.integer) else None
    return TaskData(Split(x, y), test, layouts[x.ndim], kind)


def _as_array(value: Any, where: str) -> Any:
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__"):
        return value
    array = np.asarray(value)
    if array.dtype == object:
        raise DataError(f"{where} is not a numeric array (dtype object); stack it into one array of numbers.")
    return array
