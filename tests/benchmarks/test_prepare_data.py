"""scripts/prepare_data.py without network: what to put where, wrong or cut files named with the fix, and the
download path (fetch to a .part file, check, unpack, prepare) on file:// URLs standing in for the publishers."""

import re
import tarfile

import numpy as np
import pytest

from orca_jax.data import load_task
from orca_jax.data.benchmarks.files import REMOTES, Remote, download, md5_of
from scripts.prepare_data import main
from tests.benchmarks import published


def test_offline_lists_every_missing_file_with_its_url_and_place(tmp_path, capsys):
    assert main(["ecg", "pde_darcy", "ninapro", "openml_1510", "--data_dir", str(tmp_path), "--offline"]) == 1
    out = capsys.readouterr().out
    assert f"--data_dir {tmp_path}" in out
    ecg = tmp_path / "nb360" / "ecg" / "challenge2017.pkl"
    assert f"https://pde-xd.s3.amazonaws.com/ECG/challenge2017.pkl\n    -> {ecg}" in out
    assert f"https://darus.uni-stuttgart.de/api/access/datafile/133218\n    -> {tmp_path}/pdebench/2D_DarcyFlow" in out
    assert "OpenML dataset 1510 (https://www.openml.org/d/1510) through the openml package" in out
    assert out.count("-> ") == 1 + 1 + 6 + 1 and "shared-drive mirror" in out


def test_no_network_falls_back_to_the_listing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(REMOTES, "ecg", (Remote("nb360/ecg/challenge2017.pkl", "http://127.0.0.1:9/ecg.pkl"),))
    assert main(["ecg", "--data_dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "no network" in captured.err and "http://127.0.0.1:9/ecg.pkl\n    ->" in captured.out
    assert not (tmp_path / "nb360" / "ecg").exists() or not any((tmp_path / "nb360" / "ecg").iterdir())


def test_a_file_with_the_wrong_checksum_is_named_with_the_fix(tmp_path, capsys):
    path = tmp_path / "pdebench" / "2D_DarcyFlow_beta0.1_Train.hdf5"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))  # a download cut short
    assert main(["pde_darcy", "--data_dir", str(tmp_path), "--offline"]) == 1
    err = capsys.readouterr().err
    assert f"{path} (108 bytes) is truncated or not the published file" in err
    assert "published 294f9a03a4aa16b0e386469ca8b471be" in err
    assert f"Delete it and run `python scripts/prepare_data.py pde_darcy --data_dir {tmp_path}`" in err


def test_downloads_are_checked_then_renamed_into_place(tmp_path):
    source = tmp_path / "published.bin"
    source.write_bytes(np.arange(1000, dtype=np.int64).tobytes())
    target = tmp_path / "data" / "file.bin"
    download(Remote("file.bin", source.as_uri(), md5_of(source)), target)
    assert target.read_bytes() == source.read_bytes() and [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_fetch_unpack_and_prepare_a_task_end_to_end(tmp_path, monkeypatch, capsys):
    """Cosmic's two tar archives 'published' as file:// URLs: downloaded, unpacked, cropped, then loadable."""
    published.write_cosmic(tmp_path / "publisher")
    remotes = []
    for split in ("train", "test"):
        archive = tmp_path / f"deepCR.ACS-WFC.{split}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(tmp_path / "publisher" / "nb360" / "cosmic" / f"npy_{split}", arcname=f"npy_{split}")
        remotes.append(Remote(f"nb360/cosmic/{archive.name}", archive.as_uri(), md5_of(archive), unpack=True))
    monkeypatch.setitem(REMOTES, "cosmic", tuple(remotes))
    data = tmp_path / "data"
    assert main(["cosmic", "--data_dir", str(data)]) == 0
    assert f"Ready: cosmic in {data}" in capsys.readouterr().out
    task = load_task("cosmic", data_dir=str(data), val_fraction=0.2)
    assert (len(task.train) + len(task.val), len(task.test)) == (6, 3)
    assert main(["cosmic", "--data_dir", str(data)]) == 0  # a second run finds everything in place


def test_unknown_names_list_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["ecgg", "--data_dir", str(tmp_path)])
    assert exited.value.code == 2
    assert re.search(r"Unknown task 'ecgg'.*openml_1510.*benchmark", capsys.readouterr().err)
