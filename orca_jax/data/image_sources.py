"""Image source sets for Swin bodies: CIFAR-10 (the paper's source) and an offline stand-in.

- `cifar10` (tensorflow-datasets, train split) follows the official recipe: a random subset of `size` training
  images (5,000), with the training augmentation applied once (random crop 32 after zero padding of 4, random
  horizontal flip), scaled to [0, 1] and normalised with the CIFAR-10 mean and std below. The randomness is
  NumPy's, from `seed`: one stream picks the subset, an independent one draws the augmentation.
- `digits` (offline): scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1], repeated
  to 3 channels and normalised with the same statistics. Not augmented: a 4-pixel-padded random crop would cut up
  to half of an 8x8 digit away. It stands in for CIFAR-10 where there is no network and no TensorFlow.

Images are NHWC float32 at their own size; the resize to the body's image size happens when they are embedded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from orca_jax.data.source_set import SourceSet, subset_indices
from orca_jax.data.tfds_io import read_tfds

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def normalize(images: np.ndarray) -> np.ndarray:
    """[0, 1] NHWC RGB images -> float32, normalised per channel with the CIFAR-10 mean and std."""
    return ((images - np.asarray(CIFAR10_MEAN)) / np.asarray(CIFAR10_STD)).astype(np.float32)


def augment(images: np.ndarray, rng: np.random.Generator, *, padding: int = 4) -> np.ndarray:
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip(), per image, on NHWC arrays.

    The padding is zeros, which torchvision adds to the uint8 image before ToTensor and Normalize, so apply this
    before `normalize`.
    """
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    top = rng.integers(0, 2 * padding + 1, n)
    left = rng.integers(0, 2 * padding + 1, n)
    flip = rng.random(n) < 0.5
    rows = top[:, None] + np.arange(height)
    cols = left[:, None] + np.arange(width)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def cifar10_arrays(examples: Iterable[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    """tfds `cifar10` examples (`image`: uint8 [32, 32, 3], `label`) -> uint8 NHWC images and int32 labels."""
    images, labels = [], []
    for example in examples:
        images.append(example["image"])
        labels.append(example["label"])
    return np.stack(images).astype(np.uint8), np.asarray(labels, np.int32)


def cifar10_source(images: np.ndarray, labels: np.ndarray, size: int | None, seed: int) -> SourceSet:
    """The official CIFAR-10 source from the uint8 training images: seeded subset, augmentation, normalisation."""
    subset_rng, augment_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    keep = subset_indices(len(labels), size, subset_rng, "cifar10")
    chosen = augment(images[keep].astype(np.float32) / 255.0, augment_rng)
    return SourceSet("cifar10", "image", normalize(chosen), labels[keep].astype(np.int32), CIFAR10_CLASSES)


def load_cifar10(size: int | None, seed: int, data_dir: str | os.PathLike | None) -> SourceSet:
    images, labels = cifar10_arrays(read_tfds("cifar10", "train", data_dir))
    return cifar10_source(images, labels, size, seed)


def load_digits(size: int | None, seed: int, data_dir: str | os.PathLike | None = None) -> SourceSet:
    from sklearn.datasets import load_digits as sklearn_digits

    del data_dir  # bundled with scikit-learn
    digits = sklearn_digits()
    keep = subset_indices(len(digits.target), size, np.random.default_rng(seed), "digits")
    gray = digits.images[keep] / 16.0  # sklearn's digits are integers 0..16
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    return SourceSet("digits", "image", normalize(rgb), digits.target[keep].astype(np.int32), DIGITS_CLASSES)
