"""Parity of the Swin body: random NHWC images through both models, and embedded tokens through `encode`.

For Swin, `length` is the image side in pixels (square images); a body with absolute position embeddings only takes
its config's `image_size`, which is then used instead (the comparison names give the size used).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx
import torch
import transformers

from orca_jax.models.pretrained import LoadedCheckpoint
from orca_jax.parity import Comparison, max_abs_diff


def reference_outputs(reference: transformers.SwinModel, images_nhwc: np.ndarray) -> dict[str, list[np.ndarray]]:
    """transformers' outputs in our layouts: tokens, NHWC maps, last hidden state and pooled output."""
    with torch.no_grad():
        out = reference(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2)), output_hidden_states=True)
    return {
        "hidden_states": [h.numpy() for h in out.hidden_states],
        "maps": [h.numpy().transpose(0, 2, 3, 1) for h in out.reshaped_hidden_states],
        "last_hidden_state": [out.last_hidden_state.numpy()],
        "pooler_output": [out.pooler_output.numpy()],
    }


def reference_encode(reference: transformers.SwinModel, tokens: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """transformers' encoder + final norm on given patch tokens (what `Swin.encode` must equal)."""
    with torch.no_grad():
        hidden = reference.encoder(torch.from_numpy(tokens), grid).last_hidden_state
        return reference.layernorm(hidden).numpy()


def compare_models(model, reference, images: np.ndarray, *, prefix: str) -> list[Comparison]:
    """Every stage, the last hidden state and the pooled output of our `model` against `reference` on `images`."""
    ours = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, jnp.asarray(images))
    theirs = reference_outputs(reference, images)
    results = []
    for i, (a, b) in enumerate(zip(ours.hidden_states, theirs["hidden_states"], strict=True)):
        results.append(Comparison(f"{prefix}/{'embeddings' if i == 0 else f'stage {i}'}", max_abs_diff(a, b)))
    for i, (a, b) in enumerate(zip(ours.reshaped_hidden_states, theirs["maps"], strict=True)):
        results.append(Comparison(f"{prefix}/{'embeddings' if i == 0 else f'stage {i}'} map", max_abs_diff(a, b)))
    results.append(Comparison(f"{prefix}/last_hidden_state", max_abs_diff(ours.last_hidden_state, theirs["last_hidden_state"][0])))
    results.append(Comparison(f"{prefix}/pooler", max_abs_diff(ours.pooler_output, theirs["pooler_output"][0])))
    return results


def compare(checkpoint, loaded: LoadedCheckpoint, *, batch: int, length: int, seed: int) -> list[Comparison]:
    reference = transformers.AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    config = loaded.config
    side = (length, length)
    if config.use_absolute_embeddings:
        side = config.image_size
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, *side, config.num_channels)).astype(np.float32)
    results = compare_models(loaded.model, reference, images, prefix=f"images {side[0]}x{side[1]}")
    grid = (-(-side[0] // config.patch_size[0]), -(-side[1] // config.patch_size[1]))
    tokens = rng.normal(size=(batch, grid[0] * grid[1], config.embed_dim)).astype(np.float32)
    ours = nnx.jit(lambda m, x: m.encode(x, grid).last_hidden_state)(loaded.model, jnp.asarray(tokens))
    results.append(Comparison(f"tokens {grid[0]}x{grid[1]}/encode", max_abs_diff(ours, reference_encode(reference, tokens, grid))))
    return results
