"""Flax NNX bodies (BERT-family text encoder, Swin) and their loading from Hugging Face checkpoints."""

from orca_jax.models.pretrained import from_pretrained, load_checkpoint
from orca_jax.models.swin import Swin, SwinConfig, SwinOutput
from orca_jax.models.text_encoder import EncoderOutput, TextEncoder, TextEncoderConfig

__all__ = [
    "EncoderOutput", "Swin", "SwinConfig", "SwinOutput", "TextEncoder", "TextEncoderConfig", "from_pretrained",
    "load_checkpoint",
]
