"""The data types every task source and consumer shares: a `Split` of arrays, a loader's `TaskData`, the assembled
`Task`, the lazy-array protocol `LazyArray` with its row selection `Rows`, and `DataError`. Kept apart from the loaders (orca_jax/data/tasks.py and the
sources it dispatches to) so that a source imports the types without importing the dispatch that imports it.

Arrays: a split's `x` and `y` may be anything with `shape`, `dtype`, `len()` and indexing by an integer array of
rows: NumPy arrays, memory-mapped arrays (`np.load(path, mmap_mode="r")`), or a lazy reader of files too large for
memory (a `LazyArray`). Batches are read through those indices only (`orca_jax.data.loader`), so a task's size never
decides whether it runs; inputs of any numeric dtype are cast to float32 per batch, class ids to int32, other
targets to float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np


class DataError(ValueError):
    """The task's data cannot be used as given (shape, dtype, label range, NaN, an empty split, an unknown name):
    the message names the field, the bad value and the fix. Raised before any compilation; `scripts/train.py`
    prints it without a traceback and exits with status 2."""


LAYOUTS = {"NLC": 3, "NHWC": 4}  # layout -> rank of x, batch axis included


class LazyArray:
    """The split-array protocol for arrays that are not in memory: `shape`, `dtype`, `len()`, indexing by an integer,
    an integer array of rows or a slice, and `__array__` for small ones. Subclasses set `shape` and `dtype` and read
    a sorted array of distinct rows (`_read`); each distinct row is read once, in ascending order (memory maps,
    HDF5 and zip members are fastest that way, and h5py refuses unsorted or repeated indices), then put back in the
    order asked for."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def _read(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        if np.ndim(rows) == 0:
            row = int(rows)
            if not -len(self) <= row < len(self):
                raise IndexError(f"row {row} of an array of {len(self)} rows")
            return self._read(np.asarray([row % len(self)]))[0]
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows outside [0, {len(self)}) of an array of {len(self)} rows")
        distinct, inverse = np.unique(rows % max(len(self), 1), return_inverse=True)
        return self._read(distinct)[inverse.reshape(rows.shape)]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[np.arange(len(self))], dtype=dtype)


class Rows(LazyArray):
    """A lazy selection of rows of another array: a read takes only the rows asked for, in ascending order of the
    base's rows. Holding a split of a 200 GB memory map costs its indices."""

    def __init__(self, base: Any, index: np.ndarray):
        self.base, self.index = base, np.asarray(index, np.int64)
        self.shape = (len(self.index), *base.shape[1:])
        self.dtype = base.dtype

    def _read(self, rows: np.ndarray) -> np.ndarray:
        wanted = self.index[rows]
        order = np.argsort(wanted, kind="stable")
        values = np.asarray(self.base[wanted[order]])
        out = np.empty_like(values)
        out[order] = values
        return out


def take_rows(array: Any, index: np.ndarray) -> Any:
    """`array[index]`: a copy for arrays in memory (cheap, and faster to batch from), a lazy `Rows` for memory maps
    and file readers, which must not be read whole."""
    if type(array) is np.ndarray:
        return array[index]
    if isinstance(array, Rows):  # a selection of a selection reads the original rows
        return Rows(array.base, array.index[index])
    return Rows(array, index)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    x: Any  # [N, *input_shape], channels last
    y: Any  # [N, *target_shape]
    # Per-example arrays [N] that a metric needs besides outputs and targets, passed to it by name (e.g. PSICOV's
    # protein lengths, the clip each FSD50K chunk comes from).
    meta: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DataError(f"Split has {len(self.x)} inputs but {len(self.y)} targets.")
        for name, values in self.meta.items():
            if len(values) != len(self.y):
                raise DataError(f"Split meta {name!r} has {len(values)} entries for {len(self.y)} examples.")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Split:
        meta = {name: np.asarray(values)[index] for name, values in self.meta.items()}
        return Split(take_rows(self.x, index), take_rows(self.y, index), meta)


# A batch augmentation: (inputs [batch, ...] float32, generator) -> inputs of the same shape; training batches only.
Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    layout: str  # "NLC" or "NHWC"
    kind: str = "classification"  # a key of orca_jax.data.kinds.TASK_KINDS
    num_classes: int | None = None  # class-valued kinds: classes; multi-label: labels; None for values
    train_transform: Transform | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, without the batch axis."""
        return tuple(self.train.x.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.train.y.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """What a loader returns: the training data (validation is carved from it), the test split, and defaults."""

    train: Split
    test: Split | None  # None: a test split is held out with HELD_OUT_TEST_SEED
    layout: str
    kind: str | None = None  # None: the user must say (`task.kind`)
    num_classes: int | None = None  # None: inferred from the targets
    train_transform: Transform | None = None
