"""Cosmic: deepCR ACS/WFC cosmic-ray masks, cropped once by `prepare_cosmic` into memory-mappable arrays."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np

from orca_jax.atomic import atomic_path
from orca_jax.data.benchmarks.arrays import Mapped
from orca_jax.data.benchmarks.files import MissingFile, data_root, require
from orca_jax.data.benchmarks.nb360.readers import memmap
from orca_jax.data.types import Split, TaskData


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
        parts = {name: memmap("cosmic", require("cosmic", f"nb360/cosmic/prepared/{split}_{name}.npy", data_dir,
                                                 made_by_prepare=True), data_dir)
                 for name in ("image", "cr", "ignore")}
        ignore = np.asarray(parts["ignore"])
        rows = np.arange(len(ignore))
        targets = Mapped(rows, functools.partial(_cosmic_targets, parts["cr"], parts["ignore"]))
        splits[split] = Split(Mapped(parts["image"], _cosmic_inputs), targets, {"ignore": ignore})
    return TaskData(splits["train"], splits["test"], "NHWC", "dense_2d_binary")
