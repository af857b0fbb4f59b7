"""NAS-Bench-360 loaders on tiny files in the published formats: shapes, preprocessing and splits as the official
code makes them, lazy reading, and errors that name the file and the command."""

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from orca_jax.data import load_task
from orca_jax.data.benchmarks.files import CorruptFile, MissingFile
from orca_jax.data.benchmarks.nb360.audio import FSD_HOP, FSD_N_FFT, FSD_WIN, log_mel, mel_filterbank, power_spectrogram
from orca_jax.data.benchmarks.nb360.cosmic import cosmic_files, load_cosmic, prepare_cosmic
from orca_jax.data.benchmarks.nb360.fsd50k import load_fsd50k, prepare_fsd50k
from orca_jax.data.benchmarks.nb360.images import load_cifar100, load_darcy, load_spherical
from orca_jax.data.benchmarks.nb360.psicov import load_psicov
from orca_jax.data.benchmarks.nb360.signals import load_deepsea, load_ecg, load_ninapro, load_satellite
from orca_jax.data.image_sources import augment
from orca_jax.data.types import LazyArray
from tests.benchmarks import published


def test_ecg_windows_are_cut_per_class_from_z_scored_records_split_by_record(tmp_path):
    raw = published.write_ecg(tmp_path)
    data = load_ecg(data_dir=tmp_path)
    published.assert_real_shapes("ecg", data)
    assert (data.layout, data.kind, data.num_classes) == ("NLC", "classification_f1", 4)
    train_records, test_records = train_test_split(np.arange(40), test_size=0.1, random_state=0)
    expected_x, expected_y = [], []
    for r in test_records:  # the official slide-and-cut, written out
        signal = raw["data"][r].astype(np.float64)
        signal = (signal - signal.mean()) / signal.std()
        label = "NAO~".index(raw["label"][r])
        stride = 500 // (1, 6, 2, 20)[label]
        for start in range(0, len(signal) - 1000, stride):
            expected_x.append(signal[start : start + 1000])
            expected_y.append(label)
    np.testing.assert_allclose(np.asarray(data.test.x)[..., 0], np.asarray(expected_x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.test.y, expected_y)
    assert isinstance(data.train.x, LazyArray) and data.train.x.shape[1:] == (1000, 1)
    strides = 500 // np.asarray([1, 6, 2, 20])
    lengths = [len(raw["data"][r]) for r in train_records]
    labels = ["NAO~".index(raw["label"][r]) for r in train_records]
    assert len(data.train) == sum(len(range(0, n - 1000, strides[c])) for n, c in zip(lengths, labels))


def test_satellite_and_ninapro_layouts(tmp_path):
    raw = published.write_satellite(tmp_path)
    data = load_satellite(data_dir=tmp_path)
    published.assert_real_shapes("satellite", data)
    np.testing.assert_array_equal(data.train.x[..., 0], raw["train"]["data"])
    np.testing.assert_array_equal(data.test.y, raw["test"]["label"] - 1)
    assert (data.layout, data.num_classes) == ("NLC", 24)

    raw = published.write_ninapro(tmp_path)
    data = load_ninapro(data_dir=tmp_path)
    published.assert_real_shapes("ninapro", data)
    assert data.train.x.shape == (16, 16, 52, 1) and data.test.x.shape == (5, 16, 52, 1)  # train + val train
    np.testing.assert_array_equal(data.train.x[3, :, :, 0], raw["ninapro_train"][3].T)  # 16 channels x 52 steps
    np.testing.assert_array_equal(data.train.y[12:], raw["label_val"])


@pytest.mark.parametrize("compressed", [False, True])
def test_deepsea_members_are_memory_mapped_and_train_merges_validation(tmp_path, compressed):
    raw = published.write_deepsea(tmp_path, compressed=compressed)
    task = load_task("deepsea", data_dir=str(tmp_path), val_fraction=0.25)
    assert (task.kind, task.num_classes, task.layout, task.input_shape) == ("multilabel_auroc", 36, "NLC", (1000, 4))
    assert len(task.train) + len(task.val) == 28
    data = load_deepsea(data_dir=tmp_path)
    published.assert_real_shapes("deepsea", data)
    np.testing.assert_array_equal(np.asarray(data.train.x), np.concatenate([raw["x_train"], raw["x_val"]]))
    assert isinstance(data.test.x, np.memmap)
    assert (tmp_path / "nb360" / "deepsea" / "deepsea_filtered.members").is_dir() == compressed


def test_cifar100_normalises_and_augments_in_pixel_space(tmp_path):
    raw = published.write_cifar100(tmp_path)
    data = load_cifar100(data_dir=tmp_path)
    published.assert_real_shapes("cifar100", data)
    images = raw["train"][b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    mean, std = np.asarray((0.5071, 0.4867, 0.4408)), np.asarray((0.2675, 0.2565, 0.2761))
    np.testing.assert_allclose(data.train.x[:], (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.test.y, raw["test"][b"fine_labels"])
    # torchvision pads the uint8 image with zeros before normalising: the crop and flip act in pixel space.
    out = data.train_transform(np.asarray(data.train.x[:1]), np.random.default_rng(0))
    expected = (augment(images[:1] / 255.0, np.random.default_rng(0)) - mean) / std
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_spherical_images_are_scaled_channels_last(tmp_path):
    raw = published.write_spherical(tmp_path)
    data = load_spherical(data_dir=tmp_path)
    published.assert_real_shapes("spherical", data)
    np.testing.assert_allclose(data.test.x[:], raw["test"]["images"].transpose(0, 2, 3, 1) / 255.0, rtol=1e-6)
    assert data.train.x.shape == (8, 60, 60, 3)


@pytest.mark.parametrize("v73", [False, True])
def test_darcy_subsamples_normalises_and_adds_the_grid(tmp_path, v73):
    raw = published.write_darcy(tmp_path, n_train=6, n_test=3, v73=v73)
    data = load_darcy(data_dir=tmp_path)
    published.assert_real_shapes("darcy", data)
    assert data.train.x.shape == (6, 85, 85, 3) and data.test.y.shape == (3, 85, 85)
    coeff = raw[1]["coeff"][:, ::5, ::5]
    mean, std = coeff.mean(0), coeff.std(0, ddof=1) + 1e-5
    np.testing.assert_allclose(data.test.x[..., 0], (raw[2]["coeff"][:, ::5, ::5] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(data.train.y, raw[1]["sol"][:, ::5, ::5])
    np.testing.assert_allclose(data.train.x[0, 3, :, 1], np.linspace(0, 1, 85), rtol=1e-6)  # along the width
    np.testing.assert_allclose(data.train.x[0, :, 7, 2], np.linspace(0, 1, 85), rtol=1e-6)  # along the height
    assert data.kind == "dense_2d_relative_l2"


def test_psicov_examples_are_built_lazily_in_the_official_window(tmp_path):
    proteins = published.write_psicov(tmp_path, {"deepcov": [30, 40], "psicov": [35, 505]})
    data = load_psicov(data_dir=tmp_path)
    published.assert_real_shapes("psicov", data)
    assert data.kind == "distance_map" and data.train.x.shape == (2, 512, 512, 57)
    np.testing.assert_array_equal(data.test.meta["length"], [35, 505])
    features, distances = proteins["de001"]
    x, y = data.train.x[1], data.train.y[1]
    p, q = 3, 17  # residues; the window holds the protein at +5
    assert x[5 + p, 5 + q, 0] == np.float32(features["ss"][0][q])  # a row map ...
    assert x[5 + p, 5 + q, 1] == np.float32(features["ss"][0][p])  # ... and its transpose
    assert x[5 + p, 5 + q, 6 + 2 * 21] == np.float32(features["pssm"][q, 21])
    assert x[5 + p, 5 + q, 56] == np.float32(features["potential"][p, q])
    assert not x[:5].any() and not x[45:].any()
    assert y[5 + p, 5 + q] == max(distances[p, q], 1.0) and (y[:5] == 100).all() and (y[45:, 45:] == 100).all()
    assert y[5 + p, 5 + p] == pytest.approx((max(distances[p, p - 1], 1) + max(distances[p, p + 1], 1)) / 2)
    long_x, long_y = data.test.x[1], data.test.y[1]  # 505 + 10 > 512: cropped, inputs and targets alike
    assert long_x.shape == (512, 512, 57) and np.isfinite(long_y).all()
    np.testing.assert_array_equal(data.test.x[np.array([1, 0, 1])][0], long_x)
    assert (tmp_path / "nb360" / "psicov" / "protein" / "psicov_lengths.json").is_file()


def test_cosmic_prepare_keeps_galaxy_fields_and_the_official_crop(tmp_path):
    raw = published.write_cosmic(tmp_path)
    with pytest.raises(MissingFile, match="prepare_data.py cosmic"):
        load_cosmic(data_dir=tmp_path)
    prepare_cosmic(data_dir=tmp_path)
    task = load_task("cosmic", data_dir=str(tmp_path), val_fraction=0.2)
    assert (task.kind, task.input_shape, task.target_shape) == ("dense_2d_binary", (128, 128, 1), (128, 128))
    data = load_cosmic(data_dir=tmp_path)
    published.assert_real_shapes("cosmic", data)
    assert (len(data.train), len(data.test)) == (6, 3)  # two galaxy fields x 3 exposures; one for test
    files = cosmic_files(tmp_path / "nb360" / "cosmic" / "npy_train")
    first = raw[str(files[0])][:, 64:192, 64:192]
    np.testing.assert_array_equal(data.train.x[0][..., 0], first[0])
    np.testing.assert_array_equal(data.train.y[0], first[1] * (1 - first[2]))
    np.testing.assert_array_equal(data.train.meta["ignore"][0], first[2])


def test_fsd50k_features_one_training_chunk_per_clip_and_clip_ids(tmp_path):
    published.write_fsd50k(tmp_path)
    prepare_fsd50k(data_dir=tmp_path)
    data = load_fsd50k(data_dir=tmp_path)
    published.assert_real_shapes("fsd50k", data)
    assert (data.kind, data.num_classes, data.train.x.shape) == ("multilabel_clip_map", 200, (20, 96, 102, 1))
    assert len(data.test) == 1 + 2 + 3 + 1 and sorted(set(data.test.meta["clip"])) == [5000, 5001, 5002, 5003]
    assert len(set(data.train.meta["clip"])) == 20
    np.testing.assert_array_equal(data.test.y[1, :3], [1, 0, 1])  # clip 5001: Bark (0), Music (2)
    assert not np.asarray(data.test.x)[:, :, 101].any()  # the official zero column
    import scipy.io.wavfile

    _, audio = scipy.io.wavfile.read(tmp_path / "nb360" / "fsd50k" / "eval_chunks" / "5000_0000.wav")
    np.testing.assert_allclose(data.test.x[0][:, :101, 0], log_mel(audio / 32768.0), rtol=1e-5, atol=1e-4)
    x = np.asarray(data.train.x[:1], np.float32)
    outs = [data.train_transform(x, np.random.default_rng(seed)) for seed in range(8)]
    assert all(o.shape == x.shape and not o[..., 101, :].any() for o in outs)
    assert sum(not np.array_equal(o, x) for o in outs) >= 2  # each part of the augmentation has a probability


def test_power_spectrogram_equals_torch_stft():
    audio = np.random.default_rng(0).normal(size=22050).astype(np.float32)
    window = torch.hann_window(FSD_WIN)
    reference = torch.stft(torch.from_numpy(audio), n_fft=FSD_N_FFT, hop_length=FSD_HOP,
                           win_length=FSD_WIN, window=window, center=True, pad_mode="reflect",
                           return_complex=True).abs() ** 2
    ours = power_spectrogram(audio)
    assert ours.shape == (961, 101)
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-3, atol=1e-3)
    bank = mel_filterbank()
    assert bank.shape == (961, 96) and bank.min() == 0 and (bank.max(axis=0) > 0.5).all()  # 96 triangles


def test_missing_and_truncated_files_name_the_file_and_the_command(tmp_path):
    with pytest.raises(MissingFile) as error:
        load_task("ecg", data_dir=str(tmp_path))
    assert str(tmp_path / "nb360" / "ecg" / "challenge2017.pkl") in str(error.value)
    assert f"python scripts/prepare_data.py ecg --data_dir {tmp_path}" in str(error.value)
    assert "https://pde-xd.s3.amazonaws.com/ECG/challenge2017.pkl" in str(error.value)
    published.write_deepsea(tmp_path)
    path = tmp_path / "nb360" / "deepsea" / "deepsea_filtered.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptFile, match=f"{path}.*truncated.*prepare_data.py deepsea"):
        load_deepsea(data_dir=tmp_path)
