"""Any tensorflow-datasets image or sequence classification dataset as a task: `--config.task.name=tfds:NAME`.

Read through tfds's random-access data source over ArrayRecord files (`tfds.data_source`), which needs no
TensorFlow: batches decode only their rows, so a dataset larger than memory runs. The dataset must have been
prepared once in that format, on a machine with TensorFlow (`pip install -e ".[data]"`):

    tfds build NAME --file_format=array_record --data_dir DIR     # then --config.task.data_dir=DIR

The input is the feature named `image` if there is one, else the one numeric feature that is not the label; the label
is the one `ClassLabel` feature. Images must have a fixed size (`[H, W, C]`: NHWC inputs for Swin); a sequence
`[L]` or `[L, C]` becomes NLC inputs for a text body. The `train` split trains (validation is carved from it);
`test` is the test split when the dataset has one, else a held-out part of `train`.
"""

from __future__ import annotations

import numpy as np

from orca_jax.data.types import DataError, LazyArray, Split, TaskData


class TfdsColumn(LazyArray):
    """One feature of a tfds data source as a lazily read array `[N, *shape]` (batch reads through
    `__getitems__`)."""

    def __init__(self, source, key: str, example: np.ndarray, add_channel: bool):
        self.source, self.key, self.add_channel = source, key, add_channel
        shape = example.shape + ((1,) if add_channel else ())
        self.shape, self.dtype = (len(source), *shape), example.dtype

    def _read(self, rows: np.ndarray) -> np.ndarray:
        records = self.source.__getitems__([int(r) for r in rows])
        values = np.stack([np.asarray(record[self.key]) for record in records]).astype(self.dtype, copy=False)
        return values[..., None] if self.add_channel else values


def load_tfds_task(name: str, *, data_dir: str | None = None) -> TaskData:
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        sources = {split: tfds.data_source(name, split=split, data_dir=data_dir) for split in builder.info.splits
                   if split in ("train", "test")}
    except Exception as error:  # tfds raises several types (not found, wrong format, not prepared)
        raise DataError(
            f"tfds:{name}: cannot open the dataset as an ArrayRecord data source in "
            f"{data_dir or 'the default tfds data_dir'} ({type(error).__name__}: {error}). Prepare it once with "
            f"TensorFlow installed (pip install -e '.[data]'): `tfds build {name} --file_format=array_record "
            "--data_dir DIR`, then pass --config.task.data_dir=DIR."
        ) from error
    if "train" not in sources:
        raise DataError(f"tfds:{name} has splits {sorted(builder.info.splits)}; a task needs a 'train' split.")
    features = builder.info.features
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if len(labels) != 1:
        raise DataError(f"tfds:{name} has features {sorted(features)} with {len(labels)} ClassLabel features; a "
                         "classification task needs exactly one (use npz:PATH for other data).")
    label = labels[0]
    example = sources["train"][0]
    numeric = [k for k in features if k != label and np.issubdtype(np.asarray(example[k]).dtype, np.number)]
    key = "image" if "image" in features else (numeric[0] if len(numeric) == 1 else None)
    if key is None:
        raise DataError(f"tfds:{name}: cannot tell the input among features {sorted(features)} (numeric: {numeric}); "
                         "export the arrays and use npz:PATH.")
    value = np.asarray(example[key])
    if value.ndim not in (1, 2, 3):
        raise DataError(f"tfds:{name}: input feature {key!r} has example shape {value.shape}; only images [H, W, C] "
                         "and sequences [L] or [L, C] are supported.")
    layout = "NHWC" if value.ndim == 3 else "NLC"

    def split(source) -> Split:
        x = TfdsColumn(source, key, value, add_channel=value.ndim == 1)
        return Split(x, TfdsColumn(source, label, np.asarray(example[label], np.int64), add_channel=False))

    test = split(sources["test"]) if "test" in sources else None
    return TaskData(split(sources["train"]), test, layout, "classification", features[label].num_classes)
