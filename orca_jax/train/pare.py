"""PaRe (Cai et al., ICML 2024, "Enhancing cross-modal fine-tuning with gradually intermediate modality
generation"; code `BIT-DA/PaRe`) as an option of the refine stage (`refine.pare`).

Why: instead of pulling the target data towards the source before fine-tuning (ORCA's align stage), PaRe builds
intermediate inputs during fine-tuning: a gate scores every token, and the best-scored tokens of a source example
replace the worst-scored tokens of a target example. Early in fine-tuning many tokens are replaced, later fewer, so
the body moves from inputs it knows to the target's own.

Per refine step, for a batch of target inputs x with targets y and as many source examples (x_s, y_s):
- target tokens t = embedder(x) and source tokens s = the body's own embedding of x_s (its frozen token or patch
  embedding: the "frozen copy of the embedder" of the official code, which copies that embedding);
- a gate g(token) = sigmoid(w · token + b) scores every token; with n tokens and k = `replaced_count(epoch)`, the k
  lowest-scored target positions receive, in position order, the k highest-scored source tokens in position order;
- in the first `soft_epochs` epochs both selections are Gumbel soft top-k relaxations (temperature `tau`) made hard
  with a straight-through estimator, so the chosen tokens are multiplied by masks that are 1 in value and carry the
  gate's gradient; afterwards the selections are plain top-k and the gate no longer learns;
- loss = task(model(x), y) + (1 − λ) task(model(mixed), y) + λ CE(source_head(pooled(mixed)), y_s), λ = k / n; the
  source head is an extra linear head over the body's pooled output for the source set's classes.

The count decays linearly over the epochs: k(e) = floor(n (start + (end − start) e / epochs)), e counted from 0; the
official `int(begin_num − end_num · e / epochs)` with begin_num = start n and end_num = (start − end) n.

Differences from the official code (docs/method.md): its hard phase replaces the *highest*-scored target tokens,
its soft phase the lowest; both phases here replace the lowest, as the paper describes. Source examples are drawn
uniformly at random per step (seeded by the step) instead of cycling a loader. The count and phase are inputs of
one compiled step per phase, not a recompilation per count.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from orca_jax.data.source_features import body_tokenizer
from orca_jax.data.sources import load_source
from orca_jax.models.families import family_of
from orca_jax.parallel import replicated

TINY = float(np.finfo(np.float32).tiny)  # the official SubsetOperator's floor inside the log


class PareParts(nnx.Module):
    """The parameters PaRe adds to an OrcaModel (`model.pare`): the token gate and the source head."""

    def __init__(self, token_width: int, body_width: int, source_classes: int, *, rngs: nnx.Rngs):
        self.gate = nnx.Linear(token_width, 1, rngs=rngs)
        self.source_head = nnx.Linear(body_width, source_classes, rngs=rngs)

    def scores(self, tokens: jax.Array) -> jax.Array:
        """g(token) in (0, 1) per token: [batch, n]."""
        return jax.nn.sigmoid(self.gate(tokens.astype(jnp.float32))[..., 0])


def replaced_count(epoch: int, epochs: int, tokens: int, start: float, end: float) -> int:
    """k at refine epoch `epoch` (from 0) of `epochs`: tokens x the fraction falling linearly from `start`."""
    fraction = start + (end - start) * epoch / max(epochs, 1)
    return int(np.clip(np.floor(tokens * fraction + 1e-9), 0, tokens))


def _descending_rank(values: jax.Array) -> jax.Array:
    """Each entry's rank along the last axis, 0 for the largest (ties by position)."""
    return jnp.argsort(jnp.argsort(-values, axis=-1, stable=True), axis=-1)


def soft_top_k(scores: jax.Array, k: jax.Array, tau: float, key: jax.Array) -> jax.Array:
    """A k-hot mask over the last axis, exact in value and differentiable in `scores` (straight-through): the
    official SubsetOperator. Gumbel noise is added, then k rounds each take a softmax at temperature `tau` of the
    scores with the mass already taken damped by log(1 − taken); their sum (the relaxed k-hot) picks the k entries,
    and the mask is hard − stop_gradient(relaxed) + relaxed. `k` may be traced."""
    scores = scores + jax.random.gumbel(key, scores.shape, scores.dtype)

    def round_(i, carry):
        s, onehot, khot = carry
        active = i < k
        s_next = s + jnp.log(jnp.maximum(1.0 - onehot, TINY))
        onehot_next = jax.nn.softmax(s_next / tau, axis=-1)
        return (jnp.where(active, s_next, s), jnp.where(active, onehot_next, onehot),
                khot + jnp.where(active, onehot_next, 0.0))

    zeros = jnp.zeros_like(scores)
    _, _, khot = jax.lax.fori_loop(0, scores.shape[-1], round_, (scores, zeros, zeros))
    hard = (_descending_rank(jax.lax.stop_gradient(khot)) < k).astype(scores.dtype)
    return hard - jax.lax.stop_gradient(khot) + khot


def mix_tokens(target: jax.Array, source: jax.Array, target_scores: jax.Array, source_scores: jax.Array,
               k: jax.Array, *, soft: bool, tau: float = 0.9, key: jax.Array | None = None) -> jax.Array:
    """Target tokens [batch, n, width] with their k lowest-scored positions replaced, in position order, by the k
    highest-scored source tokens in position order; `soft`: the selections by `soft_top_k` (the chosen tokens
    scaled by its straight-through masks), else plain top-k."""
    n = target.shape[1]
    if soft:
        key_source, key_target = jax.random.split(key)
        source_mask = soft_top_k(source_scores, k, tau, key_source)
        keep_mask = soft_top_k(target_scores, n - k, tau, key_target)
        selected = jax.lax.stop_gradient(source_mask) > 0.5
        replaced = jax.lax.stop_gradient(keep_mask) < 0.5
        source = source * source_mask[..., None].astype(source.dtype)
        target = target * keep_mask[..., None].astype(target.dtype)
    else:
        selected = _descending_rank(source_scores) < k
        replaced = _descending_rank(-target_scores) < k  # the k lowest
    order = jnp.argsort(~selected, axis=-1, stable=True)  # selected source positions first, ascending
    slot = jnp.clip(jnp.cumsum(replaced, axis=-1) - 1, 0, n - 1)  # the m-th replaced position takes the m-th
    chosen = jnp.take_along_axis(source, jnp.take_along_axis(order, slot, axis=-1)[..., None], axis=1)
    return jnp.where(replaced[..., None], chosen, target)


def pare_loss(model, task_loss, x, y, mask, meta, key, k, source_x, source_y, *, soft: bool, tau: float):
    """The PaRe training loss of one (padded, masked) batch; `source_x`/`source_y` the whole source set, from which
    as many examples as the batch has rows are drawn with `key`."""
    family = family_of(model.body)
    key_dropout, key_mixed, key_source, key_mix = jax.random.split(key, 4)
    tokens, layout = family.embed(model.embedder, x)
    pooled, sequence = family.encode_tokens(model.body, tokens, layout, nnx.Rngs(dropout=key_dropout))
    loss = task_loss.loss(model.head(pooled, sequence), y, mask, meta)
    rows = jax.random.randint(key_source, (x.shape[0],), 0, source_x.shape[0])
    source_tokens, _ = family.source_tokens(model.body, source_x[rows])
    source_tokens = jax.lax.stop_gradient(source_tokens).astype(tokens.dtype)  # the body's own embedding: frozen
    if source_tokens.shape[1:] != tokens.shape[1:]:
        raise ValueError(f"PaRe mixes tokens position by position: the source's {source_tokens.shape[1:]} and the "
                         f"target's {tokens.shape[1:]} tokens must have one shape.")
    mixed = mix_tokens(tokens, source_tokens, model.pare.scores(tokens), model.pare.scores(source_tokens), k,
                       soft=soft, tau=tau, key=key_mix)
    pooled_mixed, sequence_mixed = family.encode_tokens(model.body, mixed, layout, nnx.Rngs(dropout=key_mixed))
    share = k.astype(jnp.float32) / tokens.shape[1]
    mixed_loss = task_loss.loss(model.head(pooled_mixed, sequence_mixed), y, mask, meta)
    logits = model.pare.source_head(pooled_mixed.astype(jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, source_y[rows])
    source_loss = jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
    return loss + (1.0 - share) * mixed_loss + share * source_loss


@dataclasses.dataclass(frozen=True)
class PareSchedule:
    """What a PaRe refine stage's steps need besides the batch: the source set on the devices, and per epoch the
    count k and whether selection is soft."""

    source_x: jax.Array  # token ids [N, n] or images, replicated
    source_y: jax.Array  # int32 [N]
    tokens: int  # n, the target's tokens per example
    epochs: int
    start: float
    end: float
    soft_epochs: int
    tau: float

    def at(self, epoch: int) -> tuple[int, bool]:
        return replaced_count(epoch, self.epochs, self.tokens, self.start, self.end), epoch < self.soft_epochs


def pare_schedule(config, model, mesh) -> PareSchedule:
    """The schedule of `config.refine.pare` for `model`, its source set placed on every device of `mesh`."""
    x, y = source_inputs(config, model)
    rep = replicated(mesh)
    p = config.refine.pare
    return PareSchedule(jax.device_put(x, rep), jax.device_put(y, rep), model.embedder.num_tokens, config.refine.epochs,
                        p.start_fraction, p.end_fraction, p.soft_epochs, p.tau)


def source_inputs(config, model) -> tuple[np.ndarray, np.ndarray]:
    """The source set's inputs as the body's own embedding takes them (token ids of exactly the target's token count
    for a text body; images for Swin) and its labels."""
    source = load_source(config.source.name, size=config.source.size, seed=config.source.seed,
                         data_dir=config.source.data_dir or None)
    labels = np.asarray(source.labels, np.int32)
    if not family_of(model.body).needs_tokenizer:
        return np.asarray(source.inputs, np.float32), labels
    encoded = body_tokenizer(config.body.checkpoint)(list(source.inputs), padding="max_length", truncation=True,
                        max_length=model.embedder.num_tokens, return_tensors="np")
    return encoded["input_ids"].astype(np.int32), labels
