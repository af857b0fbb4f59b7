"""Distributed start-up, the device mesh, and placing host data on it."""

from orca_jax.parallel.mesh import global_batch, initialize_distributed, make_mesh, replicated

__all__ = ["global_batch", "initialize_distributed", "make_mesh", "replicated"]
