"""PSICOV: protein contact distances, trained on DeepCov; inputs read lazily, one protein at a time."""

from __future__ import annotations

import functools
import json
import logging
import pickle
from pathlib import Path

import numpy as np

from orca_jax.data.benchmarks.arrays import PerExample
from orca_jax.data.benchmarks.files import corrupt, data_root, require
from orca_jax.data.types import Split, TaskData


log = logging.getLogger(__name__)


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
