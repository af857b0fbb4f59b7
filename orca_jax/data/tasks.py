"""Target tasks: train / validation / test splits and what a model needs to know about them.

A `Task` holds three `Split`s, the input layout ("NLC": `[N, length, channels]` sequences for text bodies; "NHWC":
`[N, height, width, channels]` images for Swin), its kind (`orca_jax.data.kinds`: the targets' meaning, which picks
head, loss, metric and align labels) and, for class-valued kinds, the number of classes.

The data types are in `orca_jax.data.types`.

Where tasks come from (`load_task(name)`):
- a registered loader (`TASK_LOADERS`): `mnist1d` (generated locally by the `mnist1d` package: 4,000 train, 1,000
  test, length 40, 10 classes; never `get_dataset`, which downloads), `digits` (scikit-learn's bundled 8x8 digits,
  20 % held out as test), and the benchmark tasks registered by their modules;
- `npz:PATH`, your own arrays (`orca_jax.data.own_data`), and `tfds:NAME`, any tensorflow-datasets image or sequence
  classification dataset (`orca_jax.data.tfds_tasks`);
- from Python, `task_from_arrays(...)` with arrays in memory.
The validation split is carved from the training data with a seeded permutation (`val_fraction`), so model
selection never sees the test split (the official code selects on test). Tasks without a published test split hold
one out with a constant seed, so the test set does not move with `seed`. `check_task` validates everything a run
relies on before any model is built.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from orca_jax.data.kinds import TASK_KINDS, get_task_kind
from orca_jax.data.own_data import load_npz, task_data_from_arrays
from orca_jax.data.tfds_tasks import load_tfds_task
from orca_jax.data.types import LAYOUTS, DataError, Split, Task, TaskData

log = logging.getLogger(__name__)


_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 0
HELD_OUT_TEST_SEED = 0  # the constant seed of test splits held out from data that ships none
_FULL_CHECK_BYTES = 1 << 30  # arrays up to this size are checked for NaN/inf whole; larger ones on a sample
_SAMPLE_ROWS, _SAMPLE_BYTES = 256, 1 << 28  # the sample: at most this many rows, and this many bytes


def held_out(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a seeded random `fraction` of the examples held out, both in their original order."""
    order = np.random.default_rng(seed).permutation(len(split))
    count = int(round(fraction * len(split)))
    return split.take(np.sort(order[count:])), split.take(np.sort(order[:count]))


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


def _mnist1d(data_dir: str | None = None) -> TaskData:
    d = _mnist1d_arrays()
    as_inputs = lambda x: np.asarray(x, np.float32)[..., None]  # noqa: E731
    as_labels = lambda y: np.asarray(y, np.int32)  # noqa: E731
    return TaskData(Split(as_inputs(d["x"]), as_labels(d["y"])), Split(as_inputs(d["x_test"]), as_labels(d["y_test"])),
                    "NLC", "classification", 10)


def _digits(data_dir: str | None = None) -> TaskData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # integers 0..16 -> [0, 1], one channel
    train, test = held_out(Split(x, digits.target.astype(np.int32)), _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    return TaskData(train, test, "NHWC", "classification", 10)


# name -> loader(data_dir) -> TaskData. Benchmark modules add their tasks here.
TASK_LOADERS: dict[str, Callable[..., TaskData]] = {"mnist1d": _mnist1d, "digits": _digits}


# scheme -> loader(path, data_dir) -> TaskData, for task names `scheme:PATH`.
SCHEMES: dict[str, Callable[..., TaskData]] = {"npz": load_npz, "tfds": load_tfds_task}


def scheme_loader(name: str) -> Callable[..., TaskData] | None:
    scheme, sep, _ = name.partition(":")
    if not sep:
        return None
    if scheme not in SCHEMES:
        raise DataError(f"Unknown task scheme {scheme!r} in {name!r}; use npz:PATH or tfds:NAME.")
    return SCHEMES[scheme]


def load_task(
    name: str,
    *,
    kind: str | None = None,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    train_size: int | None = None,
    num_classes: int | None = None,
) -> Task:
    """Task `name` (a registered name, `npz:PATH` or `tfds:NAME`), checked (`check_task`).

    `kind` overrides the loader's kind; `val_fraction` of the training data becomes the validation split, drawn
    with `seed`; `test_fraction` is held out as test where the data has no test split; `train_size` keeps a seeded
    subset of the remaining training examples (smoke runs, data-limited experiments); `num_classes` overrides the
    count inferred from the targets.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"task.val_fraction={val_fraction} must be strictly between 0 and 1 (e.g. 0.1).")
    loader = scheme_loader(name)
    if loader is not None:
        data = loader(name.partition(":")[2], data_dir=data_dir)
    elif name in TASK_LOADERS:
        data = TASK_LOADERS[name](data_dir=data_dir)
    else:
        close = difflib.get_close_matches(name, sorted(TASK_LOADERS), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise DataError(f"Unknown task {name!r}; {hint}known: {sorted(TASK_LOADERS)}, or npz:PATH, tfds:NAME.")
    return _assemble(name, data, kind=kind, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                     train_size=train_size, num_classes=num_classes)


def task_from_arrays(
    x: Any, y: Any, *, x_test: Any = None, y_test: Any = None, kind: str | None = None, name: str = "arrays",
    val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, train_size: int | None = None,
    num_classes: int | None = None,
) -> Task:
    """A task from arrays in memory (or memory-mapped), laid out as `npz:` files are (see `own_data`)."""
    data = task_data_from_arrays(x, y, x_test, y_test, source=name)
    return _assemble(name, data, kind=kind, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                     train_size=train_size, num_classes=num_classes)


def _assemble(name, data: TaskData, *, kind, val_fraction, test_fraction, seed, train_size, num_classes) -> Task:
    if len(data.train) == 0:
        raise DataError(f"Task {name!r}: x holds no examples (shape {tuple(data.train.x.shape)}); give at least a few "
                        "examples per class.")
    kind = kind or data.kind
    if kind is None:
        shape, dtype = tuple(data.train.y.shape), np.dtype(data.train.y.dtype)
        if len(shape) == 1 or shape[1:] == (1,):  # one label or value per example
            hint = (f"class labels need integer ids ({_class_id_fix(shape, dtype)}); for real values set "
                    "--config.task.kind=regression")
        else:
            hint = "set it, e.g. --config.task.kind=dense_1d for a value per sequence position"
        raise DataError(
            f"Task {name!r}: cannot tell the kind of task from targets of shape {shape} and dtype {dtype}; {hint} "
            f"(known kinds: {sorted(TASK_KINDS)})."
        )
    if get_task_kind(kind).targets == "classes":  # said of the arrays as given, before any split takes rows
        _check_class_id_form(f"task {name!r} y", kind, data.train.y)
        if data.test is not None:
            _check_class_id_form(f"task {name!r} y_test", kind, data.test.y)
    test = data.test
    if test is None:
        if not 0.0 < test_fraction < 1.0:
            raise DataError(f"task.test_fraction={test_fraction} must be strictly between 0 and 1 (e.g. 0.2).")
        train_all, test = held_out(data.train, test_fraction, HELD_OUT_TEST_SEED)
    else:
        train_all = data.train
    train, val = held_out(train_all, val_fraction, seed)
    if not len(val) or not len(train):
        if len(train_all) < 2:
            fix = "add examples: one cannot be both a training and a validation example"
        elif not len(val):
            fix = f"raise task.val_fraction to at least {math.ceil(100 / len(train_all)) / 100:g}, or add examples"
        else:
            fix = "lower task.val_fraction, or add examples"
        raise DataError(
            f"Task {name!r}: task.val_fraction={val_fraction} of its {len(train_all)} training examples"
            + (f" (of {len(data.train)} in x; task.test_fraction={test_fraction} holds out {len(test)} as test)"
               if data.test is None else "")
            + f" leaves {len(val)} validation and {len(train)} training examples; {fix}."
        )
    if train_size:
        if not 0 < train_size <= len(train):
            raise DataError(f"task.train_size={train_size} must be in [1, {len(train)}] for task {name!r}.")
        train = train.take(np.sort(np.random.default_rng(seed).permutation(len(train))[:train_size]))
    count = num_classes or data.num_classes or _count_classes(get_task_kind(kind).targets, (train_all, test))
    task = Task(name, train, val, test, data.layout, kind, count, data.train_transform)
    check_task(task)
    return task


def _count_classes(targets: str, splits) -> int | None:
    if targets == "multilabel":
        return int(splits[0].y.shape[1]) if splits[0].y.ndim == 2 else None
    # Only integer ids are counted: other labels are refused by check_task with a hint that fits them.
    if targets == "classes" and all(isinstance(s.y, np.ndarray) and np.issubdtype(s.y.dtype, np.integer)
                                    for s in splits):
        return int(max(int(np.max(s.y)) for s in splits if len(s)) + 1)
    return None


# Checks -------------------------------------------------------------------------------------------------------


def _rows_to_check(array: Any) -> Any:
    """The whole array when it is in memory and at most _FULL_CHECK_BYTES, else a fixed sample of its rows."""
    size = int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize
    if type(array) is np.ndarray and size <= _FULL_CHECK_BYTES:
        return array
    row_bytes = max(size // max(len(array), 1), 1)
    count = max(1, min(len(array), _SAMPLE_ROWS, _SAMPLE_BYTES // row_bytes))
    rows = np.unique(np.linspace(0, len(array) - 1, count).astype(np.int64))
    return np.asarray(array[rows])


def _check_finite(where: str, array: Any) -> None:
    if not np.issubdtype(array.dtype, np.floating):
        return
    values = _rows_to_check(array)
    bad = ~np.isfinite(values)
    if bad.any():
        first = np.argwhere(bad)[0]
        raise DataError(
            f"{where} holds {int(bad.sum())} NaN or infinite values (first at index {tuple(int(i) for i in first)}"
            f"{' of a sample of rows' if values is not array else ''}); remove or impute them before training."
        )


def check_task(task: Task) -> None:
    """Raises a ValueError naming the field, the bad value and the fix for anything a run would trip over later:
    empty splits, ranks and shapes that the layout or the kind's head cannot take, non-numeric inputs, NaN or
    infinite values, class ids out of range, multi-label targets outside {0, 1}."""
    kind = get_task_kind(task.kind)
    if task.layout not in LAYOUTS:
        raise DataError(f"Task {task.name!r} has layout {task.layout!r}; use one of {sorted(LAYOUTS)}.")
    rank = LAYOUTS[task.layout]
    splits = {"train": task.train, "val": task.val, "test": task.test}
    for split_name, split in splits.items():
        where = f"task {task.name!r} {split_name}"
        if len(split) == 0:
            fix = {"train": "lower task.val_fraction or add training data",
                   "val": "raise task.val_fraction or add training data",
                   "test": "provide test data or a larger task.test_fraction"}[split_name]
            raise DataError(f"{where} split is empty; {fix}.")
        if len(split.x.shape) != rank:
            raise DataError(
                f"{where} inputs have shape {tuple(split.x.shape)}, but {task.layout} inputs have rank {rank} "
                + ("([N, length, channels]: add a channel axis with x[..., None])" if task.layout == "NLC"
                   else "([N, height, width, channels]: add a channel axis with x[..., None])") + "."
            )
        if tuple(split.x.shape[1:]) != task.input_shape:
            raise DataError(f"{where} inputs have example shape {tuple(split.x.shape[1:])} but the training inputs "
                             f"have {task.input_shape}; every split needs the same shape.")
        if tuple(split.y.shape[1:]) != task.target_shape:
            raise DataError(f"{where} targets have example shape {tuple(split.y.shape[1:])} but the training "
                             f"targets have {task.target_shape}; every split needs the same shape.")
        if not (np.issubdtype(split.x.dtype, np.number) or split.x.dtype == bool) or np.issubdtype(
            split.x.dtype, np.complexfloating
        ):
            raise DataError(f"{where} inputs have dtype {split.x.dtype}; inputs must be real numbers (e.g. "
                             "x.astype(np.float32)).")
        _check_finite(f"{where} inputs", split.x)
        _check_targets(where, task, kind, split.y)


def _class_id_fix(shape: tuple, dtype: np.dtype) -> str:
    """What turns such labels into class ids."""
    fixes = []
    if len(shape) == 2 and shape[1] == 1:
        fixes.append("y.reshape(-1)")
    if dtype.kind in "USO":
        fixes.append("map the labels to ids, e.g. names, y = np.unique(y, return_inverse=True)")
    elif not np.issubdtype(dtype, np.integer):
        fixes.append("y.astype(np.int64) if the values are whole numbers")
    return "; ".join(fixes) or "one label per example"


def _check_class_id_form(where: str, kind_name: str, y: Any) -> None:
    shape, dtype = tuple(y.shape), np.dtype(y.dtype)
    if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
        raise DataError(
            f"{where} has shape {shape} and dtype {dtype}, but kind {kind_name!r} takes one integer class id per "
            f"example, shape [N]: {_class_id_fix(shape, dtype)}; for other targets set task.kind (one of "
            f"{sorted(TASK_KINDS)})."
        )


def _check_targets(where: str, task: Task, kind, y: Any) -> None:
    shape, dtype = tuple(y.shape), np.dtype(y.dtype)
    if kind.targets == "classes":
        _check_class_id_form(f"{where} targets", task.kind, y)
        if task.num_classes is None or task.num_classes < 2:
            raise DataError(f"Task {task.name!r} has num_classes={task.num_classes}; classification needs at least 2 "
                             "(set task.num_classes).")
        values = _rows_to_check(y)
        low, high = int(np.min(values)), int(np.max(values))
        if low < 0 or high >= task.num_classes:
            raise DataError(
                f"{where} targets hold class id {low if low < 0 else high}, outside [0, {task.num_classes}); class ids "
                "must run from 0 to num_classes - 1 (re-index them, or set task.num_classes)."
            )
        return
    if kind.targets == "multilabel":
        if len(shape) != 2:
            raise DataError(f"{where} targets have shape {shape}; kind {task.kind!r} takes {{0, 1}} targets "
                             "[N, labels].")
        values = _rows_to_check(y)
        if not np.isin(values, (0, 1)).all():
            bad = values[~np.isin(values, (0, 1))].ravel()[0]
            raise DataError(f"{where} targets hold {bad!r}; multi-label targets must be 0 or 1.")
        return
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise DataError(f"{where} targets have dtype {dtype}; kind {task.kind!r} takes real-valued targets.")
    _check_finite(f"{where} targets", y)
    if kind.head == "linear" and len(shape) not in (1, 2):
        raise DataError(f"{where} targets have shape {shape}; kind {task.kind!r} (a linear head) takes targets [N] "
                         "or [N, outputs]; for per-position outputs use a dense kind.")
    if kind.head == "dense_1d":
        if task.layout != "NLC" or len(shape) not in (2, 3) or shape[1] != task.input_shape[0]:
            raise DataError(
                f"{where} targets have shape {shape} for inputs {tuple(task.train.x.shape)}; kind {task.kind!r} "
                "predicts one value (or channel vector) per input position of a sequence: targets [N, length] or "
                "[N, length, channels] with the inputs' length (the official 1D dense head)."
            )
    if kind.head == "dense_2d" and (task.layout != "NHWC" or len(shape) not in (3, 4)):
        raise DataError(
            f"{where} targets have shape {shape} for {task.layout} inputs; kind {task.kind!r} takes image inputs "
            "and targets [N, height, width] or [N, height, width, channels] (any size: the head pools to it)."
        )


def class_notes(task: Task) -> list[str]:
    """What a class-valued task's labels leave untrained, which no error stops: a class of the head with no example
    at all (labels counted from 1 train a head whose class 0 is empty), and a class with no training example (in
    the validation or test split only: always predicted wrong). Said as warnings and in the run's summary."""
    splits = {"train": task.train.y, "validation": task.val.y, "test": task.test.y}
    if get_task_kind(task.kind).targets != "classes" or not all(
        isinstance(y, np.ndarray) and np.issubdtype(y.dtype, np.integer) for y in splits.values()
    ):
        return []
    counts = {name: np.bincount(np.asarray(y).ravel(), minlength=task.num_classes) for name, y in splits.items()}
    notes = []
    empty = np.flatnonzero(sum(counts.values()) == 0).tolist()
    if empty:
        present = np.flatnonzero(sum(counts.values())).tolist()
        notes.append(
            f"task {task.name!r}: classes {empty} of the {task.num_classes}-class head have no example in any split "
            f"(the labels hold {present[0]}..{present[-1]}), so their outputs are never trained; re-index the labels "
            "to run from 0 (e.g. y - 1, or np.unique(y, return_inverse=True)), unless task.num_classes sets them on "
            "purpose"
        )
    held = [c for c in np.flatnonzero(counts["train"] == 0).tolist() if c not in empty]
    if held:
        where = "; ".join(f"class {c}: " + ", ".join(f"{int(counts[n][c])} in {n}" for n in ("validation", "test")
                                                        if counts[n][c]) for c in held)
        notes.append(
            f"task {task.name!r}: classes {held} have no training example ({where}), so the model never learns them "
            "and is always wrong on them; give the training data (x, y) examples of them"
        )
    return notes
