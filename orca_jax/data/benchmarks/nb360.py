"""NAS-Bench-360's ten tasks from the files its authors distribute, preprocessed and split as the official ORCA
code does (differences are listed per task).

Files live under `DATA/nb360/<task>/` (`orca_jax.data.benchmarks.files`); `scripts/prepare_data.py TASK` fetches
them. Inputs are channels last: sequences `[N, length, channels]` for RoBERTa, images `[N, H, W, channels]` for
Swin. The official code trains on the published training and validation data together and selects on the test set;
here `TaskData.train` is the same training data and `load_task` carves the validation split from it, so the test
split is evaluated once.

| task | file(s) | input | target | notes |
|---|---|---|---|---|
| cifar100 | cifar-100-python.tar.gz (pickles) | 32x32x3, CIFAR-100 mean/std | 100 classes | crop + flip in training |
| spherical | s2_cifar100.gz (gzip pickle) | 60x60x3, /255 | 100 classes | |
| ninapro | ninapro_*.npy, label_*.npy | 16x52x1 | 18 classes | train + val train |
| fsd50k | audio.zip (1 s wav chunks, manifests) | 96x102x1 log-mel | 200 labels | prepared features |
| darcy | piececonst_r421_N1024_smooth{1,2}.mat | 85x85x3 (coefficient, grid) | 85x85 solution | |
| psicov | protein.zip (pickles, npy) | 512x512x57 pair features | 512x512 distances | lazy; lengths meta |
| cosmic | deepCR.ACS-WFC.{train,test}.tar (npy) | 128x128x1 | 128x128 mask | prepared crops |
| ecg | challenge2017.pkl | 1000x1 windows | 4 classes | |
| satellite | satellite_{train,test}.npy (pickled dicts) | 46x1 | 24 classes | |
| deepsea | deepsea_filtered.npz | 1000x4 one-hot | 36 labels | train + val train |
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import json
import logging
import pickle
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from orca_jax.atomic import atomic_path
from orca_jax.data.benchmarks.arrays import Concat, Mapped, PerExample, npy_memmap, npz_arrays
from orca_jax.data.benchmarks.files import MissingFile, corrupt, data_root, require
from orca_jax.data.image_sources import augment
from orca_jax.data.types import Split, TaskData

log = logging.getLogger(__name__)

_UNREADABLE = (EOFError, OSError, ValueError, pickle.UnpicklingError, KeyError, tarfile.TarError)


def _load_pickle(task: str, path: Path, data_dir, *, opener=open, **options):
    try:
        with opener(path, "rb") as f:
            return pickle.load(f, **options)
    except _UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def _load_npy(task: str, path: Path, data_dir, **options) -> np.ndarray:
    try:
        return np.load(path, **options)
    except _UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def _memmap(task: str, path: Path, data_dir) -> np.memmap:
    try:
        return npy_memmap(path)
    except _UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error


def _expect_shape(task: str, path: Path, data_dir, array, shape: tuple) -> None:
    """`shape` with None for any size; a mismatch means a different file than the published one."""
    if len(array.shape) != len(shape) or any(s is not None and s != a for s, a in zip(shape, array.shape)):
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise corrupt(task, path, data_dir, ValueError(f"array of shape {tuple(array.shape)}, expected {wanted}"))


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
    except _UNREADABLE as error:
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
    data = _load_pickle("spherical", path, data_dir, opener=gzip.open)
    splits = {}
    for name in ("train", "test"):
        images = np.asarray(data[name]["images"])
        _expect_shape("spherical", path, data_dir, images, (None, 3, 60, 60))
        splits[name] = Split(Mapped(images, _spherical_images), np.asarray(data[name]["labels"], np.int64))
    return TaskData(splits["train"], splits["test"], "NHWC", "classification", 100)


# NinaPro DB5 ------------------------------------------------------------------------------------------------


def load_ninapro(data_dir=None) -> TaskData:
    """`ninapro_{train,val,test}.npy` [N, 52, 16] (52 time steps of 16 EMG channels) and `label_*.npy`; an example
    is the official 16 x 52 single-channel image. Train and validation train, as officially."""
    def split(names: tuple[str, ...]) -> Split:
        xs, ys = [], []
        for name in names:
            x_path = require("ninapro", f"nb360/ninapro/ninapro_{name}.npy", data_dir)
            y_path = require("ninapro", f"nb360/ninapro/label_{name}.npy", data_dir)
            x = _load_npy("ninapro", x_path, data_dir, encoding="bytes", allow_pickle=True)
            _expect_shape("ninapro", x_path, data_dir, x, (None, 52, 16))
            xs.append(np.asarray(x, np.float32).transpose(0, 2, 1)[..., None])
            ys.append(_load_npy("ninapro", y_path, data_dir, encoding="bytes", allow_pickle=True).astype(np.int64))
        return Split(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))

    return TaskData(split(("train", "val")), split(("test",)), "NHWC", "classification", 18)


# ECG (PhysioNet/CinC Challenge 2017) ------------------------------------------------------------------------

ECG_CLASSES = {"N": 0, "A": 1, "O": 2, "~": 3}
ECG_WINDOW, ECG_STRIDE = 1000, 500
ECG_STRIDE_DIVISORS = np.asarray([1, 6, 2, 20])  # per class: the official slide-and-cut oversampling
ECG_TEST_FRACTION, ECG_SPLIT_SEED = 0.1, 0  # the official record-level split


def _windows(signal: np.ndarray, starts: np.ndarray) -> np.ndarray:
    return signal[starts[:, None] + np.arange(ECG_WINDOW)][..., None]


def _ecg_split(signal: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, labels: np.ndarray,
               records: np.ndarray) -> Split:
    """Windows of 1,000 samples cut from each record with its class's stride (500 / 1, 6, 2, 20), as the official
    slide-and-cut: the last start is below length - 1000."""
    starts, classes = [], []
    for r in records:
        stride = ECG_STRIDE // ECG_STRIDE_DIVISORS[labels[r]]
        first = np.arange(0, lengths[r] - ECG_WINDOW, stride)
        starts.append(offsets[r] + first)
        classes.append(np.full(len(first), labels[r]))
    return Split(Mapped(np.concatenate(starts), functools.partial(_windows, signal)), np.concatenate(classes))


def load_ecg(data_dir=None) -> TaskData:
    """`challenge2017.pkl`: {"data": one 300 Hz recording per record, "label": "N"/"A"/"O"/"~"}. Each record is
    z-scored, records are split 90/10 (scikit-learn, random_state 0, as officially) and cut into windows; the
    windows are read lazily from one array of all records."""
    from sklearn.model_selection import train_test_split

    path = require("ecg", "nb360/ecg/challenge2017.pkl", data_dir)
    data = _load_pickle("ecg", path, data_dir)
    unknown = sorted({str(label) for label in data["label"]} - set(ECG_CLASSES))
    if unknown:
        raise corrupt("ecg", path, data_dir, ValueError(f"labels {unknown}, expected {sorted(ECG_CLASSES)}"))
    labels = np.asarray([ECG_CLASSES[label] for label in data["label"]])
    records = [np.asarray(r, np.float64) for r in data["data"]]
    signal = np.concatenate([(r - r.mean()) / r.std() for r in records]).astype(np.float32)
    lengths = np.asarray([len(r) for r in records])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    train, test = train_test_split(np.arange(len(records)), test_size=ECG_TEST_FRACTION, random_state=ECG_SPLIT_SEED)
    return TaskData(_ecg_split(signal, offsets, lengths, labels, train),
                    _ecg_split(signal, offsets, lengths, labels, test), "NLC", "classification_f1", 4)


# Satellite --------------------------------------------------------------------------------------------------


def load_satellite(data_dir=None) -> TaskData:
    """`satellite_{train,test}.npy`: pickled {"data" [N, 46], "label" 1..24}; labels shifted to 0..23."""
    def split(name: str) -> Split:
        path = require("satellite", f"nb360/satellite/satellite_{name}.npy", data_dir)
        data = _load_npy("satellite", path, data_dir, allow_pickle=True)[()]
        x = np.asarray(data["data"])
        _expect_shape("satellite", path, data_dir, x, (None, 46))
        return Split(x[:, :, None], np.asarray(data["label"], np.int64) - 1)

    return TaskData(split("train"), split("test"), "NLC", "classification", 24)


# DeepSEA ----------------------------------------------------------------------------------------------------


def load_deepsea(data_dir=None) -> TaskData:
    """`deepsea_filtered.npz`: one-hot DNA `x_*` [N, 1000, 4] and 36 chromatin labels `y_*`; train and validation
    train, as officially. Members are memory-mapped (decompressed once next to the archive if compressed)."""
    path = require("deepsea", "nb360/deepsea/deepsea_filtered.npz", data_dir)
    try:
        arrays = npz_arrays(path, path.with_suffix(".members"))
    except (*_UNREADABLE, zipfile.BadZipFile) as error:
        raise corrupt("deepsea", path, data_dir, error) from error
    missing = sorted({f"{k}_{s}" for k in "xy" for s in ("train", "val", "test")} - set(arrays))
    if missing:
        raise corrupt("deepsea", path, data_dir, KeyError(f"members {missing} missing"))
    _expect_shape("deepsea", path, data_dir, arrays["x_test"], (None, 1000, 4))
    train = Split(Concat([arrays["x_train"], arrays["x_val"]]), Concat([arrays["y_train"], arrays["y_val"]]))
    return TaskData(train, Split(arrays["x_test"], arrays["y_test"]), "NLC", "multilabel_auroc", 36)


# Darcy flow (NAS-Bench-360 version: FNO's piecewise-constant coefficients, resolution 421 subsampled by 5) -----

DARCY_SUBSAMPLE, DARCY_SIZE, DARCY_TRAIN, DARCY_TEST = 5, 85, 1000, 100


def _read_mat(task: str, path: Path, data_dir, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Fields of a MATLAB file: v5 through SciPy, v7.3 (HDF5, stored transposed) through h5py."""
    import scipy.io

    try:
        try:
            data = scipy.io.loadmat(path, variable_names=fields)
        except NotImplementedError:  # v7.3
            import h5py

            with h5py.File(path, "r") as f:
                data = {k: np.asarray(f[k]).transpose() for k in fields if k in f}
    except _UNREADABLE as error:
        raise corrupt(task, path, data_dir, error) from error
    missing = [k for k in fields if k not in data]
    if missing:
        raise corrupt(task, path, data_dir, KeyError(f"fields {missing} missing"))
    return data


def load_darcy(data_dir=None) -> TaskData:
    """The first 1,000 solutions of `..._smooth1.mat` train and the first 100 of `..._smooth2.mat` test, on every
    5th grid point (85 x 85). Inputs: the coefficient, normalised per grid point with the training mean and
    (unbiased) deviation + 1e-5 (the official `UnitGaussianNormalizer`), then the x and y grid coordinates in [0, 1]
    as two more channels. Targets are the raw solutions: the official code normalises them the same way and decodes
    before loss and metric, which `task.normalize_targets=elementwise` does (configs/nb360.py:darcy)."""
    parts = {}
    for k, count in ((1, DARCY_TRAIN), (2, DARCY_TEST)):
        path = require("darcy", f"nb360/darcy/piececonst_r421_N1024_smooth{k}.mat", data_dir)
        mat = _read_mat("darcy", path, data_dir, ("coeff", "sol"))
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


# PSICOV (trained on DeepCov) --------------------------------------------------------------------------------

PSICOV_WINDOW, PSICOV_PAD, PSICOV_CHANNELS = 512, 10, 57
PSICOV_CROP_SEED = 0  # proteins longer than the window are cropped at a position drawn once per protein


def _protein_list(task: str, path: Path, data_dir) -> list[str]:
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise corrupt(task, path, data_dir, error) from error


def _place(padded: np.ndarray, offset: tuple[int, int] | None, fill: float) -> np.ndarray:
    """The official 512 x 512 window: a padded protein that fits goes in the top-left corner (the rest is `fill`),
    a longer one is cropped at `offset`."""
    if offset is not None:
        return padded[offset[0] : offset[0] + PSICOV_WINDOW, offset[1] : offset[1] + PSICOV_WINDOW]
    out = np.full((PSICOV_WINDOW, PSICOV_WINDOW, *padded.shape[2:]), fill, np.float32)
    out[: len(padded), : len(padded)] = padded
    return out


def protein_features(features: dict) -> np.ndarray:
    """[L, L, 57] pair features from a DeepCov/PSICOV feature pickle, in the official channel order: each
    per-residue feature (3 secondary-structure rows, 22 PSSM columns, solvent accessibility, entropy) as a row
    map and its transpose, then the CCMpred, FreeContact and potential pair maps."""
    length = len(features["seq"])
    expected = {"ss": (3, length), "pssm": (length, 22), "sa": (length,), "entropy": (length,),
                "ccmpred": (length, length), "freecon": (length, length), "potential": (length, length)}
    for key, shape in expected.items():
        if np.shape(features[key]) != shape:
            raise ValueError(f"feature {key!r} has shape {np.shape(features[key])}, expected {shape}")
    rows = [*np.asarray(features["ss"]), *np.asarray(features["pssm"]).T, features["sa"], features["entropy"]]
    channels = []
    for row in rows:
        tiled = np.broadcast_to(np.asarray(row, np.float32)[None, :], (length, length))
        channels += [tiled, tiled.T]
    channels += [np.asarray(features[k], np.float32) for k in ("ccmpred", "freecon", "potential")]
    return np.stack(channels, axis=-1)


def _protein_input(paths: list[Path], offsets: list, row: int) -> np.ndarray:
    with open(paths[row], "rb") as f:
        pair = protein_features(pickle.load(f))
    length, half = len(pair), PSICOV_PAD // 2
    padded = np.zeros((length + PSICOV_PAD, length + PSICOV_PAD, PSICOV_CHANNELS), np.float32)
    padded[half : half + length, half : half + length] = pair
    return np.nan_to_num(_place(padded, offsets[row], 0.0), nan=0.0)


def distance_map(distances: np.ndarray) -> np.ndarray:
    """The official clean-up of a C-beta distance map: distances below 1 A become 1; the diagonal takes the mean
    of its defined neighbours (1 where neither is defined)."""
    y = np.array(distances, np.float32)
    y[y < 1.0] = 1.0
    n = len(y)
    y[0, 0], y[n - 1, n - 1] = y[0, 1], y[n - 1, n - 2]
    for q in range(1, n - 1):
        if np.isnan(y[q, q]):
            continue
        left, right = y[q, q - 1], y[q, q + 1]
        y[q, q] = (1.0 if np.isnan(left) and np.isnan(right) else right if np.isnan(left)
                   else left if np.isnan(right) else (left + right) / 2.0)
    return y


def _protein_target(paths: list[Path], offsets: list, row: int) -> np.ndarray:
    length, _, distances = np.load(paths[row], allow_pickle=True)
    half = PSICOV_PAD // 2
    padded = np.full((length + PSICOV_PAD, length + PSICOV_PAD), 100.0, np.float32)
    padded[half : half + length, half : half + length] = distance_map(distances)
    return np.nan_to_num(_place(padded, offsets[row], 100.0), nan=0.0)


def _protein_lengths(root: Path, name: str, ids: list[str]) -> np.ndarray:
    """Protein lengths (from the distance files, as officially), cached in `<name>_lengths.json` beside the lists:
    reading them means opening every distance map."""
    cache = root / f"{name}_lengths.json"
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [i for i in ids if i not in known]
    for pdb in missing:
        known[pdb] = int(np.load(root / name / "distance" / f"{pdb}-cb.npy", allow_pickle=True)[0])
    if missing:
        try:
            cache.write_text(json.dumps(known))
        except OSError:  # a read-only data directory: recompute next time
            log.info("psicov: cannot cache protein lengths in %s", cache)
    return np.asarray([known[i] for i in ids], np.int64)


def _protein_split(root: Path, name: str, ids: list[str], data_dir) -> Split:
    for pdb in ids[:1]:  # the layout check: a wrongly unpacked archive fails here, naming the file
        for sub in (f"{name}/features/{pdb}.pkl", f"{name}/distance/{pdb}-cb.npy"):
            require("psicov", str((root / sub).relative_to(data_root(data_dir))), data_dir)
    lengths = _protein_lengths(root, name, ids)
    offsets = []
    for i, length in enumerate(lengths):
        excess = length + PSICOV_PAD - PSICOV_WINDOW
        offsets.append(None if excess <= 0 else
                       tuple(int(v) for v in np.random.default_rng([PSICOV_CROP_SEED, i]).integers(0, excess + 1, 2)))
    features = [root / name / "features" / f"{pdb}.pkl" for pdb in ids]
    distances = [root / name / "distance" / f"{pdb}-cb.npy" for pdb in ids]
    x = PerExample(len(ids), functools.partial(_protein_input, features, offsets),
                   (PSICOV_WINDOW, PSICOV_WINDOW, PSICOV_CHANNELS), np.float32)
    y = PerExample(len(ids), functools.partial(_protein_target, distances, offsets),
                   (PSICOV_WINDOW, PSICOV_WINDOW), np.float32)
    return Split(x, y, {"length": lengths})


def load_psicov(data_dir=None) -> TaskData:
    """`protein.zip` unpacked: DeepCov's 3,356 proteins train (`deepcov.lst`), PSICOV's 150 test (`psicov.lst`).
    Each example is built when read: the 57 pair-feature maps and the distance map, padded by 5 residues on each
    side and placed in the official 512 x 512 window (inputs 0 and targets 100 outside the protein, NaN -> 0).
    `meta["length"]` holds each protein's length for the MAE8 metric. Training targets are clipped at 16 A by the
    config (`task.clip_targets`), test targets are not, as officially."""
    root = require("psicov", "nb360/psicov/protein", data_dir)
    splits = {}
    for name in ("deepcov", "psicov"):
        lst = require("psicov", f"nb360/psicov/protein/{name}.lst", data_dir)
        splits[name] = _protein_split(root, name, _protein_list("psicov", lst, data_dir), data_dir)
    return TaskData(splits["deepcov"], splits["psicov"], "NHWC", "distance_map")


# Cosmic (deepCR ACS/WFC cosmic-ray masks) -------------------------------------------------------------------

COSMIC_CROP, COSMIC_OFFSET = 128, 64  # the official fixed crop
# Fields of the deepCR ACS/WFC data by type; the official loaders keep the F435W galaxy ("GAL") fields.
COSMIC_GALAXY_FIELDS = frozenset({
    "10182_pb", "10182_pd", "10190_13", "10190_28", "10260_5", "10260_7", "10342_3", "10407_3", "10584_13", "10760_2",
    "10760_4", "12058_1", "12058_12", "12058_16", "12058_6", "12513_2", "12513_3", "13057_1", "13364_95", "13691_11",
    "13737_2", "13737_3", "13804_6", "14343_1", "14704_1", "9490_a2", "9490_a3"})
COSMIC_OTHER_FIELDS = frozenset({
    "10005_10", "10092_1", "10120_3", "10146_3", "10146_4", "10349_30", "10524_7", "10536_13", "10595_2", "10595_7",
    "10631_1", "10631_3", "10631_4", "10775_29", "10775_52", "10775_ab", "10775_ad", "11340_11", "11586_5", "12103_a3",
    "12438_1", "12602_1", "12602_2", "13375_4", "13375_7", "13389_10", "13498_b1", "13671_35", "13718_6", "14164_1",
    "14164_9", "15100_2", "15647_13", "9405_4b", "9405_6d", "9425_2", "9425_4", "9442_1", "9442_3", "9442_5",
    "9450_14", "9450_16", "9583_99", "9694_6", "9978_5e"})
COSMIC_PARTS = ("image", "cr", "ignore", "sky")


def cosmic_files(split_dir: Path) -> list[Path]:
    """The official selection, in a fixed (sorted) order: `f435w/<proposal>/<visit>/*.npy` of galaxy fields,
    without the `sky.npy` files."""
    files = []
    for visit in sorted((split_dir / "f435w").glob("*/*")):
        field = f"{visit.parent.name}_{visit.name}"
        if field not in COSMIC_GALAXY_FIELDS | COSMIC_OTHER_FIELDS:
            raise ValueError(f"{visit}: field {field!r} is not one of the deepCR ACS/WFC fields the official "
                             "loader knows; is this the published archive?")
        if field in COSMIC_GALAXY_FIELDS:
            files += sorted(f for f in visit.glob("*.npy") if f.name != "sky.npy")
    return files


def prepare_cosmic(data_dir=None) -> None:
    """Crops every selected exposure once to the official 128 x 128 window and writes memory-mappable arrays,
    `prepared/<split>_{image,cr,ignore,sky}.npy`: the loader then reads 5,250 small crops instead of 5,250 files.
    `sky` is each exposure's sky level (the official augmentation adds U(-0.9, 3) x sky; 0 without `sky.npy`)."""
    root = data_root(data_dir) / "nb360" / "cosmic"
    window = slice(COSMIC_OFFSET, COSMIC_OFFSET + COSMIC_CROP)
    for split in ("train", "test"):
        files = cosmic_files(require("cosmic", f"nb360/cosmic/npy_{split}", data_dir))
        if not files:
            raise MissingFile(f"Task 'cosmic': no galaxy-field exposures under {root / f'npy_{split}'}/f435w.")
        out = root / "prepared"
        out.mkdir(parents=True, exist_ok=True)
        shape = (len(files), COSMIC_CROP, COSMIC_CROP)
        with contextlib.ExitStack() as files_written:  # all of a split's arrays, or none
            part = {name: files_written.enter_context(atomic_path(out / f"{split}_{name}.npy"))
                    for name in ("image", "cr", "ignore", "sky")}
            arrays = {name: np.lib.format.open_memmap(part[name], "w+", dtype, shape)
                      for name, dtype in (("image", np.float32), ("cr", np.uint8), ("ignore", np.uint8))}
            sky = np.zeros(len(files), np.float32)
            for i, path in enumerate(files):
                data = np.load(path)
                arrays["image"][i] = data[0][window, window]
                arrays["cr"][i] = data[1][window, window]
                arrays["ignore"][i] = data[2][window, window] if len(data) == 3 else 0
                sky_file = path.parent / "sky.npy"
                if sky_file.is_file():
                    sky[i] = np.load(sky_file)[int(path.name.split("_")[0]) - 1]
            for array in arrays.values():
                array.flush()
            del arrays
            with open(part["sky"], "wb") as f:
                np.save(f, sky)


def _cosmic_inputs(images: np.ndarray) -> np.ndarray:
    return images[..., None].astype(np.float32)


def _cosmic_targets(cr: np.ndarray, ignore: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return (cr[rows] * (1 - ignore[rows])).astype(np.float32)


def load_cosmic(data_dir=None) -> TaskData:
    """The prepared crops (`scripts/prepare_data.py cosmic`): inputs the 128 x 128 exposure, targets the cosmic-ray
    mask with ignored pixels set to 0 (the official loss masks both outputs and targets), `meta["ignore"]` the
    ignore mask, so the metric can leave ignored pixels out."""
    splits = {}
    for split in ("train", "test"):
        parts = {name: _memmap("cosmic", require("cosmic", f"nb360/cosmic/prepared/{split}_{name}.npy", data_dir,
                                                 made_by_prepare=True), data_dir)
                 for name in ("image", "cr", "ignore")}
        ignore = np.asarray(parts["ignore"])
        rows = np.arange(len(ignore))
        targets = Mapped(rows, functools.partial(_cosmic_targets, parts["cr"], parts["ignore"]))
        splits[split] = Split(Mapped(parts["image"], _cosmic_inputs), targets, {"ignore": ignore})
    return TaskData(splits["train"], splits["test"], "NHWC", "dense_2d_binary")


# FSD50K (NAS-Bench-360's 1 s chunks of 22,050 Hz audio) -----------------------------------------------------

FSD_RATE, FSD_MELS, FSD_FRAMES = 22050, 96, 101
FSD_N_FFT, FSD_WIN, FSD_HOP = 96 * 20, int(FSD_RATE * 0.03), int(FSD_RATE * 0.01)  # the official mel front end
FSD_CHUNK_SEED = 0  # the training chunk of each clip (the official draw is unseeded)
FSD_MIX_PROBABILITY, FSD_MIX_MAX = 0.75, 0.5


def mel_filterbank(sample_rate: int = FSD_RATE, n_fft: int = FSD_N_FFT, n_mels: int = FSD_MELS) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] triangular HTK-mel filters from 0 Hz to sample_rate // 2, unnormalised (torchaudio's
    MelSpectrogram defaults)."""
    def to_mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    frequencies = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = 700.0 * (10 ** (np.linspace(to_mel(0.0), to_mel(sample_rate // 2), n_mels + 2) / 2595.0) - 1.0)
    slopes = edges[None, :] - frequencies[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    return np.maximum(0.0, np.minimum(down, up))


def power_spectrogram(audio: np.ndarray) -> np.ndarray:
    """[n_fft // 2 + 1, frames] |STFT|^2 as torch.stft computes it for torchaudio: centred frames (reflect
    padding), a periodic Hann window of FSD_WIN samples zero-padded to n_fft in the middle."""
    window = np.zeros(FSD_N_FFT)
    left = (FSD_N_FFT - FSD_WIN) // 2
    window[left : left + FSD_WIN] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FSD_WIN) / FSD_WIN)
    padded = np.pad(np.asarray(audio, np.float64), FSD_N_FFT // 2, mode="reflect")
    frames = 1 + (len(padded) - FSD_N_FFT) // FSD_HOP
    index = np.arange(frames)[:, None] * FSD_HOP + np.arange(FSD_N_FFT)
    return (np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2).T


@functools.cache
def _filterbank() -> np.ndarray:
    return mel_filterbank()


def log_mel(audio: np.ndarray) -> np.ndarray:
    """The official FSD50K feature of one clip: mel power spectrogram -> dB (librosa's power_to_db: floor 1e-10,
    80 dB below the peak) + 75, minus its mean. float32 [96, frames]."""
    mel = _filterbank().T @ power_spectrogram(audio)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0) + 75.0
    return (db - db.mean()).astype(np.float32)


def _read_wav(path: Path) -> np.ndarray:
    """PCM wav as float in [-1, 1), tiled to at least one second (the official `min_duration`)."""
    import scipy.io.wavfile

    rate, audio = scipy.io.wavfile.read(path)
    if rate != FSD_RATE:
        raise ValueError(f"{path} is sampled at {rate} Hz; the published chunks are {FSD_RATE} Hz")
    if audio.dtype.kind == "i":
        audio = audio / float(np.iinfo(audio.dtype).max + 1)
    audio = np.asarray(audio, np.float32)
    if len(audio) < FSD_RATE:
        audio = np.tile(audio, FSD_RATE // len(audio) + 1)[:FSD_RATE]
    return audio


def _fsd_root(data_dir) -> Path:
    """The directory holding `chunks/` (the manifests) in the unpacked `audio.zip`."""
    base = require("fsd50k", "nb360/fsd50k", data_dir)
    for candidate in (base, base / "data"):
        if (candidate / "chunks" / "tr.csv").is_file():
            return candidate
    raise MissingFile(f"Task 'fsd50k': no chunks/tr.csv under {base} or {base / 'data'}; unpack audio.zip there "
                      f"(`python scripts/prepare_data.py fsd50k --data_dir {data_root(data_dir)}`).")


def _resolve(root: Path, manifest_path: str) -> Path:
    """A chunk named in a manifest, found under `root` by its trailing path components (the manifests hold paths
    of the machine that wrote them)."""
    parts = PurePosixPath(manifest_path).parts
    for k in range(len(parts)):
        candidate = root.joinpath(*parts[k:])
        if candidate.is_file():
            return candidate
    raise MissingFile(f"Task 'fsd50k': the chunk {manifest_path!r} of the manifests is not under {root}.")


def _manifest(root: Path, name: str, labels: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(chunk paths, clip ids, multi-hot targets) of `chunks/<name>.csv` (columns files, labels, ext)."""
    with open(root / "chunks" / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    targets = np.zeros((len(rows), len(labels)), np.uint8)
    for i, row in enumerate(rows):
        targets[i, [labels[label] for label in row["labels"].split(",")]] = 1
    return [r["files"] for r in rows], np.asarray([int(r["ext"]) for r in rows], np.int64), targets


def _write_features(out: Path, name: str, root: Path, files: list[str], clips: np.ndarray,
                    targets: np.ndarray) -> None:
    # Features [96, 101] plus the official zero column (F.pad(..., (0, 1))), 102 frames.
    with atomic_path(out / f"{name}_x.npy") as part:
        x = np.lib.format.open_memmap(part, "w+", np.float32, (len(files), FSD_MELS, FSD_FRAMES + 1))
        for i, file in enumerate(files):
            x[i] = 0.0
            x[i, :, :FSD_FRAMES] = log_mel(_read_wav(_resolve(root, file)))[:, :FSD_FRAMES]
        x.flush()
        del x
    for suffix, array in (("y", targets), ("clip", clips)):
        with atomic_path(out / f"{name}_{suffix}.npy") as part, open(part, "wb") as f:
            np.save(f, array)


def prepare_fsd50k(data_dir=None) -> None:
    """Computes the official log-mel features once (the official loader materialises its training set too):
    `prepared/train_*` holds one chunk per training clip (drawn with FSD_CHUNK_SEED; officially unseeded),
    `prepared/test_*` every chunk of every evaluation clip with its clip id, `prepared/background.npy` the
    features of the background-noise files that training mixes in."""
    root = _fsd_root(data_dir)
    with open(root / "chunks" / "lbl_map.json") as f:
        labels = json.load(f)
    out = data_root(data_dir) / "nb360" / "fsd50k" / "prepared"
    out.mkdir(parents=True, exist_ok=True)
    files, clips, targets = _manifest(root, "tr", labels)
    rng = np.random.default_rng(FSD_CHUNK_SEED)
    chosen = np.asarray([rng.choice(np.flatnonzero(clips == clip)) for clip in np.unique(clips)], np.int64)
    _write_features(out, "train", root, [files[i] for i in chosen], clips[chosen], targets[chosen])
    files, clips, targets = _manifest(root, "eval", labels)
    _write_features(out, "test", root, files, clips, targets)
    noise = sorted((root / "noise_22050").glob("*.wav"))
    background = [log_mel(_read_wav(f)) for f in noise]
    np.savez(out / "background.npz", features=np.concatenate(background, axis=1) if background else
             np.zeros((FSD_MELS, 0), np.float32), starts=np.cumsum([0] + [b.shape[1] for b in background]))


def spec_augment(spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official SpecAugment: 1-2 masks, each a band of up to 15 % of the mel bins and one of up to 20 % of the
    frames, set to the spectrogram's minimum."""
    spec, value = spec.copy(), spec.min()
    mels, frames = spec.shape
    for _ in range(rng.integers(1, 3)):
        width = int(rng.uniform(0.0, 0.15) * mels)
        start = int(rng.uniform(0.0, mels - width))
        spec[start : start + width] = value
        width = int(rng.uniform(0.0, 0.20) * frames)
        start = int(rng.uniform(0.0, frames - width))
        spec[:, start : start + width] = value
    return spec


class FsdAugment:
    """The official training augmentation, drawn per example and epoch (the official loader draws it once when it
    materialises the training set): SpecAugment with probability 1/2, then with probability 3/4 a background
    noise clip (itself padded to 101 frames by wrapping or with its minimum, SpecAugmented with probability 1/2,
    cropped at random) mixed in with weight U(0, 0.5)."""

    def __init__(self, features: np.ndarray, starts: np.ndarray):
        self.features, self.starts = features, starts

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        k = rng.integers(len(self.starts) - 1)
        clip = self.features[:, self.starts[k] : self.starts[k + 1]]
        if clip.shape[1] < FSD_FRAMES:
            pad = FSD_FRAMES - clip.shape[1]
            widths = ((0, 0), (pad // 2, pad - pad // 2))
            wrap = rng.random() < 0.5
            clip = np.pad(clip, widths, "wrap") if wrap else np.pad(clip, widths, constant_values=clip.min())
        if rng.random() < 0.5:
            clip = spec_augment(clip, rng)
        start = rng.integers(clip.shape[1] - FSD_FRAMES + 1)
        return clip[:, start : start + FSD_FRAMES]

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = x.copy()
        spec = out[0, :, :FSD_FRAMES, 0]
        if rng.random() < 0.5:
            spec = spec_augment(spec, rng)
        if len(self.starts) > 1 and rng.random() < FSD_MIX_PROBABILITY:
            alpha = rng.uniform(0.0, FSD_MIX_MAX)
            spec = (1.0 - alpha) * spec + alpha * self._background(rng)
        out[0, :, :FSD_FRAMES, 0] = spec
        return out


def _add_channel(x: np.ndarray) -> np.ndarray:
    return x[..., None]


def load_fsd50k(data_dir=None) -> TaskData:
    """The prepared features (`scripts/prepare_data.py fsd50k`): one chunk per training clip, every chunk of the
    evaluation clips with `meta["clip"]`, so the metric averages a clip's logits over its chunks (clip-level mAP,
    as officially); the training augmentation is `FsdAugment`. The published validation clips (`val.csv`) are not
    used, as officially: the validation split is carved from the training clips."""
    splits = {}
    for split in ("train", "test"):
        path = functools.partial(require, "fsd50k", data_dir=data_dir, made_by_prepare=True)
        x = _memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_x.npy"), data_dir)
        y = _memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_y.npy"), data_dir)
        clip = np.asarray(_memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_clip.npy"), data_dir))
        splits[split] = Split(Mapped(x, _add_channel), y, {"clip": clip})
    background = require("fsd50k", "nb360/fsd50k/prepared/background.npz", data_dir, made_by_prepare=True)
    with np.load(background) as bank:
        augmentation = FsdAugment(bank["features"], bank["starts"])
    return TaskData(splits["train"], splits["test"], "NHWC", "multilabel_clip_map", 200, augmentation)


LOADERS = {
    "cifar100": load_cifar100, "spherical": load_spherical, "ninapro": load_ninapro, "fsd50k": load_fsd50k,
    "darcy": load_darcy, "psicov": load_psicov, "cosmic": load_cosmic, "ecg": load_ecg,
    "satellite": load_satellite, "deepsea": load_deepsea,
}
PREPARE = {"cosmic": prepare_cosmic, "fsd50k": prepare_fsd50k}  # steps after download and unpacking
