"""orca-jax: ORCA (align, then refine) in JAX/Flax NNX."""
