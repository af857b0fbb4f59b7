"""The one place orca-jax reads tensorflow-datasets, so that everything else (and every test) runs without TensorFlow.

tensorflow-datasets itself imports without TensorFlow (its builders and feature specs work), but reading a
prepared dataset (tfrecord files) needs TensorFlow, and preparing one needs TensorFlow and the network. Both cases
fail here with a message that says what to install, what to run and where tfds looks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable

# tfds registers a builder when its module is imported; without TensorFlow, `import tensorflow_datasets` does not
# import the text builders, so name the module of each dataset we read.
_BUILDER_MODULES = {
    "conll2003": "tensorflow_datasets.text.conll2003",
    "cifar10": "tensorflow_datasets.image_classification.cifar",
}


def read_tfds(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Iterable[dict]:
    """The examples of a prepared tfds split, in file order, as NumPy dicts in tfds's feature format.

    Text features come as `bytes` (sequences as object arrays of bytes), class labels as int64, images as uint8
    HWC arrays. `data_dir` defaults to tfds's (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
    """
    import tensorflow_datasets as tfds

    if name not in _BUILDER_MODULES:
        raise ValueError(f"orca-jax reads no tfds dataset {name!r}; known: {sorted(_BUILDER_MODULES)}.")
    importlib.import_module(_BUILDER_MODULES[name])
    builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    has_tensorflow = importlib.util.find_spec("tensorflow") is not None
    prepared = builder.is_prepared()
    if has_tensorflow and prepared:
        return tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    todo = []
    if not has_tensorflow:
        todo.append("install TensorFlow (`pip install tensorflow==2.21.0`, CPU is enough)")
    if not prepared:
        todo.append(
            f"prepare the dataset: on a machine with network access and TensorFlow run `tfds build {name} "
            "--data_dir DIR`, copy DIR here and pass it as data_dir (--data_dir) or set TFDS_DATA_DIR"
        )
    error = ImportError if not has_tensorflow else FileNotFoundError
    raise error(
        f"Cannot read the tfds dataset {name!r} (tfds looks in {builder.data_dir!r}): " + "; then ".join(todo)
        + ". The offline sources (python_docs, digits) need neither."
    )
