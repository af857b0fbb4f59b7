"""Key table: Hugging Face BERT-family checkpoints (BertModel, RobertaModel, XLMRobertaModel and their task models)
-> `orca_jax.models.text_encoder.TextEncoder`.

Old BERT checkpoints name layer-norm parameters gamma/beta; both spellings map to the same path, and a file that
holds both is reported as a duplicate. The separate query, key and value projections become the three column blocks
of our fused `attention.qkv`.
"""

from orca_jax.weights.convert import Drop, KeyTable, Rule, fused_linear, linear

_LAYER = r"encoder\.layer\.(\d+)\."
_SCALE = r"(?:weight|gamma)"
_BIAS = r"(?:bias|beta)"


def _norm(source: str, target: str) -> list[Rule]:
    return [Rule(source + r"\." + _SCALE, target + ".scale"), Rule(source + r"\." + _BIAS, target + ".bias")]


BERT_FAMILY_KEYS = KeyTable(
    rules=[
        Rule(r"embeddings\.word_embeddings\.weight", "embeddings.word.embedding"),
        Rule(r"embeddings\.position_embeddings\.weight", "embeddings.position.embedding"),
        Rule(r"embeddings\.token_type_embeddings\.weight", "embeddings.token_type.embedding"),
        *_norm(r"embeddings\.LayerNorm", "embeddings.norm"),
        *fused_linear([_LAYER + rf"attention\.self\.{n}" for n in ("query", "key", "value")],
                      r"layers.\1.attention.qkv"),
        *linear(_LAYER + r"attention\.output\.dense", r"layers.\1.attention.out"),
        *_norm(_LAYER + r"attention\.output\.LayerNorm", r"layers.\1.attention_norm"),
        *linear(_LAYER + r"intermediate\.dense", r"layers.\1.mlp_in"),
        *linear(_LAYER + r"output\.dense", r"layers.\1.mlp_out"),
        *_norm(_LAYER + r"output\.LayerNorm", r"layers.\1.mlp_norm"),
        *linear(r"pooler\.dense", "pooler.dense"),
    ],
    # Constant index buffers that older transformers versions saved; ours are computed from the config.
    drops=[Drop(r"embeddings\.position_ids"), Drop(r"embeddings\.token_type_ids")],
)
