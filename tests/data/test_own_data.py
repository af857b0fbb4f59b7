"""Your own data as a task: npz files, directories of memory-mapped .npy files, tfds ArrayRecord datasets, arrays
from Python; and every misfit named before any model is built."""

import numpy as np
import pytest

from orca_jax.data import load_task, task_from_arrays
from orca_jax.data.tasks import class_notes
from orca_jax.data.types import DataError, Rows
from orca_jax.train.align import align_classes

RNG = np.random.default_rng(0)


def _seq(n=60, length=12, channels=2):
    return RNG.normal(size=(n, length, channels)).astype(np.float32)


def test_npz_with_and_without_test_arrays(tmp_path):
    x, y = _seq(), RNG.integers(0, 3, 60)
    np.savez(tmp_path / "a.npz", x=x, y=y, x_test=x[:7], y_test=y[:7])
    task = load_task(f"npz:{tmp_path / 'a.npz'}", seed=1)
    assert task.layout == "NLC" and task.kind == "classification" and task.num_classes == 3
    assert len(task.test) == 7 and len(task.train) + len(task.val) == 60 and len(task.val) == 6
    np.savez(tmp_path / "b.npz", x=x, y=y)
    held = load_task("npz:b.npz", data_dir=str(tmp_path), seed=1, test_fraction=0.25)
    assert len(held.test) == 15 and len(held.train) + len(held.val) == 45
    # The test split is held out with a constant seed: it does not move with the run's seed.
    np.testing.assert_array_equal(held.test.x, load_task("npz:b.npz", data_dir=str(tmp_path), seed=7,
                                                         test_fraction=0.25).test.x)
    rows = {r.tobytes() for r in held.train.x} | {r.tobytes() for r in held.val.x}
    assert not rows & {r.tobytes() for r in held.test.x}


def test_npy_directory_is_memory_mapped_and_read_lazily(tmp_path):
    images = RNG.normal(size=(40, 6, 6, 3)).astype(np.float32)
    targets = RNG.normal(size=(40, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", targets)
    task = load_task(f"npz:{tmp_path}", kind="dense_2d")
    assert task.layout == "NHWC" and task.num_classes is None and task.target_shape == (6, 6)
    assert isinstance(task.train.x, Rows) and isinstance(task.train.x.base, np.memmap)
    index = task.train.x.index
    np.testing.assert_array_equal(np.asarray(task.train.x), images[index])


def test_arrays_from_python_and_kind_required_for_non_class_targets():
    x = _seq()
    task = task_from_arrays(x, RNG.normal(size=(60, 12)).astype(np.float32), kind="dense_1d")
    assert task.kind == "dense_1d" and task.target_shape == (12,)
    with pytest.raises(ValueError, match=r"cannot tell the kind .* --config.task.kind=dense_1d"):
        task_from_arrays(x, RNG.normal(size=(60, 12, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"cannot tell the kind .*y.astype\(np.int64\) if the values are whole .* "
                                         r"--config.task.kind=regression"):
        task_from_arrays(x, RNG.normal(size=(60,)).astype(np.float32))


@pytest.mark.parametrize(
    "x, y, kind, match",
    [
        (RNG.normal(size=(60, 12)), RNG.integers(0, 3, 60), None, r"x has shape \(60, 12\).*x\[\.\.\., None\]"),
        (_seq(), RNG.integers(0, 3, 59), None, "x has 60 examples but y has 59"),
        (_seq(), RNG.integers(-1, 3, 60), None, "class id -1, outside \\[0, 3\\)"),
        (_seq(), RNG.normal(size=(60, 4)), "multilabel_auroc", "multi-label targets must be 0 or 1"),
        (_seq(), RNG.normal(size=(60, 10)), "dense_1d", "inputs' length"),
        (_seq(), RNG.normal(size=(60, 12)), "dense_2d", "takes image inputs"),
        (_seq(), RNG.normal(size=(60, 12, 3, 2)), "regression", "linear head"),
        (_seq(), RNG.normal(size=(60,)), "classification", "one integer class id per example"),
        (np.full((60, 12, 2), np.nan), RNG.integers(0, 3, 60), None, r"train inputs holds \d+ NaN or infinite values"),
        (_seq(), np.where(np.arange(60) == 5, np.inf, 1.0), "regression", "targets holds 1 NaN or infinite"),
        (_seq(), RNG.integers(0, 3, 60), "segmentation", "Unknown task kind 'segmentation'"),
        (np.full((60, 12, 2), "a"), RNG.integers(0, 3, 60), None, "inputs have dtype <U1; inputs must be real"),
        (_seq(), np.array(["cat", "dog"] * 30), "classification", r"dtype <U3.*np.unique\(y, return_inverse=True\)"),
        (_seq(), np.array(["cat", "dog"] * 30), None, r"cannot tell the kind.*np.unique\(y, return_inverse=True\)"),
        (_seq(), RNG.integers(0, 3, (60, 1)), None, r"cannot tell the kind .*\(60, 1\).*y.reshape\(-1\)"),
        (_seq(), RNG.integers(0, 3, (60, 1)), "classification", r"y.reshape\(-1\)"),
        (_seq()[:0], np.zeros(0, np.int64), None, r"x holds no examples \(shape \(0, 12, 2\)\)"),
    ],
)
def test_misfits_are_named_before_any_model_is_built(x, y, kind, match):
    with pytest.raises(ValueError, match=match):
        task_from_arrays(x, y, kind=kind)


def test_split_sizes_and_labels_left_untrained_are_said_the_right_way_round():
    four = np.array([0, 1, 0, 1])
    with pytest.raises(DataError, match=r"task.val_fraction=0.05 of its 3 training examples \(of 4 in x; "
                                        r"task.test_fraction=0.2 holds out 1 as test\) leaves 0 validation and 3 "
                                        r"training examples; raise task.val_fraction to at least 0.34"):
        task_from_arrays(_seq(4), four, val_fraction=0.05)
    with pytest.raises(DataError, match="leaves 3 validation and 0 training examples; lower task.val_fraction"):
        task_from_arrays(_seq(4), four, val_fraction=0.9)
    small = task_from_arrays(_seq(4), four, val_fraction=0.5)  # 1 training example: refine can run, align cannot
    with pytest.raises(DataError, match=r"align stage needs a class with at least two examples in the training "
                                        r"split; it has 1.*--config.align.epochs=0 --config.align.objective=none"):
        align_classes(small.train.y)
    # Labels counted from 1, and a class only the test split has: trained, but said.
    task = task_from_arrays(_seq(), np.arange(60) % 2 + 1, x_test=_seq(6), y_test=np.array([1, 2, 3, 3, 1, 2]))
    assert task.num_classes == 4
    assert class_notes(task) == [
        "task 'arrays': classes [0] of the 4-class head have no example in any split (the labels hold 1..3), so "
        "their outputs are never trained; re-index the labels to run from 0 (e.g. y - 1, or np.unique(y, "
        "return_inverse=True)), unless task.num_classes sets them on purpose",
        "task 'arrays': classes [3] have no training example (class 3: 2 in test), so the model never learns them "
        "and is always wrong on them; give the training data (x, y) examples of them",
    ]
    assert class_notes(task_from_arrays(_seq(), np.arange(60) % 3)) == []


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="no file or directory .*np.savez"):
        load_task(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "c.npz", inputs=_seq(), y=np.zeros(60, int))
    with pytest.raises(ValueError, match=r"needs x and y .*\['inputs'\] are not read"):
        load_task(f"npz:{tmp_path / 'c.npz'}")
    (tmp_path / "d.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"d.npz is not an .npz archive \(a zip file of arrays\)"):
        load_task(f"npz:{tmp_path / 'd.npz'}")
    with pytest.raises(ValueError, match="Unknown task scheme 'csv'"):
        load_task("csv:/tmp/a.csv")


def _tiny_tfds(data_dir):
    """A tfds dataset prepared as ArrayRecord without TensorFlow (Tensor features need no image codec)."""
    import tensorflow_datasets as tfds

    class TinySequences(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        code_path = None  # no checksums file to look up (tfds would search this test module's package resources)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "signal": tfds.features.Tensor(shape=(16,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=4),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(40, 0), "test": self._generate_examples(12, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield i, {"signal": rng.normal(size=16).astype(np.float32) + i % 4, "label": i % 4}

    TinySequences(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "tiny_sequences"


def test_tfds_sequence_classification_through_the_array_record_source(tmp_path):
    name = _tiny_tfds(tmp_path)
    task = load_task(f"tfds:{name}", data_dir=str(tmp_path))
    assert task.layout == "NLC" and task.input_shape == (16, 1) and task.num_classes == 4
    assert len(task.train) + len(task.val) == 40 and len(task.test) == 12
    x = np.asarray(task.test.x)
    assert x.shape == (12, 16, 1)
    labels = np.asarray(task.test.y)
    assert sorted(labels.tolist()) == sorted((np.arange(12) % 4).tolist())
    assert np.allclose(x.mean(axis=(1, 2)), labels, atol=1.0)  # each signal read with its own label
    with pytest.raises(DataError, match="tfds build no_such_set --file_format=array_record"):
        load_task("tfds:no_such_set", data_dir=str(tmp_path))
