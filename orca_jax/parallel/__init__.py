"""Distributed start-up, the device mesh, and placing host data on it."""

from orca_jax.parallel.mesh import (
    batch_from_process_rows,
    global_batch,
    initialize_distributed,
    make_mesh,
    process_rows,
    replicated,
)

__all__ = [
    "batch_from_process_rows",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "process_rows",
    "replicated",
]
