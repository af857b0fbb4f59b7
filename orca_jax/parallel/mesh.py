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


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over all devices (or `devices`); -1 on one axis means "all remaining devices"."""
    devices = jax.devices() if devices is None else list(devices)
    count = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("At most one of mesh.data and mesh.fsdp may be -1.")
    if data == -1:
        data = count // max(fsdp, 1)
    if fsdp == -1:
        fsdp = count // max(data, 1)
    if data < 1 or fsdp < 1 or data * fsdp != count:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} does not use the {count} devices exactly; choose sizes whose product is "
            f"{count} (or -1 for one of them)."
        )
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
