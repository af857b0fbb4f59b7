"""PDEBench's nine ORCA tasks from the published HDF5 files: map the initial condition to the solution at one later
time, as the official ORCA code does (its `load_pde`), read lazily through h5py.

- pde_advection: `1D_Advection_Sols_beta0.4.hdf5`, u(t0) on every 4th point [256, 1] -> u at the last step
  (t 200); the first 10 % of samples test.
- pde_burgers: `1D_Burgers_Sols_Nu1.0.hdf5`, u(t0) [1024, 1] -> u at t 200; first 10 % test.
- pde_reaction_diffusion: `ReacDiff_Nu0.5_Rho1.0.hdf5`, u(t0) [1024, 1] -> u at time index 29 (not the last);
  first 10 % test.
- pde_diffusion_sorption: `1D_diff-sorp_NA_NA.h5` (a group per sample), u(t0) [1024, 1] -> u at t 100; the last
  10 % test.
- pde_cfd_1d: `1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5`, density, pressure and Vx at t0 concatenated
  [3072, 1] -> the same at t 100; first 10 % test.
- pde_darcy: `2D_DarcyFlow_beta0.1_Train.hdf5`, nu on every 2nd point [64, 64, 1] -> u [64, 64]; first 10 % test.
- pde_shallow_water: `2D_rdb_NA_NA.h5` (groups), h(t0) [128, 128, 1] -> h at t 100; last 10 % test.
- pde_reaction_diffusion_2d: `2D_diff-react_NA_NA.h5` (groups), u(t0) [128, 128, 1] -> v (not u) at t 100; last
  10 % test.
- pde_cfd_2d: `2D_CFD_Rand_M1.0_Eta0.1_Zeta0.1_periodic_128_Train.hdf5`, density, pressure, Vx, Vy at t0 on every
  2nd point [64, 64, 4] -> the same at t 20 [64, 64, 4]; last 10 % test.

Time indices follow the official rule: the file's time axis is subsampled by the task's time step, `t_train` is
capped at the number of kept steps, and the target is kept step `t_train - 1` (Burgers and Advection keep every
5th of 201 steps, so 41 steps and the last; reaction-diffusion 1D keeps all 101 and takes index 29). 1D CFD inputs
and targets are both normalised with the inputs' per-position training statistics, 2D CFD's with per-position,
per-time, per-field statistics of the file's first 100 samples, and the official metric is computed on those
normalised values; the configs keep that, so numbers compare with the paper.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from orca_jax.data.benchmarks.arrays import H5File, H5Rows
from orca_jax.data.benchmarks.files import REMOTES, corrupt, require
from orca_jax.data.types import Split, TaskData

TEST_FRACTION = 0.1  # every PDEBench task holds out 10 % of the samples, first or last
CFD_1D_FIELDS = ("density", "pressure", "Vx")
CFD_2D_FIELDS = ("density", "pressure", "Vx", "Vy")
CFD_2D_STATISTICS_SAMPLES = 100  # the official normaliser is fitted on the file's first 100 samples
NORMALIZER_EPS = 1e-5


def _open(task: str, data_dir) -> H5File:
    path = require(task, REMOTES[task][0].path, data_dir)
    file = H5File(path)
    try:
        file["/"]
    except OSError as error:
        raise corrupt(task, path, data_dir, error) from error
    return file


def _kept_time_index(steps: int, time_step: int, t_train: int) -> int:
    """The file's time index of the official target: kept step min(t_train, kept steps) - 1."""
    return (min(t_train, math.ceil(steps / time_step)) - 1) * time_step


def _head_tail(count: int, test_first: bool) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows): the official single-file split tests on the first int(0.1 N) samples, the
    multi-file and large-file ones on the samples from int(0.9 N) on."""
    rows = np.arange(count)
    cut = int(count * TEST_FRACTION) if test_first else int(count * (1 - TEST_FRACTION))
    return (rows[cut:], rows[:cut]) if test_first else (rows[:cut], rows[cut:])


# Single-file scalar 1D ('tensor' [N, T, X]) and Darcy ('nu' [N, X, Y], 'tensor' [N, 1, X, Y]) -------------------


def _scalar_1d(file: H5File, rows: np.ndarray, *, time: int, space_step: int, channel: bool) -> np.ndarray:
    values = file["tensor"][rows, time, ::space_step]
    return values[..., None] if channel else values


def _load_scalar_1d(task: str, data_dir, *, space_step: int, time_step: int, t_train: int) -> TaskData:
    file = _open(task, data_dir)
    count, steps = file["tensor"].shape[:2]
    time = _kept_time_index(steps, time_step, t_train)
    splits = []
    for rows in _head_tail(count, test_first=True):
        x = H5Rows(file, rows, functools.partial(_scalar_1d, time=0, space_step=space_step, channel=True))
        y = H5Rows(file, rows, functools.partial(_scalar_1d, time=time, space_step=space_step, channel=False))
        splits.append(Split(x, y))
    return TaskData(splits[0], splits[1], "NLC", "dense_1d")


def load_advection(data_dir=None) -> TaskData:
    return _load_scalar_1d("pde_advection", data_dir, space_step=4, time_step=5, t_train=200)


def load_burgers(data_dir=None) -> TaskData:
    return _load_scalar_1d("pde_burgers", data_dir, space_step=1, time_step=5, t_train=200)


def load_reaction_diffusion(data_dir=None) -> TaskData:
    return _load_scalar_1d("pde_reaction_diffusion", data_dir, space_step=1, time_step=1, t_train=30)


def _darcy(file: H5File, rows: np.ndarray, *, key: str) -> np.ndarray:
    if key == "nu":
        return file["nu"][rows, ::2, ::2][..., None]
    return file["tensor"][rows, 0, ::2, ::2]


def load_pde_darcy(data_dir=None) -> TaskData:
    """Coefficient nu -> solution u, every 2nd grid point (64 x 64)."""
    file = _open("pde_darcy", data_dir)
    splits = [Split(H5Rows(file, rows, functools.partial(_darcy, key="nu")),
                    H5Rows(file, rows, functools.partial(_darcy, key="tensor")))
              for rows in _head_tail(len(file["nu"]), test_first=True)]
    return TaskData(splits[0], splits[1], "NHWC", "dense_2d")


# Compressible Navier-Stokes (fields as separate datasets [N, T, X(, Y)]) -------------------------------------------


def _fields(file: H5File, rows: np.ndarray, *, fields, time: int, step: int) -> np.ndarray:
    """[n, X * fields] (1D: fields concatenated along x, as officially) or [n, X, Y, fields] (2D)."""
    values = [np.asarray(file[f][rows, time, ::step] if file[f].ndim == 3 else file[f][rows, time, ::step, ::step],
                         np.float32) for f in fields]
    return np.concatenate(values, axis=1) if values[0].ndim == 2 else np.stack(values, axis=-1)


def _normalized(file: H5File, rows: np.ndarray, *, read, mean: np.ndarray, std: np.ndarray, channel: bool):
    values = ((read(file, rows) - mean) / std).astype(np.float32)
    return values[..., None] if channel else values


def _moments(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-element mean and unbiased deviation + eps over the rows of `arrays` (the official normaliser)."""
    values = np.concatenate(arrays).astype(np.float64)
    return values.mean(axis=0), values.std(axis=0, ddof=1) + NORMALIZER_EPS


def load_cfd_1d(data_dir=None) -> TaskData:
    """Density, pressure and Vx at t0 concatenated into one 3,072-point sequence -> the same at the last kept
    step (every 5th of 101). Inputs and targets are normalised with the inputs' statistics over the training
    samples (per position), as officially."""
    task = "pde_cfd_1d"
    file = _open(task, data_dir)
    count, steps = file["density"].shape[:2]
    time = _kept_time_index(steps, 5, 100)
    train_rows, test_rows = _head_tail(count, test_first=True)
    at = functools.partial(_fields, fields=CFD_1D_FIELDS, step=1)
    chunks = [at(file, train_rows[i : i + 1024], time=0) for i in range(0, len(train_rows), 1024)]
    mean, std = _moments(chunks)
    splits = []
    for rows in (train_rows, test_rows):
        x = H5Rows(file, rows, functools.partial(_normalized, read=functools.partial(at, time=0), mean=mean, std=std,
                                                 channel=True))
        y = H5Rows(file, rows, functools.partial(_normalized, read=functools.partial(at, time=time), mean=mean,
                                                 std=std, channel=False))
        splits.append(Split(x, y))
    return TaskData(splits[0], splits[1], "NLC", "dense_1d")


def load_cfd_2d(data_dir=None) -> TaskData:
    """Density, pressure, Vx, Vy at t0 -> the same at the last step (20), every 2nd grid point, as [64, 64, 4]
    images and targets, each normalised per position, time step and field with the statistics of the file's first
    100 samples (the official normaliser, fitted on those samples for every time step)."""
    task = "pde_cfd_2d"
    file = _open(task, data_dir)
    count, steps = file["density"].shape[:2]
    time = _kept_time_index(steps, 1, 21)
    read = functools.partial(_fields, fields=CFD_2D_FIELDS, step=2)
    sample = np.arange(min(CFD_2D_STATISTICS_SAMPLES, count))
    splits = []
    moments = {t: _moments([read(file, sample, time=t)]) for t in (0, time)}
    for rows in _head_tail(count, test_first=False):
        x, y = (H5Rows(file, rows, functools.partial(_normalized, read=functools.partial(read, time=t),
                                                     mean=moments[t][0], std=moments[t][1], channel=False))
                for t in (0, time))
        splits.append(Split(x, y))
    return TaskData(splits[0], splits[1], "NHWC", "dense_2d")


# One HDF5 group per sample ('data' [T, X(, Y), channels]) ---------------------------------------------------------


def _group(file: H5File, rows: np.ndarray, *, keys: list[str], time: int, channel: int, keep_axis: bool):
    values = [file[keys[r]]["data"][time, ..., channel] for r in rows]
    return np.stack(values)[..., None] if keep_axis else np.stack(values)


def _load_groups(task: str, data_dir, *, layout: str, t_train: int, input_channel: int, target_channel: int):
    file = _open(task, data_dir)
    keys = sorted(file["/"].keys())
    steps = file[keys[0]]["data"].shape[0]
    time = _kept_time_index(steps, 1, t_train)
    splits = []
    for rows in _head_tail(len(keys), test_first=False):
        x = H5Rows(file, rows, functools.partial(_group, keys=keys, time=0, channel=input_channel, keep_axis=True))
        y = H5Rows(file, rows, functools.partial(_group, keys=keys, time=time, channel=target_channel,
                                                 keep_axis=False))
        splits.append(Split(x, y))
    return TaskData(splits[0], splits[1], layout, "dense_1d" if layout == "NLC" else "dense_2d")


def load_diffusion_sorption(data_dir=None) -> TaskData:
    return _load_groups("pde_diffusion_sorption", data_dir, layout="NLC", t_train=101, input_channel=0,
                        target_channel=0)


def load_shallow_water(data_dir=None) -> TaskData:
    return _load_groups("pde_shallow_water", data_dir, layout="NHWC", t_train=101, input_channel=0,
                        target_channel=0)


def load_reaction_diffusion_2d(data_dir=None) -> TaskData:
    """Officially u(t0) -> v(t_last) only: the first field in, the second field out."""
    return _load_groups("pde_reaction_diffusion_2d", data_dir, layout="NHWC", t_train=101, input_channel=0,
                        target_channel=1)


LOADERS = {
    "pde_advection": load_advection, "pde_burgers": load_burgers, "pde_reaction_diffusion": load_reaction_diffusion,
    "pde_diffusion_sorption": load_diffusion_sorption, "pde_cfd_1d": load_cfd_1d, "pde_darcy": load_pde_darcy,
    "pde_shallow_water": load_shallow_water, "pde_reaction_diffusion_2d": load_reaction_diffusion_2d,
    "pde_cfd_2d": load_cfd_2d,
}
