"""Writes a 1D dense regression task with a known solution, as your own data would be: the periodic heat equation.

    python scripts/heat_equation_data.py --out data/heat.npz
    python scripts/train.py --config=configs/own_data.py:offline --config.task.name=npz:data/heat.npz \\
        --config.task.kind=dense_1d --workdir=workdirs/heat

Inputs are random smooth initial conditions u(x, 0) on a periodic grid of `--length` points (a few Fourier modes with
random amplitudes and phases, plus a random offset); targets are the exact solutions u(x, T) of u_t = nu * u_xx,
each Fourier mode k damped by exp(-nu k^2 T). The script prints two trivial baselines on the test split in the
pipeline's metric (nRMSE: per example ||prediction - target|| / ||target||, averaged): predicting the training
targets' mean, and predicting the input (no diffusion). A model that learned the operator beats both.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402


def heat_equation(count: int, length: int, *, nu: float, time: float, modes: int, seed: int):
    rng = np.random.default_rng(seed)
    x = np.arange(length) * 2 * np.pi / length
    k = np.arange(1, modes + 1)
    amplitude = rng.normal(size=(count, modes)) / k  # smooth: amplitudes fall with the wave number
    phase = rng.uniform(0, 2 * np.pi, size=(count, modes))
    offset = rng.normal(size=(count, 1)) * 0.5 + 1.0  # keeps ||target|| away from 0 (nRMSE divides by it)
    waves = np.sin(k[None, :, None] * x[None, None, :] + phase[..., None])  # [count, modes, length]
    u0 = offset + np.einsum("cm,cml->cl", amplitude, waves)
    ut = offset + np.einsum("cm,cml->cl", amplitude * np.exp(-nu * k**2 * time), waves)
    return u0[..., None].astype(np.float32), ut.astype(np.float32)


def nrmse(prediction: np.ndarray, target: np.ndarray) -> float:
    p, t = prediction.reshape(len(prediction), -1), target.reshape(len(target), -1)
    return float(np.mean(np.linalg.norm(p - t, axis=1) / np.linalg.norm(t, axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--nu", type=float, default=0.1)
    parser.add_argument("--time", type=float, default=1.0)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common = dict(length=args.length, nu=args.nu, time=args.time, modes=args.modes)
    x, y = heat_equation(args.train, seed=args.seed, **common)
    x_test, y_test = heat_equation(args.test, seed=args.seed + 1, **common)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, x=x, y=y, x_test=x_test, y_test=y_test)
    mean = np.broadcast_to(y.mean(axis=0), y_test.shape)
    print(f"wrote {args.out}: x {x.shape}, y {y.shape}, x_test {x_test.shape}, y_test {y_test.shape}")
    print(f"test nRMSE of trivial baselines: predict the training mean {nrmse(mean, y_test):.4f}, "
          f"predict the input (no diffusion) {nrmse(x_test[..., 0], y_test):.4f}")


if __name__ == "__main__":
    main()
