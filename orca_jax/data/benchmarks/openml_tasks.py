"""The 42 OpenML classification datasets of ORCA's tabular experiments, through the `openml` package and its cache
(`DATA/openml`), preprocessed as the official `load_openml_dataset`.

- Rows whose label is missing are dropped.
- All-numeric datasets: columns with a missing value are dropped, the rest standardised; an example is ONE token
  whose channels are the features (`[1, features]`). Datasets 12, 54, 1068 and 1494 are standardised once more
  with the training split's per-feature mean and unbiased deviation + 1e-5; dataset 1464 keeps features 0, 1, 3.
- Datasets with categorical columns: each categorical column is one-hot encoded over the values it takes (a
  missing value is a category of its own), each numeric column has missing values set to 0 and is standardised,
  and every column becomes a token, zero-padded to the widest one-hot (`[columns, width]`; categorical columns
  first). One-hot channels are ordered by sorted category name.
- Labels: the category codes of a categorical target, else the integer values.
- A stratified 90/10 train/test split with `SPLIT_SEED` (the official split has no seed and is cached on the first
  run, so its results depend on that file).
"""

from __future__ import annotations

import numpy as np

from orca_jax.data.benchmarks.files import MissingFile, data_root, prepare_command
from orca_jax.data.types import Split, TaskData

DATASET_IDS = (11, 12, 14, 15, 16, 18, 22, 23, 28, 29, 31, 37, 44, 48, 50, 54, 61, 187, 188, 458, 469, 882, 1049, 1050,
               1063, 1068, 1462, 1464, 1479, 1480, 1491, 1493, 1494, 1510, 1511, 6332, 23381, 40496, 40966, 40975,
               40982, 40994)
SPLIT_SEED, TEST_FRACTION = 0, 0.1
RENORMALIZED = frozenset({12, 54, 1068, 1494})  # the official second standardisation
KEPT_FEATURES = {1464: (0, 1, 3)}


def task_name(dataset_id: int) -> str:
    return f"openml_{dataset_id}"


def fetch_dataset(dataset_id: int, data_dir=None, *, download: bool):
    """The `openml` dataset object from the cache under `DATA/openml` (`download`: fetch what the cache lacks)."""
    cache = data_root(data_dir) / "openml"
    dataset_dir = cache / "org" / "openml" / "www" / "datasets" / str(dataset_id)  # the package's cache layout
    if not download and not (dataset_dir / "description.xml").is_file():
        raise MissingFile(f"Task {task_name(dataset_id)!r}: OpenML dataset {dataset_id} is not in the cache "
                          f"{dataset_dir}. Run `{prepare_command(task_name(dataset_id), data_dir)}`.")
    import openml

    openml.config.set_root_cache_directory(str(cache))
    return openml.datasets.get_dataset(dataset_id, download_data=True, download_qualities=False,
                                       download_features_meta_data=True)


def _standardize(values: np.ndarray) -> np.ndarray:
    """scikit-learn's StandardScaler: population deviation, constant columns left at 0."""
    std = values.std(axis=0)
    return (values - values.mean(axis=0)) / np.where(std > 0, std, 1.0)


def preprocess(frame, target, categorical: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [N, tokens, channels] float32, labels [N] int64) from an OpenML frame, its target and the
    categorical indicator of its columns, as described in the module docstring."""
    import pandas as pd

    keep = target.notna().to_numpy()
    frame, target = frame[keep], target[keep]
    categorical = np.asarray(categorical, bool)
    if categorical.any():
        tokens = []
        for column in frame.columns[categorical]:
            values = frame[column].astype(object).where(frame[column].notna(), "NaN").astype(str).to_numpy()
            tokens.append((values[:, None] == np.unique(values)[None, :]).astype(np.float64))
        width = max(t.shape[1] for t in tokens)
        numeric = frame[frame.columns[~categorical]].apply(pd.to_numeric).fillna(0).to_numpy(np.float64)
        numeric = _standardize(numeric) if numeric.shape[1] else numeric
        tokens += [column[:, None] for column in numeric.T]
        x = np.stack([np.pad(t, ((0, 0), (0, width - t.shape[1]))) for t in tokens], axis=1)
    else:
        numeric = frame.dropna(axis=1).to_numpy(np.float64)
        x = _standardize(numeric)[:, None, :]
    labels = target.cat.codes.to_numpy() if isinstance(target.dtype, pd.CategoricalDtype) else target.to_numpy()
    return x.astype(np.float32), np.asarray(labels, np.int64)


def load_openml(dataset_id: int, data_dir=None) -> TaskData:
    from sklearn.model_selection import StratifiedShuffleSplit

    dataset = fetch_dataset(dataset_id, data_dir, download=False)
    frame, target, categorical, _ = dataset.get_data(target=dataset.default_target_attribute)
    x, y = preprocess(frame, target, categorical)
    split = StratifiedShuffleSplit(n_splits=1, test_size=TEST_FRACTION, random_state=SPLIT_SEED)
    train, test = next(split.split(np.zeros(len(y)), y))
    if x.shape[1] == 1:  # all numeric: the official extra steps address features
        if dataset_id in RENORMALIZED:
            mean, std = x[train].mean(axis=0), x[train].std(axis=0, ddof=1) + 1e-5
            x = ((x - mean) / std).astype(np.float32)
        if dataset_id in KEPT_FEATURES:
            x = x[:, :, list(KEPT_FEATURES[dataset_id])]
    classes = int(y.max()) + 1
    return TaskData(Split(x[train], y[train]), Split(x[test], y[test]), "NLC", "tabular", classes)
