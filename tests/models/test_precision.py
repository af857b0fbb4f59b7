"""Mixed precision: float32 master weights with bfloat16 compute (`dtype=bfloat16`), and pure bfloat16
(`param_dtype=bfloat16` too), through the same arguments, for both bodies, the embedders and the heads."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from orca_jax.models import from_pretrained
from orca_jax.models.embedders import ImageEmbedder, SequenceEmbedder
from orca_jax.models.heads import ClassificationHead, ImageDenseHead
from orca_jax.models.orca import OrcaModel
from tests.image_checkpoints import save_tiny_swin
from tests.text_checkpoints import save_tiny_text_model

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)
_DOT = re.compile(
    r"stablehlo\.dot_general .*contracting_dims = \[([\d, ]*)\] x \[[\d, ]*\].*: "
    r"\(tensor<([\dx]+)x(\w+)>, tensor<[\dx]+x(\w+)>\) -> tensor<([\dx]+)x\w+>"
)


def matmul_flops_by_dtype(stablehlo: str) -> dict[tuple[str, str], int]:
    """FLOPs of every dot_general in a lowered module, summed per (lhs, rhs) element type."""
    flops: dict[tuple[str, str], int] = {}
    for line in stablehlo.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        match = _DOT.search(line)
        assert match, f"unparsed dot_general: {line}"
        contracting, lhs_shape, lhs_type, rhs_type, out_shape = match.groups()
        lhs = [int(d) for d in lhs_shape.split("x")]
        depth = math.prod(lhs[int(i)] for i in contracting.split(",") if i.strip())
        count = 2 * depth * math.prod(int(d) for d in out_shape.split("x"))
        flops[lhs_type, rhs_type] = flops.get((lhs_type, rhs_type), 0) + count
    return flops


@nnx.jit
def forward(model, x, mask=None):
    return model(x) if mask is None else model(x, attention_mask=mask)


def param_dtypes(model) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}


def lowered(model, fn, *args) -> str:
    """The StableHLO that `fn(model, *args)` hands to XLA."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args)).lower(state, *args).as_text()


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return save_tiny_text_model("roberta", tmp_path_factory.mktemp("roberta"))


@pytest.fixture(scope="module")
def swin(tmp_path_factory):
    # Two blocks and two stages at a 16 x 16 grid: shifted windows and a patch merge in bfloat16.
    return save_tiny_swin(tmp_path_factory.mktemp("swin"), patch_size=2, depths=(2, 1), num_heads=(2, 4))


def test_text_mixed_precision_keeps_float32_weights_and_computes_in_bfloat16(roberta):
    f32 = from_pretrained(roberta)
    mixed = from_pretrained(roberta, dtype=jnp.bfloat16)
    assert param_dtypes(f32) == param_dtypes(mixed) == {F32}
    jax.tree.map(np.testing.assert_array_equal, nnx.state(f32, nnx.Param), nnx.state(mixed, nnx.Param))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, size=(3, 12)))
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [9], [5]]))
    exact, out = forward(f32, ids, mask).last_hidden_state, forward(mixed, ids, mask).last_hidden_state
    assert out.dtype == BF16
    # Two post-norm layers of O(1) activations; each bfloat16 rounding is ~2^-9 relative, so a few hundredths
    # worst case and well under one hundredth on average is bfloat16 agreement (a wrong cast would be O(1)).
    error = np.abs(np.asarray(out, np.float32) - np.asarray(exact))
    assert error.max() < 0.05 and error.mean() < 0.01, (error.max(), error.mean())
    flops = matmul_flops_by_dtype(lowered(mixed, lambda m, i, a: m(i, attention_mask=a), ids, mask))
    assert set(flops) == {("bf16", "bf16")}, flops


def test_swin_mixed_precision_keeps_float32_weights_and_computes_in_bfloat16(swin):
    f32 = from_pretrained(swin)
    mixed = from_pretrained(swin, dtype=jnp.bfloat16)
    assert param_dtypes(mixed) == {F32}
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    exact, out = forward(f32, images), forward(mixed, images)
    assert out.last_hidden_state.dtype == out.pooler_output.dtype == BF16
    error = np.abs(np.asarray(out.last_hidden_state, np.float32) - np.asarray(exact.last_hidden_state))
    # Pre-norm blocks with a final layer norm: O(1) outputs, bfloat16 agreement as for the text body.
    assert error.max() < 0.05 and error.mean() < 0.01, (error.max(), error.mean())
    hlo = lowered(mixed, lambda m, x: m(x), images)
    flops = matmul_flops_by_dtype(hlo)
    # The relative-position bias is built from its table in float32 on purpose (a small contraction with one-hot
    # constants); every matmul on activations is bfloat16.
    assert flops[("bf16", "bf16")] > 0.99 * sum(flops.values()), flops
    assert set(flops) <= {("bf16", "bf16"), ("f32", "f32")}, flops
    convolution = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convolution and all("xbf16>, tensor<" in line for line in convolution), convolution


def test_pure_bfloat16_goes_through_the_same_arguments(roberta, swin):
    text = from_pretrained(roberta, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    image = from_pretrained(swin, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert param_dtypes(text) == param_dtypes(image) == {BF16}
    np.testing.assert_array_equal(  # the file's float32 weights, rounded once
        np.asarray(text.layers[0].mlp_in.kernel[...], np.float32),
        np.asarray(from_pretrained(roberta).layers[0].mlp_in.kernel[...].astype(jnp.bfloat16), np.float32),
    )
    assert forward(text, jnp.ones((1, 4), jnp.int32) * 5).last_hidden_state.dtype == BF16
    assert forward(image, jnp.zeros((1, 32, 32, 3))).last_hidden_state.dtype == BF16


def test_embedders_and_heads_follow_the_body(roberta, swin):
    text = from_pretrained(roberta, dtype=jnp.bfloat16)
    rngs = nnx.Rngs(0)
    embedder = SequenceEmbedder.from_body(text, 2, 12, target_seq_len=6, rngs=rngs)
    model = OrcaModel(embedder, text, ClassificationHead(32, 3, dtype=text.dtype, rngs=rngs))
    assert param_dtypes(model) == {F32}
    assert embedder.projection.dtype == BF16
    assert forward(model, jnp.ones((2, 12, 2))).dtype == BF16

    body = from_pretrained(swin, dtype=jnp.bfloat16)
    embedder = ImageEmbedder.from_body(body, 1, rngs=rngs)
    head = ImageDenseHead.from_body(body, out_channels=1, output_size=(8, 8), rngs=rngs)
    model = OrcaModel(embedder, body, head)
    assert param_dtypes(model) == {F32}
    assert embedder.projection.dtype == head.decoder.dtype == BF16
    assert forward(model, jnp.ones((1, 16, 16, 1))).dtype == F32  # dense heads return float32 in any compute dtype

    pure = from_pretrained(swin, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)
    assert param_dtypes(ImageEmbedder.from_body(pure, 1, rngs=rngs)) == {BF16}


def test_mixed_precision_gradients_are_float32_and_close_to_float32_ones(roberta):
    tokens = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 32)), jnp.float32)
    grads = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        graphdef, params = nnx.split(from_pretrained(roberta, dtype=dtype), nnx.Param)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p).encode(tokens).pooler_output.astype(F32) ** 2)  # noqa: E731
        grads[dtype] = jax.jit(jax.grad(loss))(params)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads[jnp.bfloat16])} == {F32}
    exact, mixed = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads[d])]) for d in grads)
    # bfloat16 rounding in the forward and backward passes: the gradient keeps its direction to within a few percent.
    cosine = exact @ mixed / (np.linalg.norm(exact) * np.linalg.norm(mixed))
    assert cosine > 0.99, cosine
