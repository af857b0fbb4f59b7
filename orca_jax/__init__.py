"""orca-jax: ORCA (align, then refine) in JAX/Flax NNX."""

__all__ = ["load_model"]


def __getattr__(name):
    # Imported on first use: `import orca_jax.config` (every config file does) need not load models and checkpoints.
    if name == "load_model":
        from orca_jax.inference import load_model

        return load_model
    raise AttributeError(f"module 'orca_jax' has no attribute {name!r}")
