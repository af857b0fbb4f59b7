"""PDEBench loaders on tiny HDF5 files in the published layouts: the official time index, subsampling, channels,
splits and normalisations, read lazily."""

import numpy as np
import pytest

from orca_jax.data import load_task
from orca_jax.data.benchmarks import pdebench
from orca_jax.data.benchmarks.arrays import H5Rows
from orca_jax.data.benchmarks.files import CorruptFile
from tests.benchmarks import published

N = 20  # samples per file: the first (single files) or last (one group per sample) 10 % test


def test_scalar_1d_tasks_take_the_official_time_step_and_subsampling(tmp_path):
    raw = published.write_pde_single(tmp_path, "1D_Advection_Sols_beta0.4.hdf5", {"tensor": (N, 201, 1024)})
    data = pdebench.load_advection(data_dir=tmp_path)
    published.assert_real_shapes("pde_advection", data)
    assert isinstance(data.train.x, H5Rows) and (data.layout, data.kind) == ("NLC", "dense_1d")
    assert data.train.x.shape == (18, 256, 1) and data.test.y.shape == (2, 256)
    np.testing.assert_array_equal(data.test.x[:][..., 0], raw["tensor"][:2, 0, ::4])  # first 10 % test
    np.testing.assert_array_equal(data.train.y[np.array([5, 0, 5])], raw["tensor"][[7, 2, 7], 200, ::4])

    raw = published.write_pde_single(tmp_path, "ReacDiff_Nu0.5_Rho1.0.hdf5", {"tensor": (N, 101, 1024)})
    data = pdebench.load_reaction_diffusion(data_dir=tmp_path)
    published.assert_real_shapes("pde_reaction_diffusion", data)
    np.testing.assert_array_equal(data.train.y[:], raw["tensor"][2:, 29])  # t_train = 30: index 29, not the last


def test_cfd_1d_concatenates_fields_and_normalises_with_input_statistics(tmp_path):
    raw = published.write_pde_single(tmp_path, "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5",
                                     {f: (N, 101, 64) for f in ("density", "pressure", "Vx")})
    data = pdebench.load_cfd_1d(data_dir=tmp_path)
    assert data.train.x.shape == (18, 192, 1)
    x0 = np.concatenate([raw[f][:, 0] for f in ("density", "pressure", "Vx")], axis=1)
    x_last = np.concatenate([raw[f][:, 100] for f in ("density", "pressure", "Vx")], axis=1)  # every 5th of 101
    mean, std = x0[2:].mean(0), x0[2:].std(0, ddof=1) + 1e-5
    np.testing.assert_allclose(data.test.x[:][..., 0], (x0[:2] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.train.y[:], (x_last[2:] - mean) / std, rtol=1e-5, atol=1e-5)


def test_pde_darcy_maps_the_coefficient_to_the_solution(tmp_path):
    raw = published.write_pde_single(tmp_path, "2D_DarcyFlow_beta0.1_Train.hdf5",
                                     {"tensor": (N, 1, 128, 128), "nu": (N, 128, 128)})
    task = load_task("pde_darcy", data_dir=str(tmp_path), val_fraction=0.2)
    assert (task.input_shape, task.target_shape, task.kind) == ((64, 64, 1), (64, 64), "dense_2d")
    data = pdebench.load_pde_darcy(data_dir=tmp_path)
    published.assert_real_shapes("pde_darcy", data)
    np.testing.assert_array_equal(data.test.x[1][..., 0], raw["nu"][1, ::2, ::2])
    np.testing.assert_array_equal(data.train.y[0], raw["tensor"][2, 0, ::2, ::2])


def test_cfd_2d_normalises_per_position_time_and_field_with_the_first_samples(tmp_path):
    fields = ("density", "pressure", "Vx", "Vy")
    raw = published.write_pde_single(tmp_path, "2D_CFD_Rand_M1.0_Eta0.1_Zeta0.1_periodic_128_Train.hdf5",
                                     {f: (N, 21, 16, 16) for f in fields})
    data = pdebench.load_cfd_2d(data_dir=tmp_path)
    assert data.train.x.shape == (18, 8, 8, 4) and data.test.y.shape == (2, 8, 8, 4)  # last 10 % test
    stacked = np.stack([raw[f][:, :, ::2, ::2] for f in fields], axis=-1)  # [N, T, 8, 8, 4]
    for t, array in ((0, data.test.x), (20, data.test.y)):
        mean, std = stacked[:, t].mean(0), stacked[:, t].std(0, ddof=1) + 1e-5  # all 20 < 100 samples
        np.testing.assert_allclose(array[:], (stacked[18:, t] - mean) / std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("task, name, shape, channels", [
    ("pde_diffusion_sorption", "1D_diff-sorp_NA_NA.h5", (101, 1024, 1), (0, 0)),
    ("pde_shallow_water", "2D_rdb_NA_NA.h5", (101, 8, 8, 1), (0, 0)),
    ("pde_reaction_diffusion_2d", "2D_diff-react_NA_NA.h5", (101, 8, 8, 2), (0, 1)),
])
def test_grouped_files_test_on_the_last_samples(tmp_path, task, name, shape, channels):
    raw = published.write_pde_groups(tmp_path, name, N, shape)
    data = pdebench.LOADERS[task](data_dir=tmp_path)
    assert (len(data.train), len(data.test)) == (18, 2)
    last = raw[f"{N - 1:04d}"]
    np.testing.assert_array_equal(data.test.x[1][..., 0], last[0, ..., channels[0]])
    np.testing.assert_array_equal(data.test.y[1], last[100, ..., channels[1]])
    assert data.train.x.shape[1:] == (*shape[1:-1], 1) and data.train.y.shape[1:] == shape[1:-1]
    if task == "pde_diffusion_sorption":  # published grid; the 2D files here have 8 x 8 instead of 128 x 128
        published.assert_real_shapes(task, data)


def test_a_truncated_hdf5_file_names_the_file_and_the_command(tmp_path):
    published.write_pde_single(tmp_path, "1D_Burgers_Sols_Nu1.0.hdf5", {"tensor": (N, 201, 64)})
    path = tmp_path / "pdebench" / "1D_Burgers_Sols_Nu1.0.hdf5"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptFile, match=f"{path}.*truncated.*prepare_data.py pde_burgers"):
        pdebench.load_burgers(data_dir=tmp_path)
