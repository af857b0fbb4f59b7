"""Pseudo-labels for targets without classes (dense outputs, regression, multi-label), as the official code makes
them: k-means with k = 10 on the flattened *targets* (not the inputs), scikit-learn's ``k_means`` up to 10,000
samples and ``MiniBatchKMeans`` (batch 10,000) beyond. The labels only split the target set into groups for the
align stage, so this runs once, on the host; ``seed`` makes it deterministic (the official code left it unseeded).

Targets larger than ``IN_MEMORY_BYTES`` as float32 (PSICOV's 3,356 distance maps of 512×512: 3.5 GB; the official
code loads them whole) are never held at once: ``MiniBatchKMeans`` learns from chunks of rows read in turn
(``partial_fit``, two passes) and labels them chunk by chunk. That differs from the official full ``k_means`` only
in being a mini-batch solution; the targets may then be a lazy array (anything indexable by a range of rows).
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans, k_means

FULL_KMEANS_MAX_SAMPLES = 10_000
IN_MEMORY_BYTES = 1 << 31
_PASSES = 2


def pseudo_labels(targets, num_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster ids (int32, one per sample) for ``targets`` of shape (samples, ...).

    Memory: the flattened targets are held as one float32 (samples, prod(rest)) array; subsample very large dense
    targets (e.g. PSICOV's 512×512 maps) before calling.
    """
    if num_clusters < 1:
        raise ValueError(f"num_clusters={num_clusters} must be >= 1 (ORCA uses 10).")
    shape = tuple(np.shape(targets))
    if len(shape) == 0 or shape[0] < num_clusters:
        raise ValueError(f"targets has shape {shape}: need at least num_clusters={num_clusters} samples along "
                         "the first axis.")
    row_bytes = 4 * int(np.prod(shape[1:], dtype=np.int64))
    if shape[0] * row_bytes > IN_MEMORY_BYTES:
        return _chunked_labels(targets, num_clusters, seed, rows=max(num_clusters, IN_MEMORY_BYTES // row_bytes))
    flat = np.asarray(targets).reshape(shape[0], -1).astype(np.float32)
    if flat.shape[0] <= FULL_KMEANS_MAX_SAMPLES:
        _, labels, _ = k_means(flat, num_clusters, random_state=seed, n_init="auto")
    else:
        labels = MiniBatchKMeans(n_clusters=num_clusters, batch_size=FULL_KMEANS_MAX_SAMPLES, random_state=seed,
                                 n_init="auto").fit_predict(flat)
    return labels.astype(np.int32)


def _chunked_labels(targets, num_clusters: int, seed: int, rows: int) -> np.ndarray:
    def chunks():
        for start in range(0, len(targets), rows):
            chunk = np.asarray(targets[start : start + rows], np.float32)
            yield chunk.reshape(len(chunk), -1)

    model = MiniBatchKMeans(n_clusters=num_clusters, batch_size=min(rows, FULL_KMEANS_MAX_SAMPLES), random_state=seed,
                            n_init=1)
    for _ in range(_PASSES):
        for chunk in chunks():
            if len(chunk) >= num_clusters:  # partial_fit needs at least one row per cluster
                model.partial_fit(chunk)
    return np.concatenate([model.predict(chunk) for chunk in chunks()]).astype(np.int32)
