"""OpenML tasks through the openml package's own cache (description, features, ARFF), offline: the official
preprocessing of numeric and categorical datasets, the seeded stratified split, and the missing-cache error."""

import numpy as np
import pytest
from sklearn.model_selection import StratifiedShuffleSplit

from orca_jax.data import load_task
from orca_jax.data.benchmarks.files import MissingFile
from orca_jax.data.benchmarks.openml_tasks import load_openml
from tests.benchmarks import published

N = 40


def write_numeric(root, dataset_id=1510, rows=N):
    """Numeric features (one with a missing value: dropped), a nominal target with one missing label."""
    rng = np.random.default_rng(0)
    columns = {"a": rng.normal(size=rows).round(3).tolist(), "b": rng.normal(size=rows).round(3).tolist(),
               "gap": [1.0, None] + [1.0] * (rows - 2), "c": [1.5] * rows,
               "Class": [None] + [("no", "yes")[i % 2] for i in range(rows - 1)]}
    kinds = {"a": ("numeric",), "b": ("numeric",), "gap": ("numeric",), "c": ("numeric",),
             "Class": ("nominal", ("no", "yes"))}
    published.write_openml(root, dataset_id, columns, kinds, "Class")
    return columns


def test_all_numeric_dataset_is_one_token_of_standardised_features(tmp_path):
    columns = write_numeric(tmp_path)
    task = load_task("openml_1510", data_dir=str(tmp_path))
    assert (task.kind, task.num_classes, task.input_shape) == ("tabular", 2, (1, 3))  # "gap" dropped
    data = load_openml(1510, data_dir=tmp_path)
    features = np.asarray([columns["a"][1:], columns["b"][1:], columns["c"][1:]]).T  # the unlabelled row dropped
    standardised = (features - features.mean(0)) / np.where(features.std(0) > 0, features.std(0), 1)
    labels = np.asarray([0, 1] * 20)[: N - 1]
    train, test = next(StratifiedShuffleSplit(1, test_size=0.1, random_state=0).split(features, labels))
    np.testing.assert_allclose(data.test.x[:, 0], standardised[test], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(data.train.y, labels[train])


def test_categorical_dataset_one_hot_tokens_padded_to_the_widest(tmp_path):
    rng = np.random.default_rng(1)
    colors = [("red", "green", "blue", None)[i % 4] for i in range(N)]
    columns = {"color": colors, "size": [("s", "l")[i % 2] for i in range(N)],
               "weight": [None if i == 3 else float(v) for i, v in enumerate(rng.normal(size=N).round(3))],
               "y": [("a", "b", "c")[i % 3] for i in range(N)]}
    kinds = {"color": ("nominal", ("red", "green", "blue")), "size": ("nominal", ("s", "l")),
             "weight": ("numeric",), "y": ("nominal", ("a", "b", "c"))}
    published.write_openml(tmp_path, 31, columns, kinds, "y")
    data = load_openml(31, data_dir=tmp_path)
    x = np.concatenate([data.train.x, data.test.x])
    assert x.shape == (N, 3, 4) and data.num_classes == 3  # tokens: color, size, weight; width: 4 color values
    assert np.isin(x[:, 0], (0, 1)).all() and (x[:, 0].sum(1) == 1).all()  # one-hot, "NaN" a category
    assert (x[:, 1, 2:] == 0).all() and (x[:, 1, :2].sum(1) == 1).all()  # 2 values, padded to 4
    assert (x[:, 2, 1:] == 0).all() and abs(x[:, 2, 0].mean()) < 1e-5  # standardised, missing -> 0 first


def test_a_dataset_missing_from_the_cache_names_the_command(tmp_path):
    with pytest.raises(MissingFile, match=f"prepare_data.py openml_37 --data_dir {tmp_path}"):
        load_task("openml_37", data_dir=str(tmp_path))
