"""Input pipelines on grain: every example once per epoch in fixed-shape padded batches, per-process rows, seeded
augmentation independent of the process layout, and an iterator state that resumes exactly."""

import gc
import json
import weakref

import numpy as np
import pytest

from orca_jax.data.loader import Batches, iterate
from orca_jax.data.types import Rows, Split


def _split(n=10):
    return Split(np.arange(n, dtype=np.float64)[:, None], np.arange(n, dtype=np.int64))


def test_every_example_once_per_epoch_in_padded_batches():
    batches = Batches(_split(), 4, epochs=2, seed=0)
    assert len(batches) == 6 and batches.steps_per_epoch == 3
    for epoch in range(2):
        seen = []
        for step in range(3):
            b = batches[epoch * 3 + step]
            assert b["x"].shape == (4, 1) and b["x"].dtype == np.float32 and b["y"].dtype == np.int32
            seen += list(b["y"][b["mask"] > 0])
        assert seen == list(np.random.default_rng([0, epoch]).permutation(10))
    last = batches[2]
    np.testing.assert_array_equal(last["mask"], [1, 1, 0, 0])
    assert last["y"][2] == last["y"][0]  # padding repeats the batch's first example
    with pytest.raises(IndexError):
        batches[6]
    seen = [batches[k]["y"] for k in (0, 3, 1)]  # back to epoch 0 after epoch 1: the same order
    np.testing.assert_array_equal(seen[2], np.random.default_rng([0, 0]).permutation(10)[4:8])
    freed = weakref.ref(batches)
    del batches
    gc.collect()
    assert freed() is None  # nothing (a cache on the class) keeps a finished run's loader and its arrays


def test_a_process_reads_only_its_rows():
    whole = Batches(_split(), 4, epochs=1, seed=3)
    halves = [Batches(_split(), 4, epochs=1, seed=3, rows=slice(r, r + 2)) for r in (0, 2)]
    for k in range(len(whole)):
        joined = {key: np.concatenate([h[k][key] for h in halves]) for key in ("x", "y", "mask")}
        for key in joined:
            np.testing.assert_array_equal(joined[key], whole[k][key])


def test_augmentation_is_per_example_and_independent_of_the_process_layout():
    def jitter(x, rng):
        return x + rng.normal(size=x.shape)

    whole = Batches(_split(), 4, epochs=2, seed=5, transform=jitter)
    half = Batches(_split(), 4, epochs=2, seed=5, rows=slice(2, 4), transform=jitter)
    for k in range(len(whole)):
        np.testing.assert_array_equal(half[k]["x"], whole[k]["x"][2:4])
    assert not np.array_equal(whole[0]["x"], Batches(_split(), 4, epochs=2, seed=5)[0]["x"])
    # Epochs draw anew: the same example gets another perturbation in epoch 2.
    e1 = {int(y): x for b in (whole[k] for k in range(3)) for x, y in zip(b["x"][:, 0], b["y"])}
    e2 = {int(y): x for b in (whole[k] for k in range(3, 6)) for x, y in zip(b["x"][:, 0], b["y"])}
    assert all(e1[i] != e2[i] for i in range(10))


def test_iterator_state_resumes_exactly_and_is_json():
    batches = Batches(_split(23), 4, epochs=3, seed=1)
    expected = [batches[k]["y"] for k in range(len(batches))]
    iterator = iterate(batches, threads=2, prefetch=3)
    head = [next(iterator)["y"] for _ in range(7)]
    state = json.loads(json.dumps(iterator.get_state()))
    tail = [b["y"] for b in iterate(batches, state=state)]
    for got, want in zip(head + tail, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_rows_read_lazily_in_ascending_order(tmp_path):
    base = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "x.npy", base)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    reads = []

    class Recording:
        shape, dtype = mapped.shape, mapped.dtype

        def __len__(self):
            return len(mapped)

        def __getitem__(self, index):
            reads.append(np.asarray(index).copy())
            return mapped[index]

    rows = Rows(Recording(), np.array([9, 3, 15, 4]))
    assert rows.shape == (4, 2) and len(rows) == 4
    np.testing.assert_array_equal(rows[np.array([2, 0, 1])], base[[15, 9, 3]])
    assert np.all(np.diff(reads[-1]) > 0)
    np.testing.assert_array_equal(np.asarray(rows), base[[9, 3, 15, 4]])


def test_a_batch_that_does_not_divide_over_the_devices_gets_masked_rows():
    batches = Batches(_split(), 3, epochs=1, seed=0, rows_per_batch=8)
    assert len(batches) == 4  # steps follow the batch size, not the padded rows
    first = batches[0]
    assert first["x"].shape == (8, 1)
    np.testing.assert_array_equal(first["mask"], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(batches[3]["mask"], [1, 0, 0, 0, 0, 0, 0, 0])  # 10 = 3 + 3 + 3 + 1
    with pytest.raises(ValueError, match="rows_per_batch=2 cannot hold batch_size=3"):
        Batches(_split(), 3, rows_per_batch=2)
