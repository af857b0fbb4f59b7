"""Distributed start-up, the device mesh, where parameters live on it, and placing host data on it."""

from orca_jax.parallel.mesh import batch_from_process_rows, global_batch, make_mesh, process_rows, replicated
from orca_jax.parallel.multihost import (
    INTERRUPTED_EXIT_CODE,
    PREEMPTED_EXIT_CODE,
    Preempted,
    PreemptionGuard,
    initialize_distributed,
    is_main_process,
)
from orca_jax.parallel.sharding import (
    DEFAULT_RULES,
    MIN_SHARD_BYTES,
    init_optimizer,
    optimizer_shardings,
    param_shardings,
    place,
)

__all__ = [
    "DEFAULT_RULES",
    "MIN_SHARD_BYTES",
    "INTERRUPTED_EXIT_CODE",
    "PREEMPTED_EXIT_CODE",
    "Preempted",
    "PreemptionGuard",
    "batch_from_process_rows",
    "global_batch",
    "init_optimizer",
    "initialize_distributed",
    "is_main_process",
    "make_mesh",
    "optimizer_shardings",
    "param_shardings",
    "place",
    "process_rows",
    "replicated",
]
