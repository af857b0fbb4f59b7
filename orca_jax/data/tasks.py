"""Target tasks: a registry of loaders returning train / validation / test arrays and what a model needs to know.

Inputs are channels-last float32 (`[N, length, channels]` for sequences, `[N, height, width, channels]` for
images), labels int32. The validation split is carved from the training data with a seeded permutation
(`val_fraction`, default 10 %), so model selection never sees the test split (the official code selects on test).
A loader returns (train, test); tasks without an official test split fix theirs with a constant seed, so the test
set does not move with `seed`.

- `mnist1d`: generated locally by the `mnist1d` package (`make_dataset(get_dataset_args())`: 4,000 train, 1,000
  test, length 40, 10 classes); never `get_dataset`, which downloads.
- `digits`: scikit-learn's bundled 8x8 digits (1,797 images scaled to [0, 1], 10 classes), 20 % held out as test.

Add a task by adding a loader to `TASK_LOADERS`.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable

import numpy as np

_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 0


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    x: np.ndarray  # float32, channels last
    y: np.ndarray  # int32 [N]

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"Split has {len(self.x)} inputs but {len(self.y)} labels.")

    def __len__(self) -> int:
        return len(self.y)


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    layout: str  # "NLC" (sequence: batch, length, channels) or "NHWC" (image)
    kind: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example, without the batch axis."""
        return tuple(self.train.x.shape[1:])


@dataclasses.dataclass(frozen=True)
class _Loaded:
    train: Split
    test: Split
    num_classes: int
    layout: str


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a seeded random `fraction` of the examples held out."""
    order = np.random.default_rng(seed).permutation(len(y))
    held = order[: int(round(fraction * len(y)))]
    rest = np.sort(order[len(held) :])
    return Split(x[rest], y[rest]), Split(x[np.sort(held)], y[np.sort(held)])


@functools.cache
def _mnist1d_arrays() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds NumPy's and Python's global generators; leave the caller's state as it was.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


def _mnist1d() -> _Loaded:
    d = _mnist1d_arrays()
    as_inputs = lambda x: np.asarray(x, np.float32)[..., None]  # noqa: E731
    as_labels = lambda y: np.asarray(y, np.int32)  # noqa: E731
    return _Loaded(
        Split(as_inputs(d["x"]), as_labels(d["y"])), Split(as_inputs(d["x_test"]), as_labels(d["y_test"])), 10, "NLC"
    )


def _digits() -> _Loaded:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # integers 0..16 -> [0, 1], one channel
    train, test = _split(x, digits.target.astype(np.int32), _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    return _Loaded(train, test, 10, "NHWC")


TASK_LOADERS: dict[str, Callable[[], _Loaded]] = {"mnist1d": _mnist1d, "digits": _digits}


def load_task(name: str, *, val_fraction: float = 0.1, seed: int = 0, train_size: int | None = None) -> Task:
    """Task `name` with a validation split of `val_fraction` of its training data, drawn with `seed`; `train_size`
    keeps a seeded subset of the remaining training examples (smoke runs, data-limited experiments)."""
    if name not in TASK_LOADERS:
        raise ValueError(f"Unknown task {name!r}; known: {sorted(TASK_LOADERS)}.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be strictly between 0 and 1 (e.g. 0.1).")
    loaded = TASK_LOADERS[name]()
    train, val = _split(loaded.train.x, loaded.train.y, val_fraction, seed)
    if train_size:
        if not 0 < train_size <= len(train):
            raise ValueError(f"train_size={train_size} must be in [1, {len(train)}] for task {name!r}.")
        keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:train_size])
        train = Split(train.x[keep], train.y[keep])
    return Task(name, train, val, loaded.test, loaded.num_classes, loaded.layout)
