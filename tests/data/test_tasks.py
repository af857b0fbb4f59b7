"""Tasks: shapes and dtypes, disjoint seeded splits, a test split that stays put, clear errors."""

import numpy as np
import pytest

from orca_jax.data import load_task


def _rows(x):
    return {row.tobytes() for row in x}


def test_mnist1d():
    state = np.random.get_state()[1].copy()
    task = load_task("mnist1d", seed=0)
    assert np.array_equal(np.random.get_state()[1], state)  # make_dataset's global seeding is undone
    assert task.train.x.shape == (3600, 40, 1) and task.val.x.shape == (400, 40, 1)
    assert task.test.x.shape == (1000, 40, 1)
    assert task.train.x.dtype == np.float32 and task.train.y.dtype == np.int32
    assert task.num_classes == 10 and task.layout == "NLC" and task.kind == "classification"
    assert task.input_shape == (40, 1)
    train, val, test = _rows(task.train.x), _rows(task.val.x), _rows(task.test.x)
    assert len(train) == 3600 and not train & val and not train & test and not val & test


def test_splits_are_seeded_and_test_stays_apart():
    a, b, c = load_task("digits", seed=0), load_task("digits", seed=0), load_task("digits", seed=1)
    assert np.array_equal(a.val.x, b.val.x) and np.array_equal(a.train.y, b.train.y)
    assert not np.array_equal(a.val.x, c.val.x)
    assert np.array_equal(a.test.x, c.test.x)  # the test split does not move with the seed
    assert len(a.train) + len(a.val) + len(a.test) == 1797 and len(a.test) == 359
    assert len(a.val) == round(0.1 * (1797 - 359))
    assert a.train.x.shape[1:] == (8, 8, 1) and a.layout == "NHWC" and a.train.x.dtype == np.float32
    assert 0.0 <= a.train.x.min() and a.train.x.max() <= 1.0
    assert sorted(set(a.val.y.tolist())) == list(range(10))
    assert len(load_task("digits", val_fraction=0.25).val) == round(0.25 * 1438)


def test_unknown_task_and_bad_fraction():
    with pytest.raises(ValueError, match=r"Unknown task 'cifar'; did you mean 'cifar100'.*known: \[.*'digits'.*'mnist1d'"):
        load_task("cifar")
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        load_task("digits", val_fraction=1.5)


def test_train_size_keeps_a_seeded_subset_of_the_training_split():
    full = load_task("mnist1d", seed=3)
    small = load_task("mnist1d", seed=3, train_size=100)
    assert len(small.train) == 100 and len(small.val) == len(full.val) and len(small.test) == len(full.test)
    rows = {row.tobytes() for row in full.train.x}
    assert all(row.tobytes() in rows for row in small.train.x)  # drawn from the training split, not val or test
    np.testing.assert_array_equal(small.train.x, load_task("mnist1d", seed=3, train_size=100).train.x)
    with pytest.raises(ValueError, match="train_size=999999"):
        load_task("mnist1d", train_size=999999)
