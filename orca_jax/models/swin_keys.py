"""Key table: Hugging Face Swin v1 checkpoints (SwinModel, SwinForImageClassification, SwinForMaskedImageModeling)
-> `orca_jax.models.swin.Swin`.

Keyed on the names in the files: hub files and transformers 5.24's `save_pretrained` both write the legacy names
(`attention.self.query`, `attention.output.dense`, `intermediate.dense`, `output.dense`,
`attention.self.relative_position_bias_table`); transformers 5's in-memory names (`attention.q_proj`, `mlp.fc1`,
`attention.relative_position_bias.relative_position_bias_table`, ...) are accepted as other spellings of the same
tensors (a file holding both is reported as a duplicate).

The separate query, key and value projections become the three column blocks of our fused `attention.qkv`.

Dropped on purpose: the `relative_position_index` buffers that hub files carry (after checking each equals the index
our constants encode: a mismatch is an error naming the key), and the masked-image-modeling `mask_token`, which only
SimMIM pretraining uses.
"""

import numpy as np

from orca_jax.models.swin import SwinConfig, relative_position_index
from orca_jax.weights.convert import Drop, KeyTable, Rule, conv_to_hwio, fused_linear, linear

_BLOCK = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_TARGET = r"layers.\1.blocks.\2."


def _norm(source: str, target: str) -> list[Rule]:
    return [Rule(source + r"\.weight", target + ".scale"), Rule(source + r"\.bias", target + ".bias")]


def _check_index(window_size: int):
    expected = relative_position_index(window_size)

    def check(name: str, stored: np.ndarray) -> None:
        if stored.size != expected.size or not np.array_equal(stored.reshape(expected.shape), expected):
            raise ValueError(
                f"buffer {name!r} (shape {tuple(stored.shape)}) is not the relative_position_index of a "
                f"{window_size}x{window_size} window (shape {expected.shape}) that window_size={window_size} in "
                "config.json implies; the checkpoint and its config disagree"
            )

    return check


def swin_keys(config: SwinConfig) -> KeyTable:
    return KeyTable(
        rules=[
            Rule(r"embeddings\.patch_embeddings\.projection\.weight", "embeddings.projection.kernel", conv_to_hwio),
            Rule(r"embeddings\.patch_embeddings\.projection\.bias", "embeddings.projection.bias"),
            *_norm(r"embeddings\.norm", "embeddings.norm"),
            Rule(r"embeddings\.position_embeddings", "embeddings.position_embeddings"),
            *fused_linear(
                [_BLOCK + rf"attention\.(?:self\.{name}|{name[0]}_proj)" for name in ("query", "key", "value")],
                _TARGET + "attention.qkv",
                bias=config.qkv_bias,
            ),
            *linear(_BLOCK + r"attention\.(?:output\.dense|o_proj)", _TARGET + "attention.out"),
            Rule(
                _BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table",
                _TARGET + "attention.relative_position_bias_table",
            ),
            *_norm(_BLOCK + r"layernorm_before", _TARGET + "layernorm_before"),
            *_norm(_BLOCK + r"layernorm_after", _TARGET + "layernorm_after"),
            *linear(_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)", _TARGET + "mlp_in"),
            *linear(_BLOCK + r"(?:output\.dense|mlp\.fc2)", _TARGET + "mlp_out"),
            *_norm(r"encoder\.layers\.(\d+)\.downsample\.norm", r"layers.\1.downsample.norm"),
            *linear(r"encoder\.layers\.(\d+)\.downsample\.reduction", r"layers.\1.downsample.reduction", bias=False),
            *_norm(r"layernorm", "layernorm"),
        ],
        drops=[
            Drop(
                _BLOCK + r"attention\.(?:self|relative_position_bias)\.relative_position_index",
                _check_index(config.window_size),
            ),
            Drop(r"embeddings\.mask_token"),
        ],
    )
