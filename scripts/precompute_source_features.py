"""Embeds a source set through a pretrained body's own embedding layer and caches the features (see
`orca_jax.data.source_features`), then prints where they are and how large they are relative to the OTDD's epsilon.

    python scripts/precompute_source_features.py --body CKPT --source NAME [--size 5000] [--seed 0]
        [--cache_dir DIR] [--data_dir TFDS_DIR] [--batch_size B]

CKPT is a snapshot directory or a hub id; NAME is python_docs or conll2003 for a text body, digits or cifar10 for
Swin (conll2003 and cifar10 need TensorFlow and a prepared tensorflow-datasets directory). A second run with the
same arguments reads the cache.
"""

import argparse
import sys

import numpy as np

from orca_jax.data import OFFICIAL_SOURCE_SIZE, SOURCES, load_or_compute

EPSILON = 0.1  # the OTDD's Sinkhorn epsilon (official entreg)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", required=True, help="checkpoint: snapshot directory or hub id")
    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--size", type=int, default=OFFICIAL_SOURCE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="default: ~/.cache/orca_jax/source_features")
    parser.add_argument("--data_dir", default=None, help="tensorflow-datasets data dir (default: tfds's)")
    parser.add_argument("--batch_size", type=int, default=None)
    args = parser.parse_args(argv)
    result = load_or_compute(
        args.body, args.source, size=args.size, seed=args.seed, cache_dir=args.cache_dir, data_dir=args.data_dir,
        batch_size=args.batch_size,
    )
    n, dim = result.features.shape
    distance = result.metadata["mean_squared_pairwise_distance"]
    counts = np.bincount(result.labels, minlength=len(result.class_names))
    print(f"{'read from cache' if result.from_cache else 'saved'}: {result.path}")
    print(f"N = {n}, D = {dim}, {len(result.class_names)} classes: "
          + ", ".join(f"{name} {count}" for name, count in zip(result.class_names, counts)))
    print(f"mean squared pairwise distance = {distance:.4g} = {distance / EPSILON:.4g} x epsilon ({EPSILON}); "
          f"mean OTDD feature cost |x - x'|^2 / 2 = {distance / (2 * EPSILON):.4g} x epsilon")
    return 0


if __name__ == "__main__":
    sys.exit(main())
