"""The device mesh from the config, and global arrays on it.

Axes are `("data", "fsdp")`; what each is for, and which parameters are split over them, is in `sharding.py`. They
are created as `AxisType.Auto` on purpose: orca-jax places inputs and parameters with explicit `NamedSharding`s and
lets XLA's partitioner propagate shardings through the step, which is what a jitted step written as ordinary array
code needs (jax >= 0.10 `make_mesh` defaults to Explicit axes, under which every sharded op must be annotated).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def mesh_axes(data: int, fsdp: int, count: int) -> tuple[int, int]:
    """The (data, fsdp) sizes that `mesh.data` / `mesh.fsdp` as set (-1: all remaining devices) give on `count`
    devices. A pure function, so a config can be checked before any device is touched; its errors name the values
    as the user set them, never the sizes -1 would have resolved to."""
    given = f"mesh.data={data!r}, mesh.fsdp={fsdp!r}"
    for name, size in (("data", data), ("fsdp", fsdp)):
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(
                f"mesh.{name}={size!r}: not a mesh size; use a positive integer, or -1 for all remaining devices."
            )
    if data == -1 and fsdp == -1:
        raise ValueError(f"{given}: at most one axis may be -1 (all remaining devices); give one of them a size, "
                         "e.g. mesh.fsdp=1.")
    if -1 in (data, fsdp):
        name, size, other = ("fsdp", fsdp, "data") if data == -1 else ("data", data, "fsdp")
        if count % size:
            divisors = ", ".join(str(d) for d in range(1, count + 1) if count % d == 0)
            raise ValueError(
                f"mesh.{name}={size}: does not divide the device count, {count}, which mesh.{other}=-1 would share "
                f"out; set mesh.{name} to a divisor of {count} ({divisors})."
            )
        return (count // size, size) if data == -1 else (size, count // size)
    if data * fsdp != count:
        raise ValueError(
            f"{given}: {data} x {fsdp} = {data * fsdp} devices, but the device count is {count}; choose sizes whose "
            f"product is {count}, or -1 for one of them (all remaining devices)."
        )
    return data, fsdp


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over all devices (or `devices`); -1 on one axis means "all remaining devices"."""
    devices = jax.devices() if devices is None else list(devices)
    data, fsdp = mesh_axes(data, fsdp, len(devices))
    return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def process_rows(batch_size: int) -> slice:
    """This process's rows of a global batch: the batch is split evenly over the processes, in process order,
    which is how `make_array_from_process_local_data` lays process-local rows over a mesh from `make_mesh`."""
    count = jax.process_count()
    if batch_size % count:
        raise ValueError(f"batch size {batch_size} does not split evenly over {count} processes.")
    per = batch_size // count
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def batch_from_process_rows(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """The global batch whose `process_rows` this process holds, sharded along axis 0 over the data axes."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(("data", "fsdp"))), local)


def global_batch(host_array: np.ndarray, mesh: Mesh, axis: int = 0) -> jax.Array:
    """Places an array that every process holds whole, sharded along `axis` over the mesh's data axes.

    For small arrays that every process can build identically (the align stage's per-class samples); training
    batches are loaded per process instead (`process_rows`). Each process contributes only the shards its devices
    hold, so this is correct on several hosts too.
    `axis` must divide by the number of data-parallel devices (pad with masked entries first).
    """
    spec = [None] * host_array.ndim
    spec[axis] = ("data", "fsdp")
    sharding = NamedSharding(mesh, P(*spec))
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if host_array.shape[axis] % shards:
        raise ValueError(
            f"axis {axis} of an array of shape {host_array.shape} does not divide over {shards} devices; pad it."
        )
    return jax.make_array_from_callback(host_array.shape, sharding, lambda index: host_array[index])
