"""New data for a trained model: read from `npz:` files and checked against the task it was trained on.

Every check runs before anything is placed on a device or compiled, so a wrong array costs a message, not a
compilation followed by a shape error from inside the model. The messages name the array, its shape or value, the
shape the model takes, and the likely fix (a missing batch or channel axis, channels-first layout, a dtype cast).
`DataError` is the project's "the data cannot be used as given" error: the command-line tools print it alone and
exit with status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orca_jax.data.kinds import get_task_kind
from orca_jax.data.own_data import read_archive
from orca_jax.data.types import DataError
from orca_jax.inference.record import TaskInfo

_CHUNK_BYTES = 1 << 26  # finite-value checks read this much at a time (inputs may be memory-mapped)
META_PREFIX = "meta_"  # per-example metadata in a labelled file, as `test_outputs.npz` stores it


def read_arrays(spec: str, *, targets: bool) -> dict[str, Any]:
    """`x` (and, with `targets`, `y` and any `meta_<name>` arrays) from `npz:FILE.npz` (read into memory) or
    `npz:DIR` (DIR/x.npy, DIR/y.npy, DIR/meta_<name>.npy, memory-mapped, so only the batches being predicted are
    read). Other arrays in the file are ignored: a training file (x, y, x_test, y_test) may be passed as it is."""
    if not spec.startswith("npz:"):
        raise DataError(f"{spec!r}: give the arrays as npz:FILE.npz (an archive holding x" + (", y" if targets else "")
                        + ") or npz:DIR (a directory of .npy files), e.g. --inputs=npz:new.npz.")
    path = Path(spec[len("npz:"):]).expanduser()
    wanted = ("x", "y") if targets else ("x",)
    if path.is_dir():
        arrays = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in sorted(path.glob("*.npy"))
                  if f.stem in wanted or (targets and f.stem.startswith(META_PREFIX))}
        where = f"the directory {path}"
    elif path.is_file():
        arrays = read_archive(path, spec, lambda n: n in wanted or (targets and n.startswith(META_PREFIX)))
        where = f"{path}"
    else:
        raise DataError(f"{spec}: there is no file or directory {path}.")
    missing = [name for name in wanted if name not in arrays]
    if missing:
        raise DataError(f"{spec}: {where} holds no {' or '.join(missing)}; "
                        + ("save the inputs as x and the targets as y (np.savez(path, x=..., y=...))" if targets
                           else "save the inputs as x (np.savez(path, x=...))") + ".")
    return arrays


def _first_bad(x: np.ndarray) -> tuple[int, tuple[int, ...] | None]:
    """(how many values are NaN or infinite, the index of the first), chunked over rows."""
    count, first = 0, None
    rows = max(1, _CHUNK_BYTES // max(x[:1].nbytes, 1))
    for start in range(0, len(x), rows):
        bad = ~np.isfinite(np.asarray(x[start : start + rows]))
        if bad.any():
            count += int(bad.sum())
            if first is None:
                index = np.argwhere(bad)[0]
                first = (int(index[0]) + start, *(int(i) for i in index[1:]))
    return count, first


def check_inputs(x: Any, info: TaskInfo, name: str = "x") -> np.ndarray:
    """`x` as an array the model can take, or a `DataError` saying why not and what to do."""
    expected = f"the model takes {info.describe_inputs()}"
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise DataError(f"{name} is a {type(x).__name__}, not an array; {expected}.")
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    dtype, shape, want = np.dtype(x.dtype), tuple(x.shape), tuple(info.input_shape)
    if not (np.issubdtype(dtype, np.number) or dtype == bool) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{name} has dtype {dtype}; {expected} as real numbers (e.g. {name}.astype(np.float32)).")
    if shape == want:
        raise DataError(f"{name} has shape {shape}, one example without the batch axis; {expected}: use {name}[None].")
    if len(shape) == len(want) and shape[1:] == want[:-1] and want[-1] == 1:
        raise DataError(f"{name} has shape {shape} without a channel axis; {expected}: use {name}[..., None].")
    if len(shape) != len(want) + 1:
        raise DataError(f"{name} has shape {shape}; {expected}.")
    if shape[1:] != want:
        hint = ""
        channels_first = (shape[1:] == (want[-1], *want[:-1]))
        if channels_first:
            order = "0, 2, 1" if info.layout == "NLC" else "0, 2, 3, 1"
            layout = "[N, channels, length]" if info.layout == "NLC" else "[N, channels, height, width]"
            hint = f" It looks channels-first {layout}: use {name}.transpose({order})."
        elif shape[1:-1] == want[:-1]:
            hint = (f" It has {shape[-1]} channel{'s' if shape[-1] != 1 else ''} where the model was trained on "
                    f"{want[-1]}.")
        else:
            hint = " It takes inputs of exactly that shape: resize or crop these as the training data was."
        raise DataError(f"{name} has example shape {shape[1:]}; {expected}.{hint}")
    if len(x) == 0:
        raise DataError(f"{name} holds no examples (shape {shape}); {expected} with N >= 1.")
    if np.issubdtype(dtype, np.floating):
        count, first = _first_bad(x)
        if count:
            raise DataError(f"{name} holds {count} NaN or infinite value{'s' if count != 1 else ''} (the first at "
                            f"index {first}); remove or impute them: the model would turn them into NaN outputs.")
    return x


def check_targets(y: Any, info: TaskInfo, examples: int, name: str = "y") -> np.ndarray:
    """`y` as targets the task's metric can score, or a `DataError` naming the problem."""
    kind = get_task_kind(info.kind)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    shape, dtype, want = tuple(y.shape), np.dtype(y.dtype), tuple(info.target_shape)
    described = {
        "classes": f"one integer class id in [0, {info.num_classes}) per example ([N])",
        "multilabel": f"{{0, 1}} targets [N, {', '.join(map(str, want))}]",
        "values": f"real-valued targets [N{''.join(', ' + str(d) for d in want)}] in the training targets' units",
    }[kind.targets]
    if len(y) != examples:
        raise DataError(f"{name} has {len(y)} examples but the inputs have {examples}.")
    if shape[1:] != want:
        raise DataError(f"{name} has shape {shape}; kind {info.kind!r} scores {described}.")
    if not (np.issubdtype(dtype, np.number) or dtype == bool) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{name} has dtype {dtype}; kind {info.kind!r} scores {described}.")
    if kind.targets == "classes":
        if not np.issubdtype(dtype, np.integer):
            raise DataError(f"{name} has dtype {dtype}; kind {info.kind!r} scores {described} "
                            f"(e.g. {name}.astype(np.int64)).")
        values = np.asarray(y)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= info.num_classes:
            raise DataError(f"{name} holds class id {low if low < 0 else high}, outside the model's "
                            f"{info.num_classes} classes [0, {info.num_classes}).")
        return values
    values = np.asarray(y)
    if kind.targets == "multilabel" and not np.isin(values, (0, 1)).all():
        bad = values[~np.isin(values, (0, 1))].ravel()[0]
        raise DataError(f"{name} holds {bad!r}; kind {info.kind!r} scores {described}.")
    if np.issubdtype(dtype, np.floating):
        count, first = _first_bad(values)
        if count:
            raise DataError(f"{name} holds {count} NaN or infinite value{'s' if count != 1 else ''} (the first at "
                            f"index {first}); no metric is defined on them: drop those examples.")
    return values
