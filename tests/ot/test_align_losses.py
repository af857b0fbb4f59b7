"""The align-stage losses (cached OTDD, MMD) against their uncached/official definitions, and pseudo-labels."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from orca_jax.ot import MMDLoss, OTDDLoss, SinkhornSettings, multi_kernel_mmd, otdd, pseudo_labels
from orca_jax.ot.label_distances import full_sq_euclidean
from orca_jax.ot.sinkhorn import half_self_cost
from tests.ot import geomloss_reference


def source(seed=0, n=40, width=4, classes=3):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (rng.normal(size=(classes, width))[y] + rng.normal(size=(n, width)) * 0.7).astype(np.float32), y


def target_batch(seed=1, width=4):
    """Two target classes padded to 12 points: 12 and 9 real points (inside the source's bounding box)."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(2, 12, width)) * 0.4).astype(np.float32)
    mask = np.ones((2, 12), bool)
    mask[1, 9:] = False
    return x, mask


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["annealed", "converged"])
def test_cached_loss_equals_weighted_sum_of_otdds(solver):
    sx, sy = source()
    x, mask = target_batch()
    weights = np.array([0.25, 0.75], np.float32)
    settings = SinkhornSettings(solver=solver, threshold=1e-6)
    loss = OTDDLoss.build(sx, sy, settings=settings)
    value, grad = loss(x, mask, weights)

    def single(t, n):
        return otdd(sx, sy, t, np.zeros(n, int), settings=settings)

    expected = weights[0] * single(x[0], 12) + weights[1] * single(x[1, :9], 9)
    # The cached schedule is fixed from the source's bounding boxes; these targets lie inside them for the outer
    # problem, not necessarily for each class, hence a tolerance above round-off for the annealed solver.
    assert float(value) == pytest.approx(float(expected), rel=1e-4)
    assert np.all(grad[1, 9:] == 0) and np.all(np.isfinite(grad))
    if solver == "annealed":  # the converged gradients are checked in test_otdd.py; this saves a compilation
        expected_grad = weights[1] * jax.grad(single)(x[1, :9], 9)
        np.testing.assert_allclose(grad[1, :9], expected_grad, rtol=1e-2, atol=1e-4 * float(jnp.abs(grad).max()))


@pytest.mark.slow
def test_cached_loss_handles_empty_slots_and_rejects_bad_batches():
    sx, sy = source()
    x, mask = target_batch()
    loss = OTDDLoss.build(sx, sy)
    mask[0] = False  # an empty slot of a fixed-size batch contributes nothing
    value, grad = loss(x, mask)
    expected, _ = loss(x[1:], mask[1:])
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    assert np.all(grad[0] == 0) and np.all(np.isfinite(grad))
    # Padding may hold anything, NaN included: it is weighted out and gets zero gradient.
    padded = np.where(mask[..., None], x, np.nan)
    again, grad_again = loss(padded, mask)
    assert float(again) == float(value) and np.array_equal(grad_again, grad)
    bad = x.copy()
    bad[1, 3, 2] = np.inf  # a real point
    with pytest.raises(ValueError, match=r"tgt_x has 1 non-finite entries \(NaN or ±inf\) out of 96 on real"):
        loss(bad, mask)
    with pytest.raises(ValueError, match="class_weights has 1 non-finite"):
        loss(x, mask, np.array([np.nan, 1.0], np.float32))
    with pytest.raises(ValueError, match="src_x has 1 non-finite"):
        OTDDLoss.build(np.where((np.arange(40) == 5)[:, None] & (np.arange(4) == 0), np.nan, sx), sy)
    mask[0, 0] = True
    with pytest.raises(ValueError, match=r"slot\(s\) \[0\] have a single real point"):
        loss(x, mask)
    with pytest.raises(ValueError, match="mask has shape"):
        loss(x, mask[:, :5])
    with pytest.raises(ValueError, match=r"\(classes, points, 4\)"):
        loss(x[..., :3])
    with pytest.raises(ValueError, match="class_weights has shape"):
        loss(x, class_weights=np.ones(3))


@pytest.mark.slow
def test_blocked_self_term_equals_the_full_one():
    """The memory-bounded source self-term (cost built a block of rows at a time) changes nothing but memory."""
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    a = np.full(50, 1 / 50, np.float32)
    settings = SinkhornSettings()

    def half_self(points, block):
        return half_self_cost(full_sq_euclidean, points, a, diameter=jnp.float32(5.0), settings=settings,
                              block=block)

    full, g_full = jax.value_and_grad(half_self)(x, None)
    blocked, g_blocked = jax.value_and_grad(half_self)(x, 16)
    assert float(blocked) == pytest.approx(float(full), rel=1e-6)
    np.testing.assert_allclose(g_blocked, g_full, rtol=1e-5, atol=1e-7)


def test_mmd_matches_official_mmd_loss():
    rng = np.random.default_rng(0)
    src, tgt = rng.normal(size=(10, 5)), rng.normal(size=(10, 5)) + 0.5
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(lambda t: multi_kernel_mmd(src, t, np.full(10, 0.1)))(tgt)
    t = torch.tensor(tgt, requires_grad=True)
    reference = geomloss_reference.mmd(torch.tensor(src), t)
    reference.backward()
    assert float(value) == pytest.approx(reference.item(), rel=1e-10)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.slow
def test_cached_loss_is_accurate_in_float32_at_large_and_small_feature_scales():
    """Source and targets ×3000 and ×1e-3, with an offset of 10× their spread (a body's embedding outputs can be
    that large and off-centre): the float32 loss and gradient equal float64's on the same inputs (measured: ≤ 6e-7;
    without centring the features, the squared-distance expansion would put the gradient off by 9 % at ×3000)."""
    sx, sy = source()
    x, mask = target_batch()
    for scale in (3000.0, 1e-3):
        src, tgt = ((sx + 10) * scale).astype(np.float32), ((x + 10) * scale).astype(np.float32)
        value, grad = OTDDLoss.build(src, sy)(tgt, mask)
        with jax.enable_x64(True):
            expected, expected_grad = OTDDLoss.build(src.astype(np.float64), sy)(tgt.astype(np.float64), mask)
        assert abs(float(value) / float(expected) - 1) <= 2e-6, scale
        grad, expected_grad = np.asarray(grad, np.float64), np.asarray(expected_grad)
        assert np.linalg.norm(grad - expected_grad) <= 1e-6 * np.linalg.norm(expected_grad), scale


def test_converged_solver_refuses_features_float32_cannot_resolve():
    sx, sy = source()
    with pytest.raises(ValueError, match=r"cannot resolve the source features: its squared diameter is .* "
                                         r"float32 rounds by .* > 10 ε = 1"):
        OTDDLoss.build(sx * 3000, sy, solver="converged")


def test_mmd_loss_pads_like_a_shorter_class_and_is_deterministic_under_a_key():
    sx, _ = source()
    x, mask = target_batch()
    loss = MMDLoss.build(sx)
    key = jax.random.key(0)
    value, grad = loss(x, mask, key=key)
    again, _ = loss(x, mask, key=key)
    assert float(value) == float(again) and np.all(grad[1, 9:] == 0) and np.all(np.isfinite(grad))
    # Padding changes nothing but the shape: the same draw on the unpadded class gives the same value.
    keys = jax.random.split(key, 2)
    first = multi_kernel_mmd(sx[jax.random.randint(keys[0], (12,), 0, len(sx))], x[0], np.full(12, 1 / 12))
    second = multi_kernel_mmd(sx[jax.random.randint(keys[1], (12,), 0, len(sx))][:9], x[1, :9], np.full(9, 1 / 9))
    # Default class weights are the classes' shares of the real points.
    assert float(value) == pytest.approx(float((12 * first + 9 * second) / 21), rel=1e-5)
    # NaN padding changes nothing; NaN on a real point, in the source, is an error.
    assert float(loss(np.where(mask[..., None], x, np.nan), mask, key=key)[0]) == float(value)
    with pytest.raises(ValueError, match="tgt_x has 8 non-finite entries"):
        loss(np.where(np.arange(12)[:, None] == 0, np.nan, x), mask, key=key)
    with pytest.raises(ValueError, match="src_x has 1 non-finite entries"):
        MMDLoss.build(np.where((np.arange(40) == 0)[:, None] & (np.arange(4) == 0), np.inf, sx))


def test_pseudo_labels_are_kmeans_on_flattened_targets_and_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 2, 3)) * 10
    truth = np.arange(200) % 10
    targets = centres[truth] + rng.normal(size=(200, 2, 3)) * 0.1
    labels = pseudo_labels(targets, seed=3)
    assert labels.dtype == np.int32 and labels.shape == (200,)
    np.testing.assert_array_equal(labels, pseudo_labels(targets, seed=3))
    # Well-separated clusters are recovered up to renaming.
    assert len({(a, b) for a, b in zip(truth, labels)}) == 10
    with pytest.raises(ValueError, match="num_clusters=10"):
        pseudo_labels(targets[:5])


@pytest.mark.slow
def test_cached_loss_runs_at_official_sizes():
    """5,000 source points in 10 classes, width 128; target classes of 64 and 512 points in one padded batch."""
    rng = np.random.default_rng(0)
    sy = np.arange(5000) % 10
    sx = (rng.normal(size=(10, 128))[sy] * 0.5 + rng.normal(size=(5000, 128))).astype(np.float32)
    loss = OTDDLoss.build(sx, sy)
    x = rng.normal(size=(2, 512, 128)).astype(np.float32)
    mask = np.zeros((2, 512), bool)
    mask[0, :64] = True
    mask[1] = True
    value, grad = loss(x, mask)
    assert np.isfinite(float(value)) and float(value) > 0
    assert np.all(np.isfinite(grad)) and np.all(grad[0, 64:] == 0)
