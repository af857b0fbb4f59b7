"""Parity of the BERT-family encoder: token ids without a mask, token ids with padding, and `inputs_embeds`."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
import transformers

from orca_jax.parity import Comparison, max_abs_diff
from orca_jax.models.pretrained import LoadedCheckpoint


def random_text_batch(config, batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids avoiding the pad id, a mask whose rows have decreasing lengths (row 0 unpadded), token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch, length))
    ids = np.where(ids == config.pad_token_id, (ids + 1) % config.vocab_size, ids)
    lengths = np.maximum(1, length - np.arange(batch) * max(1, length // (2 * max(batch - 1, 1))))
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, config.pad_token_id)
    types = rng.integers(0, config.type_vocab_size, size=(batch, length)) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def compare(checkpoint, loaded: LoadedCheckpoint, *, batch: int, length: int, seed: int) -> list[Comparison]:
    reference = transformers.AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    config = loaded.config
    inputs = random_text_batch(config, batch, length, seed)
    embeds = np.random.default_rng(seed + 1).normal(size=(batch, length, config.hidden_size)).astype(np.float32)
    results = []
    full = {"input_ids": inputs["input_ids"][:1]}  # row 0 has no padding
    for path, ours_kwargs, ref_kwargs in [
        (
            "input_ids, no mask",
            {"input_ids": jnp.asarray(full["input_ids"])},
            {"input_ids": torch.from_numpy(full["input_ids"])},
        ),
        (
            "input_ids",
            {k: jnp.asarray(v) for k, v in inputs.items()},
            {k: torch.from_numpy(v) for k, v in inputs.items()},
        ),
        (
            "inputs_embeds",
            {"inputs_embeds": jnp.asarray(embeds), "attention_mask": jnp.asarray(inputs["attention_mask"])},
            {"inputs_embeds": torch.from_numpy(embeds), "attention_mask": torch.from_numpy(inputs["attention_mask"])},
        ),
    ]:
        kwargs = dict(ours_kwargs)
        ids = kwargs.pop("input_ids", None)
        ours = loaded.model(ids, output_hidden_states=True, **kwargs)
        with torch.no_grad():
            theirs = reference(**ref_kwargs, output_hidden_states=True)
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states, strict=True)):
            results.append(Comparison(f"{path}/{'embeddings' if i == 0 else f'layer {i}'}", max_abs_diff(a, b)))
        if ours.pooler_output is not None:
            results.append(Comparison(f"{path}/pooler", max_abs_diff(ours.pooler_output, theirs.pooler_output)))
    return results
