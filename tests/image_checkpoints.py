"""The suite's tiny Swin: one geometry for the runs, loading and model tests that need an image body but test no
Swin geometry (tests/models/test_swin.py keeps its own, each a parity case). Written as a Hugging Face checkpoint
with transformers' save_pretrained, or built directly as an orca-jax model."""

from pathlib import Path

import torch
import transformers
from flax import nnx

from orca_jax.models.swin import Swin, SwinConfig

# 32 x 32 images, 4 x 4 patches (an 8 x 8 grid), width 16, one stage of one block, windows of 4.
TINY_SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=(1,), num_heads=(2,), window_size=4)
TWO_STAGES = dict(depths=(1, 1), num_heads=(2, 2))  # a patch merge between them: the 2D path's multi-stage case


def tiny_swin_config(**fields) -> transformers.SwinConfig:
    return transformers.SwinConfig(**(TINY_SWIN | fields))


def save_tiny_swin(directory, **fields) -> Path:
    """A random tiny Swin checkpoint in `directory` (seeded: the same weights every time)."""
    torch.manual_seed(0)
    transformers.SwinModel(tiny_swin_config(**fields)).save_pretrained(directory)
    return Path(directory)


def tiny_swin(**fields) -> Swin:
    """The orca-jax model of the same geometry, randomly initialised (seeded)."""
    return Swin(SwinConfig(**(TINY_SWIN | fields)), rngs=nnx.Rngs(0))
