"""Label matching after feature matching (Tran et al., AISTATS 2026; code `khiembk/CrossModality`): a second
embedder-only stage that makes the body's *source* knowledge separate the *target* classes.

Why: OTDD alignment brings the embedded target data near the source features, but says nothing about whether the
body, reading those tokens, tells the target classes apart. Label matching trains a head on the source task over the
frozen body (the source head), then trains the embedder alone so that the source head's predictions on target
examples are confident within each target class and differ across classes. With p(x) the source head's class
probabilities on target example x, p̄_c their mean over class c and p̄ = Σ_c π_c p̄_c (π_c the class frequencies):

    loss = Σ_c π_c H(p̄_c) − λ H(p̄)      (λ = `align.label_matching.marginal_weight`)

the conditional entropy of the source prediction given the target class, minus its marginal entropy: the negative
mutual information between the two. H(q) = −Σ_k q_k log(q_k + 1e-10), entropies of *mean* predictions as in the
authors' `Entropy_loss`. The source head is trained under their gradient-norm penalty
L = CE + (ρ / N) Σ_i max(0, ‖∇_z ℓ_i‖ − τ)², which bounds how fast its loss changes with its input z.

Differences from the authors' code (docs/method.md): z is the head's input (the body's pooled output on the source
features, computed once and cached like the align stage's) where theirs is the embedder's output, which needs the
source images through the body at every step; the head is trained full-batch on those features; the negative term
is the marginal entropy over all classes (the issue's and the paper's form) where their conditional variant
subtracts, per class, the entropy over the other classes' examples; every class is one batched step per epoch, the
align stage's loop (`orca_jax.train.align.run_embedder_stage`), where theirs steps per class.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh

from orca_jax.models.families import family_of
from orca_jax.ot.cached_loss import check_target_batch
from orca_jax.ot.distance import value_and_grad
from orca_jax.parallel import PreemptionGuard, is_main_process
from orca_jax.train.align import AlignResult, EmbedderTarget, plot_distance_curve, run_embedder_stage
from orca_jax.train.checkpoints import save_tree
from orca_jax.workdir import write_file

ENTROPY_EPS = 1e-10  # the authors' log(p + 1e-10)
STAGE = "label_matching"


def entropy(p: jax.Array) -> jax.Array:
    return -jnp.sum(p * jnp.log(p + ENTROPY_EPS), axis=-1)


def body_features(model, x) -> jax.Array:
    """What the source head reads: the body's pooled output on the embedded inputs (no dropout)."""
    pooled, _ = family_of(model.body).encode(model.body, model.embedder, x, None)
    return pooled.astype(jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LabelMatchingLoss:
    """Σ_c π_c H(p̄_c) − λ H(Σ_c π̃_c p̄_c) for body features [classes, points, width] (π̃ = π normalised over the
    classes taking part); called as every `orca_jax.ot.distance.AlignDistance` (the key is unused)."""

    kernel: jax.Array  # [width, source classes]
    bias: jax.Array  # [source classes]
    marginal_weight: jax.Array  # λ, a scalar

    def value(self, tgt_x, mask=None, class_weights=None, *, key: jax.Array | None = None) -> jax.Array:
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.kernel.shape[0])
        tgt_x = jnp.where(mask[..., None], tgt_x, 0.0)  # padding may hold anything, NaN included
        p = jax.nn.softmax(tgt_x @ self.kernel + self.bias, axis=-1)
        counts = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1)
        per_class = jnp.sum(jnp.where(mask[..., None], p, 0.0), axis=1) / counts  # p̄_c
        conditional = jnp.sum(class_weights * entropy(per_class))
        marginal = entropy(jnp.sum(class_weights[:, None] * per_class, axis=0) / jnp.sum(class_weights))
        return conditional - self.marginal_weight * marginal

    def __call__(self, tgt_x, mask=None, class_weights=None, *,
                 key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        tgt_x, mask, class_weights = check_target_batch(tgt_x, mask, class_weights, self.kernel.shape[0])
        return value_and_grad(self, tgt_x, mask, class_weights, jax.random.key(0))


def head_loss(params, z, y, tau: float, rho: float) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy + the gradient-norm penalty, accuracy) of a linear source head on features z [N, width]. The
    per-example input gradient of the cross-entropy is W (p_i − onehot(y_i)), written out."""
    kernel, bias = params
    logits = z @ kernel + bias
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    residual = jax.nn.softmax(logits) - jax.nn.one_hot(y, kernel.shape[1])
    squares = jnp.sum(jnp.square(residual @ kernel.T), axis=-1)
    norms = jnp.where(squares > 0, jnp.sqrt(jnp.where(squares > 0, squares, 1.0)), 0.0)  # finite gradient at 0
    penalty = rho / z.shape[0] * jnp.sum(jnp.maximum(norms - tau, 0.0) ** 2)
    return jnp.mean(ce) + penalty, jnp.mean(jnp.argmax(logits, -1) == y)


def train_source_head(features: np.ndarray, labels: np.ndarray, *, steps: int, learning_rate: float, tau: float,
                      rho: float) -> tuple[tuple[jax.Array, jax.Array], float, float]:
    """The source head trained full-batch (AdamW, the authors' weight decay 0.05) from zero on the source set's
    body features; returns (kernel, bias), its final loss and its training accuracy."""
    z = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    classes = int(labels.max()) + 1
    params = (jnp.zeros((z.shape[1], classes), jnp.float32), jnp.zeros((classes,), jnp.float32))
    optimizer = optax.adamw(learning_rate, weight_decay=0.05)

    @jax.jit
    def fit(params):
        def step(_, carry):
            params, state = carry
            grads = jax.grad(lambda p: head_loss(p, z, y, tau, rho)[0])(params)
            updates, state = optimizer.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params, _ = jax.lax.fori_loop(0, steps, step, (params, optimizer.init(params)))
        return params, *head_loss(params, z, y, tau, rho)

    params, loss, accuracy = fit(params)
    return params, float(loss), float(accuracy)


def label_matching_target(head: tuple[jax.Array, jax.Array], config) -> EmbedderTarget:
    lm = config.align.label_matching
    loss = LabelMatchingLoss(head[0], head[1], jnp.asarray(lm.marginal_weight, jnp.float32))
    return EmbedderTarget(STAGE, "loss", loss, body_features, lm.epochs, lm.checkpoint_every, lm,
                          "align.label_matching")


@dataclasses.dataclass(frozen=True)
class LabelMatchingResult:
    stage: AlignResult
    head_loss: float
    head_accuracy: float


def run_label_matching(
    model: nnx.Module,
    train_x: np.ndarray,
    train_labels: np.ndarray,
    source: tuple[np.ndarray, np.ndarray],
    config,
    *,
    mesh: Mesh,
    workdir: epath.PathLike,
    preemption: PreemptionGuard | None = None,
    step_offset: int = 0,
) -> LabelMatchingResult:
    """Trains the source head on `source` = (the body's pooled source features, labels), then `model.embedder` in
    place towards `LabelMatchingLoss` for `align.label_matching.epochs` epochs, resuming from
    `workdir/label_matching`. Arguments as `run_align`'s; writes `label_matching_summary.json`, its curve, and the
    embedder again as `aligned_embedder/` (what refine, and sweeps refining from this run, start from)."""
    lm = config.align.label_matching
    head, loss, accuracy = train_source_head(*source, steps=lm.head_steps, learning_rate=lm.head_lr, tau=lm.tau,
                                             rho=lm.rho)
    result = run_embedder_stage(model, train_x, train_labels, label_matching_target(head, config), config, mesh=mesh,
                                workdir=workdir, preemption=preemption, step_offset=step_offset)
    workdir = epath.Path(workdir)
    save_tree(workdir / "aligned_embedder", nnx.state(model.embedder, nnx.Param))
    summary = {"epochs": lm.epochs, "loss_before": result.distance_before, "loss_after": result.distance_after,
               "source_head_loss": loss, "source_head_accuracy": accuracy, "seconds": result.seconds}
    write_file(workdir / "label_matching_summary.json", json.dumps(summary, indent=2))
    if is_main_process():
        write_file(workdir / "label_matching_loss.png",
                   plot_distance_curve(result, "label-matching loss", "label matching: source head on target classes",
                                       quantity="loss"))
    return LabelMatchingResult(result, loss, accuracy)
