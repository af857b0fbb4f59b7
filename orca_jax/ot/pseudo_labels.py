"""Pseudo-labels for targets without classes (dense outputs, regression, multi-label), as the official code makes
them: k-means with k = 10 on the flattened *targets* (not the inputs), scikit-learn's ``k_means`` up to 10,000
samples and ``MiniBatchKMeans`` (batch 10,000) beyond. The labels only split the target set into groups for the
align stage, so this runs once, on the host; ``seed`` makes it deterministic (the official code left it unseeded).
"""
from __future__ import annotations

import numpy as np
from sklearn.cluster import MiniBatchKMeans, k_means

FULL_KMEANS_MAX_SAMPLES = 10_000


def pseudo_labels(targets, num_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """Cluster ids (int32, one per sample) for ``targets`` of shape (samples, ...).

    Memory: the flattened targets are held as one float32 (samples, prod(rest)) array; subsample very large dense
    targets (e.g. PSICOV's 512×512 maps) before calling.
    """
    if num_clusters < 1:
        raise ValueError(f"num_clusters={num_clusters} must be >= 1 (ORCA uses 10).")
    y = np.asarray(targets)
    if y.ndim == 0 or y.shape[0] < num_clusters:
        raise ValueError(f"targets has shape {y.shape}: need at least num_clusters={num_clusters} samples along "
                         "the first axis.")
    flat = y.reshape(y.shape[0], -1).astype(np.float32)
    if flat.shape[0] <= FULL_KMEANS_MAX_SAMPLES:
        _, labels, _ = k_means(flat, num_clusters, random_state=seed, n_init="auto")
    else:
        labels = MiniBatchKMeans(n_clusters=num_clusters, batch_size=FULL_KMEANS_MAX_SAMPLES, random_state=seed,
                                 n_init="auto").fit_predict(flat)
    return labels.astype(np.int32)
