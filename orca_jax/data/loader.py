"""Input pipelines on grain: batches of a split as a random-access dataset, read ahead by prefetching workers.

A run's batches are a pure function of (seed, epoch, step): batch k of a training run is step k % steps of epoch
k // steps, whose order is a seeded permutation of the split (the same on every process). That makes the pipeline a
`grain.MapDataset` over batch numbers, so grain can prefetch (threads, or worker processes with `workers > 0`), and
its iterator state (the next batch number) is a few bytes saved in every checkpoint: a resumed run reads exactly the
batches an uninterrupted one would.

Batches have a fixed shape: the last batch of an epoch is padded with copies of its first example and a mask marks
the real rows, so one compiled step serves the whole run and losses and metrics are exact. For the same reason a
batch size that does not divide over the devices (the official configs use 1, 4 and 16, a pod has 8 to thousands of
devices) is padded to `rows_per_batch`, a multiple of the device count: the step computes on the padding rows and
masks them out, so the update is exactly that of the configured batch size, at the price of the padding's compute. Each process reads only
its rows of every global batch (`rows`, from `orca_jax.parallel.process_rows`); augmentation (`transform`) is drawn
per example from (seed, epoch, position in the epoch), so its result does not depend on how many processes share a
batch. Inputs come out as float32; class ids as int32, other targets as float32.
"""

from __future__ import annotations

import math

import grain
from absl import flags
import numpy as np

from orca_jax.data.types import Split, Transform


def _as_targets(y: np.ndarray) -> np.ndarray:
    return y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)


class Batches:
    """Batch k of `epochs` passes over `split`: a dict of `x`, `y`, `mask` and `meta` (the split's per-example
    metadata), this process's `rows` of each.

    `seed=None` reads the split in order (evaluation); otherwise each epoch is shuffled with `[seed, epoch]`. A
    global batch has `rows_per_batch` rows (default `batch_size`; more: masked padding rows, see the module
    docstring), of which this process reads `rows`.
    """

    def __init__(self, split: Split, batch_size: int, *, epochs: int = 1, seed: int | None = None,
                 rows: slice = slice(None), transform: Transform | None = None, rows_per_batch: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be positive.")
        self.rows_per_batch = rows_per_batch or batch_size
        if self.rows_per_batch < batch_size:
            raise ValueError(f"rows_per_batch={rows_per_batch} cannot hold batch_size={batch_size}.")
        if len(split) == 0:
            raise ValueError("Cannot batch an empty split.")
        self.split, self.batch_size, self.epochs, self.seed = split, batch_size, epochs, seed
        self.rows, self.transform = rows, transform
        self.steps_per_epoch = math.ceil(len(split) / batch_size)
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of examples. The last two are kept on the instance (batches are read in order, a few
        ahead, so across an epoch's end two are in use); an lru_cache on the method would keep every instance."""
        order = self._orders.get(epoch)
        if order is None:  # reader threads may get here at once: each computes the same order, none fails
            order = (np.arange(len(self.split)) if self.seed is None
                     else np.random.default_rng([self.seed, epoch]).permutation(len(self.split)))
            kept = list(self._orders)
            if len(kept) >= 2:
                self._orders.pop(min(kept), None)
            self._orders[epoch] = order
        return order

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        epoch, step = divmod(int(k), self.steps_per_epoch)
        if not 0 <= epoch < self.epochs:
            raise IndexError(f"batch {k} is outside the {len(self)} batches of this run.")
        start = step * self.batch_size
        index = self.order(epoch)[start : start + self.batch_size]
        real = len(index)
        slots = np.arange(start, start + self.rows_per_batch)[self.rows]
        index = np.concatenate([index, np.full(self.rows_per_batch - real, index[0])])[self.rows]
        x = np.asarray(self.split.x[index]).astype(np.float32, copy=False)
        if self.transform is not None:
            x = x.copy()
            for row, slot in enumerate(slots):
                x[row : row + 1] = self.transform(x[row : row + 1], np.random.default_rng([self.seed or 0, epoch, slot]))
        y = _as_targets(np.asarray(self.split.y[index]))
        mask = (np.arange(self.rows_per_batch) < real).astype(np.float32)[self.rows]
        meta = {name: np.asarray(values)[index] for name, values in self.split.meta.items()}
        return {"x": x, "y": y, "mask": mask, "meta": meta}


def iterate(source, *, state: dict | None = None, threads: int = 1, prefetch: int = 2, workers: int = 0):
    """A grain iterator over `source` (any random-access source of batches) that reads `prefetch` batches ahead on
    `threads` threads, or in `workers` processes (then `source` is pickled to each worker: keep large arrays
    memory-mapped). `iterator.get_state()`, saved with a checkpoint, resumes a new iterator here as `state`."""
    dataset = grain.MapDataset.source(source)
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=max(threads, 1), prefetch_buffer_size=prefetch))
    if workers > 0:
        # grain's worker processes read absl flags; outside an absl app (notebooks, tests) they are unparsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(iter_dataset)
    if state is not None:
        iterator.set_state(state)
    return iterator
