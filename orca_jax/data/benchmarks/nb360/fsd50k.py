"""FSD50K (NAS-Bench-360's 1 s chunks of 22,050 Hz audio): the features prepared once from the wav chunks,
the official training augmentation, and the loader."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path, PurePosixPath

import numpy as np

from orca_jax.atomic import atomic_path
from orca_jax.data.benchmarks.arrays import Mapped
from orca_jax.data.benchmarks.files import MissingFile, data_root, require
from orca_jax.data.benchmarks.nb360.audio import FSD_FRAMES, FSD_MELS, FSD_RATE, log_mel, spec_augment
from orca_jax.data.benchmarks.nb360.readers import memmap
from orca_jax.data.types import Split, TaskData

FSD_CHUNK_SEED = 0  # the training chunk of each clip (the official draw is unseeded)
FSD_MIX_PROBABILITY, FSD_MIX_MAX = 0.75, 0.5


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
        x = memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_x.npy"), data_dir)
        y = memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_y.npy"), data_dir)
        clip = np.asarray(memmap("fsd50k", path(f"nb360/fsd50k/prepared/{split}_clip.npy"), data_dir))
        splits[split] = Split(Mapped(x, _add_channel), y, {"clip": clip})
    background = require("fsd50k", "nb360/fsd50k/prepared/background.npz", data_dir, made_by_prepare=True)
    with np.load(background) as bank:
        augmentation = FsdAugment(bank["features"], bank["starts"])
    return TaskData(splits["train"], splits["test"], "NHWC", "multilabel_clip_map", 200, augmentation)
