"""Tiny benchmark files in the formats their publishers distribute: the same file names, keys, dtypes and layouts,
with few examples (and, where the loaders do not depend on it, smaller grids). Each writer puts its files where
`scripts/prepare_data.py` would, under `root`, and returns what a test needs to check the loader against."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np

# What each loader returns for the published data: (example input shape, target shape or class / label count, kind).
REAL_SHAPES = {
    "cifar100": ((32, 32, 3), 100, "classification"),
    "spherical": ((60, 60, 3), 100, "classification"),
    "ninapro": ((16, 52, 1), 18, "classification"),
    "fsd50k": ((96, 102, 1), 200, "multilabel_clip_map"),
    "darcy": ((85, 85, 3), (85, 85), "dense_2d_relative_l2"),
    "psicov": ((512, 512, 57), (512, 512), "distance_map"),
    "cosmic": ((128, 128, 1), (128, 128), "dense_2d_binary"),
    "ecg": ((1000, 1), 4, "classification_f1"),
    "satellite": ((46, 1), 24, "classification"),
    "deepsea": ((1000, 4), 36, "multilabel_auroc"),
    "pde_advection": ((256, 1), (256,), "dense_1d"),
    "pde_burgers": ((1024, 1), (1024,), "dense_1d"),
    "pde_reaction_diffusion": ((1024, 1), (1024,), "dense_1d"),
    "pde_diffusion_sorption": ((1024, 1), (1024,), "dense_1d"),
    "pde_cfd_1d": ((3072, 1), (3072,), "dense_1d"),
    "pde_darcy": ((64, 64, 1), (64, 64), "dense_2d"),
    "pde_shallow_water": ((128, 128, 1), (128, 128), "dense_2d"),
    "pde_reaction_diffusion_2d": ((128, 128, 1), (128, 128), "dense_2d"),
    "pde_cfd_2d": ((64, 64, 4), (64, 64, 4), "dense_2d"),
}


def assert_real_shapes(task: str, data) -> None:
    """A loader's TaskData has the published example shapes, kind and class count of REAL_SHAPES[task]."""
    shape, target, kind = REAL_SHAPES[task]
    assert data.kind == kind and data.train.x.shape[1:] == shape == data.test.x.shape[1:]
    if isinstance(target, tuple):
        assert data.train.y.shape[1:] == target == data.test.y.shape[1:]
    else:
        assert data.num_classes == target


def _dir(root: Path, *parts: str) -> Path:
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_ecg(root: Path, records: int = 40, seed: int = 0) -> dict:
    """challenge2017.pkl: {"data": a list of 1D recordings, "label": a list of "N"/"A"/"O"/"~"}."""
    rng = np.random.default_rng(seed)
    data = [rng.integers(-300, 300, size=int(rng.integers(1100, 2600))).astype(np.int16) for _ in range(records)]
    labels = [("N", "A", "O", "~")[i % 4] for i in range(records)]
    with open(_dir(root, "nb360", "ecg") / "challenge2017.pkl", "wb") as f:
        pickle.dump({"data": data, "label": labels}, f)
    return {"data": data, "label": labels}


def write_satellite(root: Path, n_train: int = 30, n_test: int = 10, seed: int = 0) -> dict:
    """satellite_{train,test}.npy: a pickled dict {"data" [N, 46], "label" 1..24} saved with np.save."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = {"data": rng.normal(size=(n, 46)).astype(np.float32), "label": rng.integers(1, 25, size=n)}
        np.save(_dir(root, "nb360", "satellite") / f"satellite_{name}.npy", data, allow_pickle=True)
        out[name] = data
    return out


def write_deepsea(root: Path, n: int = 24, compressed: bool = False, seed: int = 0) -> dict:
    """deepsea_filtered.npz: one-hot x_{train,val,test} [N, 1000, 4] and y_* [N, 36] (uint8)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", 4), ("test", 10)):
        arrays[f"x_{split}"] = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, size=(count, 1000))]
        arrays[f"y_{split}"] = (rng.random((count, 36)) < 0.5).astype(np.uint8)
    (np.savez_compressed if compressed else np.savez)(_dir(root, "nb360", "deepsea") / "deepsea_filtered.npz", **arrays)
    return arrays


def write_ninapro(root: Path, seed: int = 0) -> dict:
    """ninapro_{train,val,test}.npy [N, 52, 16] float and label_*.npy."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", 12), ("val", 4), ("test", 5)):
        out[f"ninapro_{split}"] = rng.normal(size=(n, 52, 16)).astype(np.float32)
        out[f"label_{split}"] = rng.integers(0, 18, size=n).astype(np.int8)
        for key in (f"ninapro_{split}", f"label_{split}"):
            np.save(_dir(root, "nb360", "ninapro") / f"{key}.npy", out[key])
    return out


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    """cifar-100-python.tar.gz holding the pickles cifar-100-python/{train,test,meta} (bytes keys)."""
    rng = np.random.default_rng(seed)
    out = {}
    with tarfile.open(_dir(root, "nb360", "cifar100") / "cifar-100-python.tar.gz", "w:gz") as archive:
        for name, n in (("train", n_train), ("test", n_test), ("meta", 0)):
            batch = ({b"fine_label_names": [b"c%d" % i for i in range(100)]} if name == "meta" else
                     {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                      b"fine_labels": rng.integers(0, 100, size=n).tolist(),
                      b"coarse_labels": rng.integers(0, 20, size=n).tolist()})
            payload = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
            out[name] = batch
    return out


def write_spherical(root: Path, seed: int = 0) -> dict:
    """s2_cifar100.gz: gzip of a pickle {"train"/"test": {"images" uint8 [N, 3, 60, 60], "labels"}}."""
    rng = np.random.default_rng(seed)
    data = {split: {"images": rng.integers(0, 256, size=(n, 3, 60, 60), dtype=np.uint8),
                    "labels": rng.integers(0, 100, size=n)} for split, n in (("train", 8), ("test", 4))}
    with gzip.open(_dir(root, "nb360", "spherical") / "s2_cifar100.gz", "wb") as f:
        pickle.dump(data, f)
    return data


def write_darcy(root: Path, n_train: int = 20, n_test: int = 4, v73: bool = False, seed: int = 0) -> dict:
    """piececonst_r421_N1024_smooth{1,2}.mat with fields coeff and sol [N, 421, 421] (MATLAB v5, or v7.3:
    HDF5 with a MATLAB header, arrays stored transposed)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    out = {}
    for k, n in ((1, n_train), (2, n_test)):
        fields = {"coeff": np.where(rng.random((n, 421, 421)) < 0.5, 3.0, 12.0).astype(np.float32),
                  "sol": rng.random((n, 421, 421)).astype(np.float32) + 0.1}
        path = _dir(root, "nb360", "darcy") / f"piececonst_r421_N1024_smooth{k}.mat"
        if v73:
            import h5py

            with h5py.File(path, "w", userblock_size=512) as f:
                for key, value in fields.items():
                    f[key] = value.transpose()
            with open(path, "r+b") as f:
                f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")
        else:
            scipy.io.savemat(path, fields)
        out[k] = fields
    return out


def protein(length: int, seed: int) -> tuple[dict, np.ndarray]:
    """A DeepCov/PSICOV feature dict and a C-beta distance map of `length` residues."""
    rng = np.random.default_rng(seed)
    coords = np.cumsum(rng.normal(scale=1.0, size=(length, 3)), axis=0)  # compact: long-range contacts
    distances = np.linalg.norm(coords[:, None] - coords[None], axis=-1).astype(np.float32)
    features = {"seq": "A" * length, "ss": rng.random((3, length)), "pssm": rng.random((length, 22)),
                "sa": rng.random(length), "entropy": rng.random(length), "ccmpred": rng.random((length, length)),
                "freecon": rng.random((length, length)), "potential": rng.random((length, length))}
    return features, distances


def write_psicov(root: Path, lengths: dict[str, list[int]]) -> dict:
    """protein.zip unpacked: protein/{deepcov,psicov}.lst, <set>/features/<id>.pkl, <set>/distance/<id>-cb.npy
    (a pickled object array (length, sequence, distances))."""
    base = _dir(root, "nb360", "psicov", "protein")
    out = {}
    for name, sizes in lengths.items():
        ids = [f"{name[:2]}{i:03d}" for i in range(len(sizes))]
        (base / f"{name}.lst").write_text("".join(f"{pdb} x\n" for pdb in ids))
        for i, (pdb, size) in enumerate(zip(ids, sizes)):
            features, distances = protein(size, seed=i + (0 if name == "deepcov" else 10_000))
            with open(_dir(base, name, "features") / f"{pdb}.pkl", "wb") as f:
                pickle.dump(features, f)
            record = np.empty(3, dtype=object)
            record[:] = [size, features["seq"], distances]
            np.save(_dir(base, name, "distance") / f"{pdb}-cb.npy", record, allow_pickle=True)
            out[pdb] = (features, distances)
    return out


# Galaxy fields, and one field of another type per split (10595_2, 10631_3), which the official selection drops.
COSMIC_FIELDS = {"train": ("10760_2", "9490_a3", "10595_2"), "test": ("13737_2", "10631_3")}


def write_cosmic(root: Path, per_visit: int = 3, seed: int = 0) -> dict:
    """deepCR.ACS-WFC.{train,test}.tar unpacked: npy_<split>/f435w/<proposal>/<visit>/<k>_*.npy, each [3, 256, 256]
    (image, cosmic-ray mask, ignore mask), and sky.npy per visit."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, fields in COSMIC_FIELDS.items():
        for field in fields:
            proposal, visit = field.split("_")
            folder = _dir(root, "nb360", "cosmic", f"npy_{split}", "f435w", proposal, visit)
            np.save(folder / "sky.npy", rng.uniform(10, 20, size=per_visit).astype(np.float32))
            for k in range(1, per_visit + 1):
                data = np.stack([rng.normal(size=(256, 256)), rng.random((256, 256)) < 0.05,
                                 rng.random((256, 256)) < 0.02]).astype(np.float32)
                np.save(folder / f"{k}_exposure.npy", data)
                out[str(folder / f"{k}_exposure.npy")] = data
    return out


FSD_LABELS = {"Bark": 0, "Speech": 1, "Music": 2}


def _wav(path: Path, audio: np.ndarray) -> None:
    import scipy.io.wavfile

    scipy.io.wavfile.write(path, 22050, (np.clip(audio, -1, 0.999) * 32768).astype(np.int16))


def write_fsd50k(root: Path, train_clips: int = 20, eval_clips: int = 4, seed: int = 0) -> dict:
    """audio.zip unpacked: chunks/{tr,eval}.csv (files, labels, ext) naming 1 s 22,050 Hz PCM-16 chunks by paths of
    another machine, chunks/lbl_map.json, noise_22050/*.wav. Labels map to 200 classes like the real map."""
    rng = np.random.default_rng(seed)
    base = _dir(root, "nb360", "fsd50k")
    chunks = _dir(base, "chunks")
    labels = {**FSD_LABELS, **{f"label{i}": i for i in range(3, 200)}}
    (chunks / "lbl_map.json").write_text(json.dumps(labels))
    out = {}
    for manifest, count, folder in (("tr", train_clips, "dev_chunks"), ("eval", eval_clips, "eval_chunks")):
        rows = []
        for clip in range(count):
            clip_id = 1000 + clip if manifest == "tr" else 5000 + clip
            names = ",".join(sorted(FSD_LABELS)[: 1 + clip % 3])
            for part in range(1 + clip % 3):
                name = f"{clip_id}_{part:04d}.wav"
                _wav(_dir(base, folder) / name, 0.3 * rng.normal(size=22050))
                rows.append(f"/data/sarthak/fsd50k/{folder}/{name},\"{names}\",{clip_id}\n")
        (chunks / f"{manifest}.csv").write_text("files,labels,ext\n" + "".join(rows))
        out[manifest] = rows
    for k in range(2):
        _wav(_dir(base, "noise_22050") / f"noise{k}.wav", 0.1 * rng.normal(size=22050 * 2))
    return out


# PDEBench ----------------------------------------------------------------------------------------------------


def write_pde_single(root: Path, name: str, datasets: dict[str, tuple], seed: int = 0) -> dict:
    """A single-file PDEBench HDF5 (`tensor` / fields as [N, T, X(, Y)] datasets, float32)."""
    import h5py

    rng = np.random.default_rng(seed)
    out = {key: rng.normal(size=shape).astype(np.float32) for key, shape in datasets.items()}
    with h5py.File(_dir(root, "pdebench") / name, "w") as f:
        for key, value in out.items():
            f[key] = value
        f["t-coordinate"] = np.linspace(0, 1, next(iter(datasets.values()))[1] + 1)
    return out


def write_pde_groups(root: Path, name: str, samples: int, shape: tuple, seed: int = 0) -> dict:
    """A multi-sample PDEBench HDF5: one group per sample ('0000', ...) with `data` [T, X(, Y), channels] and `grid`."""
    import h5py

    rng = np.random.default_rng(seed)
    out = {}
    with h5py.File(_dir(root, "pdebench") / name, "w") as f:
        for i in range(samples):
            key = f"{i:04d}"
            out[key] = rng.normal(size=shape).astype(np.float32)
            f[key + "/data"] = out[key]
            f[key + "/grid/t"] = np.linspace(0, 1, shape[0])
    return out


# OpenML (the openml package's cache: description.xml, features.xml, dataset.arff) ------------------------------


def _feature_xml(index: int, name: str, kind: str, values=(), target: bool = False) -> str:
    nominal = "".join(f"<oml:nominal_value>{v}</oml:nominal_value>" for v in values)
    return (f"<oml:feature><oml:index>{index}</oml:index><oml:name>{name}</oml:name><oml:data_type>{kind}"
            f"</oml:data_type>{nominal}<oml:is_target>{str(target).lower()}</oml:is_target><oml:is_ignore>false"
            "</oml:is_ignore><oml:is_row_identifier>false</oml:is_row_identifier><oml:number_of_missing_values>0"
            "</oml:number_of_missing_values></oml:feature>")


def write_openml(root: Path, dataset_id: int, columns: dict[str, list], kinds: dict[str, tuple], target: str) -> Path:
    """An OpenML dataset in the openml package's cache layout under root/openml. `kinds`: column -> ("numeric",)
    or ("nominal", values); `None` cells are ARFF's missing value '?'."""
    import hashlib

    folder = _dir(root, "openml", "org", "openml", "www", "datasets", str(dataset_id))
    names = list(columns)
    header = [f"@RELATION d{dataset_id}"]
    for name in names:
        kind = kinds[name]
        header.append(f"@ATTRIBUTE {name} " + ("REAL" if kind[0] == "numeric" else "{" + ",".join(kind[1]) + "}"))
    rows = zip(*(columns[n] for n in names))
    body = ["@DATA"] + [",".join("?" if v is None else str(v) for v in row) for row in rows]
    arff = "\n".join(header + body) + "\n"
    (folder / "dataset.arff").write_text(arff)
    (folder / "description.xml").write_text(
        '<oml:data_set_description xmlns:oml="http://openml.org/openml">'
        f"<oml:id>{dataset_id}</oml:id><oml:name>d{dataset_id}</oml:name><oml:version>1</oml:version>"
        "<oml:description>test</oml:description><oml:format>ARFF</oml:format>"
        "<oml:upload_date>2014-04-06T23:19:20</oml:upload_date><oml:licence>Public</oml:licence>"
        f"<oml:url>https://api.openml.org/data/v1/download/{dataset_id}/d.arff</oml:url>"
        f"<oml:file_id>{dataset_id}</oml:file_id><oml:default_target_attribute>{target}"
        "</oml:default_target_attribute><oml:visibility>public</oml:visibility><oml:status>active</oml:status>"
        f"<oml:md5_checksum>{hashlib.md5(arff.encode()).hexdigest()}</oml:md5_checksum>"
        "</oml:data_set_description>")
    features = "".join(_feature_xml(i, n, kinds[n][0], kinds[n][1] if kinds[n][0] == "nominal" else (), n == target)
                       for i, n in enumerate(names))
    (folder / "features.xml").write_text(f'<oml:data_features xmlns:oml="http://openml.org/openml">{features}'
                                         "</oml:data_features>")
    return folder
