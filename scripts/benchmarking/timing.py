"""Step times with their spread over rounds, the sides interleaved so that load from other processes falls on
all alike; a matmul peak measured in the same run."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Spread:
    minimum: float
    median: float
    maximum: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(min(values), statistics.median(values), max(values))


def interleaved_seconds(fns: dict[str, Callable[[], None]], steps: int, repeats: int, warmup: int = 2) -> dict[str, Spread]:
    """Mean seconds per call of each function over `repeats` rounds of `steps` calls, the functions alternating
    call by call (so a burst of load from elsewhere hits all of them); its min / median / max over the rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        totals = dict.fromkeys(fns, 0.0)
        for _ in range(steps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                totals[name] += time.perf_counter() - start
        for name in fns:
            rounds[name].append(totals[name] / steps)
    return {name: Spread.of(values) for name, values in rounds.items()}


def matmul_flops_per_second(matmul: Callable[[], None], n: int, steps: int = 5) -> float:
    """Best of `steps` timed n x n x n matmuls after a warm-up call."""
    matmul()
    best = min(_timed(matmul) for _ in range(steps))
    return 2 * n**3 / best


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def jax_matmul(n: int, dtype, accumulate=None) -> Callable[[], None]:
    """An n x n x n matmul in `dtype`, its result in `accumulate` (default: `dtype`)."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
    mm = jax.jit(lambda x: jnp.matmul(x, x, preferred_element_type=accumulate))
    return lambda: mm(a).block_until_ready()
