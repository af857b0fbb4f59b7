"""What the numbers were measured on, and pinning both frameworks to the same cores."""

from __future__ import annotations

import os
import platform

import jax


def machine_description() -> str:
    """CPU model, vector extensions, cores this process may use, and JAX's device."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return (
        f"CPU: {model}; {os.cpu_count()} logical cores, {usable} usable by this process; vector extensions: "
        f"{' '.join(vector) or 'unknown'}\nJAX {jax.__version__} on {device.platform} ({device.device_kind})"
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def pin_threads(threads: int) -> None:
    """Both frameworks on the same `threads` cores: pin the process (before JAX starts its CPU client, which sizes
    its thread pool from the affinity) and tell PyTorch."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        available = sorted(os.sched_getaffinity(0))
        if threads > len(available):
            raise SystemExit(f"--threads {threads}: this process may use only {len(available)} cores.")
        os.sched_setaffinity(0, available[:threads])
    torch.set_num_threads(threads)
