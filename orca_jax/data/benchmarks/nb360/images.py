"""The image tasks: CIFAR-100, Spherical CIFAR-100 and Darcy flow (a PDE on an 85 x 85 grid)."""

from __future__ import annotations

import gzip
import pickle
import tarfile

import numpy as np

from orca_jax.data.benchmarks.arrays import Mapped
from orca_jax.data.benchmarks.files import corrupt, require
from orca_jax.data.benchmarks.nb360.readers import UNREADABLE, expect_shape, load_pickle, read_mat
from orca_jax.data.image_sources import augment
from orca_jax.data.types import Split, TaskData


# CIFAR-100 --------------------------------------------------------------------------------------------------

CIFAR100_MEAN = np.asarray((0.5071, 0.4867, 0.4408), np.float32)
CIFAR100_STD = np.asarray((0.2675, 0.2565, 0.2761), np.float32)


def _cifar100_normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 255]) NHWC -> float32 normalised with the CIFAR-100 statistics (the official transform)."""
    return ((images.astype(np.float32) / 255.0 - CIFAR100_MEAN) / CIFAR100_STD).astype(np.float32)


def _cifar100_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official training augmentation on normalised images: back to [0, 1] (where torchvision pads with zeros),
    random crop + flip, normalised again."""
    return _cifar100_normalize(augment(x * CIFAR100_STD + CIFAR100_MEAN, rng) * 255.0)


def load_cifar100(data_dir=None) -> TaskData:
    """The Python pickles inside the published `cifar-100-python.tar.gz`, read from the archive."""
    path = require("cifar100", "nb360/cifar100/cifar-100-python.tar.gz", data_dir)
    splits = {}
    try:
        with tarfile.open(path) as archive:
            for name in ("train", "test"):
                batch = pickle.load(archive.extractfile(f"cifar-100-python/{name}"), encoding="bytes")
                images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                splits[name] = Split(Mapped(np.ascontiguousarray(images), _cifar100_normalize),
                                     np.asarray(batch[b"fine_labels"], np.int64))
    except UNREADABLE as error:
        raise corrupt("cifar100", path, data_dir, error) from error
    return TaskData(splits["train"], splits["test"], "NHWC", "classification", 100,
                    train_transform=_cifar100_augment)


# Spherical CIFAR-100 ----------------------------------------------------------------------------------------


def _spherical_images(images: np.ndarray) -> np.ndarray:
    return (images.transpose(0, 2, 3, 1) / 255.0).astype(np.float32)


def load_spherical(data_dir=None) -> TaskData:
    """`s2_cifar100.gz`: a gzip-compressed pickle of {"train", "test"} -> {"images" [N, 3, 60, 60], "labels"},
    scaled by 1/255 without normalisation, as officially."""
    path = require("spherical", "nb360/spherical/s2_cifar100.gz", data_dir)
    data = load_pickle("spherical", path, data_dir, opener=gzip.open)
    splits = {}
    for name in ("train", "test"):
        images = np.asarray(data[name]["images"])
        expect_shape("spherical", path, data_dir, images, (None, 3, 60, 60))
        splits[name] = Split(Mapped(images, _spherical_images), np.asarray(data[name]["labels"], np.int64))
    return TaskData(splits["train"], splits["test"], "NHWC", "classification", 100)


# Darcy flow (NAS-Bench-360 version: FNO's piecewise-constant coefficients, resolution 421 subsampled by 5) -----

DARCY_SUBSAMPLE, DARCY_SIZE, DARCY_TRAIN, DARCY_TEST = 5, 85, 1000, 100


def load_darcy(data_dir=None) -> TaskData:
    """The first 1,000 solutions of `..._smooth1.mat` train and the first 100 of `..._smooth2.mat` test, on every
    5th grid point (85 x 85). Inputs: the coefficient, normalised per grid point with the training mean and
    (unbiased) deviation + 1e-5 (the official `UnitGaussianNormalizer`), then the x and y grid coordinates in [0, 1]
    as two more channels. Targets are the raw solutions: the official code normalises them the same way and decodes
    before loss and metric, which `task.normalize_targets=elementwise` does (configs/nb360.py:darcy)."""
    parts = {}
    for k, count in ((1, DARCY_TRAIN), (2, DARCY_TEST)):
        path = require("darcy", f"nb360/darcy/piececonst_r421_N1024_smooth{k}.mat", data_dir)
        mat = read_mat("darcy", path, data_dir, ("coeff", "sol"))
        step = slice(None, None, DARCY_SUBSAMPLE)
        parts[k] = [np.asarray(mat[f][:count, step, step][:, :DARCY_SIZE, :DARCY_SIZE], np.float32)
                    for f in ("coeff", "sol")]
    (x_train, y_train), (x_test, y_test) = parts[1], parts[2]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0, ddof=1) + 1e-5
    axis = np.linspace(0.0, 1.0, DARCY_SIZE, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1)  # [..., 0] varies along the width, [..., 1] along the height

    def inputs(coeff):
        return np.concatenate([((coeff - mean) / std)[..., None], np.broadcast_to(grid, (*coeff.shape, 2))],
                              axis=-1).astype(np.float32)

    return TaskData(Split(inputs(x_train), y_train), Split(inputs(x_test), y_test), "NHWC", "dense_2d_relative_l2")
