"""Image source sets: the official CIFAR-10 recipe on locally built arrays (no TensorFlow), and digits."""

import numpy as np

from orca_jax.data import load_source
from orca_jax.data.image_sources import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    augment,
    cifar10_arrays,
    cifar10_source,
    normalize,
)


def _distinct_images(n, size=32):
    """Every pixel value distinct and non-zero, so a crop's offset and flip can be read back."""
    return (1.0 + np.arange(n * size * size * 3, dtype=np.float64).reshape(n, size, size, 3)).astype(np.float32)


def test_augment_is_a_seeded_padded_crop_and_flip():
    images = _distinct_images(64)
    out = augment(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert np.array_equal(out, augment(images, np.random.default_rng(0)))
    assert not np.array_equal(out, augment(images, np.random.default_rng(1)))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips, shifted = 0, 0
    for i in range(len(images)):
        crops = {(top, left): padded[i, top : top + 32, left : left + 32] for top in range(9) for left in range(9)}
        matches = [
            (top, left, flip)
            for (top, left), crop in crops.items()
            for flip in (False, True)
            if np.array_equal(out[i], crop[:, ::-1] if flip else crop)
        ]
        assert len(matches) == 1
        top, left, flip = matches[0]
        flips += flip
        shifted += (top, left) != (4, 4)
    assert 10 < flips < 54 and shifted > 50
    assert (out == 0).any()  # zero padding came into view


def test_normalize_uses_cifar_statistics():
    mean, std = np.asarray(CIFAR10_MEAN), np.asarray(CIFAR10_STD)
    images = np.stack([np.broadcast_to(mean, (2, 2, 3)), np.broadcast_to(mean + std, (2, 2, 3))])
    out = normalize(images)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_cifar10_source_from_tfds_format_examples():
    rng = np.random.default_rng(0)
    n = 40
    # Image i is one flat colour; its label is i % 10; the centre pixel survives any crop.
    colours = rng.integers(1, 255, (n, 3)).astype(np.uint8)
    examples = [
        {"id": f"train_{i}".encode(), "image": np.full((32, 32, 3), colours[i]), "label": np.int64(i % 10)}
        for i in range(n)
    ]
    images, labels = cifar10_arrays(examples)
    assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    source = cifar10_source(images, labels, size=16, seed=3)
    assert source.inputs.shape == (16, 32, 32, 3) and source.inputs.dtype == np.float32
    assert source.labels.dtype == np.int32 and source.modality == "image" and len(source.class_names) == 10
    again = cifar10_source(images, labels, size=16, seed=3)
    assert np.array_equal(source.inputs, again.inputs) and np.array_equal(source.labels, again.labels)
    other = cifar10_source(images, labels, size=16, seed=4)
    assert not np.array_equal(source.labels, other.labels)
    for x, y in zip(source.inputs, source.labels):
        (index,) = [i for i in range(n) if np.allclose(x[16, 16], normalize(colours[i] / 255.0), atol=1e-5)]
        assert y == index % 10
    # Padding pixels are zeros before normalisation, i.e. -mean/std after.
    padding_value = normalize(np.zeros((1, 1, 1, 3)))[0, 0, 0]
    assert any(np.allclose(x[0, 0], padding_value) or np.allclose(x[-1, -1], padding_value) for x in source.inputs)


def test_digits_source():
    source = load_source("digits", size=None, seed=0)
    assert source.inputs.shape == (1797, 8, 8, 3) and source.inputs.dtype == np.float32
    assert not np.array_equal(source.inputs[..., 0], source.inputs[..., 1])  # per-channel normalisation
    gray = source.inputs[..., 0] * CIFAR10_STD[0] + CIFAR10_MEAN[0]
    assert gray.min() >= -1e-6 and gray.max() <= 1 + 1e-6
    assert sorted(set(source.labels.tolist())) == list(range(10))
    small = load_source("digits", size=100, seed=5)
    assert np.array_equal(small.labels, load_source("digits", size=100, seed=5).labels)
    assert len(small) == 100
