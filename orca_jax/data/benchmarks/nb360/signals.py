"""The sequence tasks: NinaPro DB5 (EMG), ECG (PhysioNet/CinC 2017), Satellite (pixel time series) and
DeepSEA (genomics)."""

from __future__ import annotations

import functools
import zipfile

import numpy as np

from orca_jax.data.benchmarks.arrays import Concat, Mapped, npz_arrays
from orca_jax.data.benchmarks.files import corrupt, require
from orca_jax.data.benchmarks.nb360.readers import UNREADABLE, expect_shape, load_npy, load_pickle
from orca_jax.data.types import Split, TaskData


# NinaPro DB5 ------------------------------------------------------------------------------------------------


def load_ninapro(data_dir=None) -> TaskData:
    """`ninapro_{train,val,test}.npy` [N, 52, 16] (52 time steps of 16 EMG channels) and `label_*.npy`; an example
    is the official 16 x 52 single-channel image. Train and validation train, as officially."""
    def split(names: tuple[str, ...]) -> Split:
        xs, ys = [], []
        for name in names:
            x_path = require("ninapro", f"nb360/ninapro/ninapro_{name}.npy", data_dir)
            y_path = require("ninapro", f"nb360/ninapro/label_{name}.npy", data_dir)
            x = load_npy("ninapro", x_path, data_dir, encoding="bytes", allow_pickle=True)
            expect_shape("ninapro", x_path, data_dir, x, (None, 52, 16))
            xs.append(np.asarray(x, np.float32).transpose(0, 2, 1)[..., None])
            ys.append(load_npy("ninapro", y_path, data_dir, encoding="bytes", allow_pickle=True).astype(np.int64))
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
    data = load_pickle("ecg", path, data_dir)
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
        data = load_npy("satellite", path, data_dir, allow_pickle=True)[()]
        x = np.asarray(data["data"])
        expect_shape("satellite", path, data_dir, x, (None, 46))
        return Split(x[:, :, None], np.asarray(data["label"], np.int64) - 1)

    return TaskData(split("train"), split("test"), "NLC", "classification", 24)


# DeepSEA ----------------------------------------------------------------------------------------------------


def load_deepsea(data_dir=None) -> TaskData:
    """`deepsea_filtered.npz`: one-hot DNA `x_*` [N, 1000, 4] and 36 chromatin labels `y_*`; train and validation
    train, as officially. Members are memory-mapped (decompressed once next to the archive if compressed)."""
    path = require("deepsea", "nb360/deepsea/deepsea_filtered.npz", data_dir)
    try:
        arrays = npz_arrays(path, path.with_suffix(".members"))
    except (*UNREADABLE, zipfile.BadZipFile) as error:
        raise corrupt("deepsea", path, data_dir, error) from error
    missing = sorted({f"{k}_{s}" for k in "xy" for s in ("train", "val", "test")} - set(arrays))
    if missing:
        raise corrupt("deepsea", path, data_dir, KeyError(f"members {missing} missing"))
    expect_shape("deepsea", path, data_dir, arrays["x_test"], (None, 1000, 4))
    train = Split(Concat([arrays["x_train"], arrays["x_val"]]), Concat([arrays["y_train"], arrays["y_val"]]))
    return TaskData(train, Split(arrays["x_test"], arrays["y_test"]), "NLC", "multilabel_auroc", 36)
