"""OTDD against the official backend (geomloss, annealed) and an independent NumPy Sinkhorn (converged), its
properties, and its gradients. Tiny datasets: every new shape compiles, and compiling dominates these tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import torch

from orca_jax.ot import (
    SinkhornSettings,
    class_layout,
    exact_label_distances_within,
    gaussian_label_distances_within,
    otdd,
)
from orca_jax.ot.otdd import augmented_cost, dataset_diameter, label_matrix
from orca_jax.ot.sinkhorn import sinkhorn_divergence
from tests.ot import geomloss_reference, numpy_reference


def cross_block(within, sx, sy, tx, ty, *args):
    """The source x target block of a label-distance matrix over the union, as otdd's label_matrix builds it (target
    classes numbered after the source's)."""
    k = len(np.unique(sy))
    union_y = np.concatenate([sy, ty + sy.max() + 1])
    full = within(jnp.asarray(np.concatenate([sx, tx])), class_layout(union_y), *args)
    return np.asarray(full)[:k, k:]


def labelled(seed, n, width, classes, scale=1.0, shift=0.0, first_label=0):
    """Gaussian classes; label ids first_label, first_label + 3, ... (neither 0-based nor contiguous)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n) % classes
    rng.shuffle(k)
    centres = rng.normal(size=(classes, width)) * scale
    return centres[k] + rng.normal(size=(n, width)) * scale * 0.7 + shift, first_label + 3 * k


# Unequal sizes and class counts on the two sides. All cases share shapes so that they share compilations.
DATASETS = [
    (labelled(0, 24, 3, 2, scale=0.6), labelled(1, 18, 3, 3, scale=0.5, shift=0.3, first_label=7)),
    (labelled(2, 24, 3, 2, scale=0.4, shift=-0.2), labelled(3, 18, 3, 3, scale=0.7, first_label=1)),
    (labelled(4, 24, 3, 2, scale=0.8, first_label=5), labelled(5, 18, 3, 3, scale=0.3, shift=0.5)),
]
CONVERGED = SinkhornSettings(solver="converged", threshold=1e-8, max_iterations=20000)


def converged_case(case):
    """DATASETS[case] at a third of the scale: at ε = 0.1 Sinkhorn then converges in tens of iterations, not
    thousands, which keeps the reference and the finite differences fast."""
    (sx, sy), (tx, ty) = DATASETS[case]
    return (sx / 3, sy), (tx / 3, ty)


def cosine(u, v):
    u, v = np.ravel(u), np.ravel(v)
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def assert_matches_geomloss(value, g_src, g_tgt, source, target):
    """Value within 1e-5 relative and gradients (both datasets) with cosine >= 0.9999 of the official backend's."""
    (sx, sy), (tx, ty) = source, target
    src = torch.tensor(sx, requires_grad=True)
    tgt = torch.tensor(tx, requires_grad=True)
    reference = geomloss_reference.otdd(src, torch.tensor(sy), tgt, torch.tensor(ty))
    reference.backward()
    assert abs(float(value) / reference.item() - 1) <= 1e-5
    assert cosine(g_src, src.grad.numpy()) >= 0.9999
    assert cosine(g_tgt, tgt.grad.numpy()) >= 0.9999


@pytest.mark.parametrize("case", range(len(DATASETS)))
def test_annealed_matches_geomloss_value_and_gradient(case):
    (sx, sy), (tx, ty) = DATASETS[case]
    with jax.enable_x64(True):
        value, (g_src, g_tgt) = jax.value_and_grad(lambda a, b: otdd(a, sy, b, ty), argnums=(0, 1))(sx, tx)
    assert_matches_geomloss(value, g_src, g_tgt, (sx, sy), (tx, ty))


def test_annealed_matches_geomloss_in_float32_under_jit():
    (sx, sy), (tx, ty) = DATASETS[0]
    sx, tx = sx.astype(np.float32), tx.astype(np.float32)
    value, (g_src, g_tgt) = jax.jit(jax.value_and_grad(lambda a, b: otdd(a, sy, b, ty), argnums=(0, 1)))(sx, tx)
    assert_matches_geomloss(value, g_src, g_tgt, (sx, sy), (tx, ty))


@pytest.mark.parametrize("case", range(len(DATASETS)))
def test_converged_matches_numpy_reference(case):
    (sx, sy), (tx, ty) = converged_case(case)
    with jax.enable_x64(True):
        value = float(otdd(sx, sy, tx, ty, settings=CONVERGED))
    assert abs(value / numpy_reference.otdd(sx, sy, tx, ty) - 1) <= 1e-3


@pytest.mark.slow
def test_converged_label_distances_match_numpy_reference():
    (sx, sy), (tx, ty) = converged_case(1)
    with jax.enable_x64(True):
        got = cross_block(exact_label_distances_within, sx, sy, tx, ty, CONVERGED)
    np.testing.assert_allclose(got, numpy_reference.label_distances(sx, sy, tx, ty), rtol=1e-3)


@pytest.mark.slow
def test_properties_identity_symmetry_label_permutation():
    (sx, sy), (tx, ty) = DATASETS[0]
    with jax.enable_x64(True):
        d = float(otdd(sx, sy, tx, ty))
        assert abs(float(otdd(sx, sy, sx, sy + 100))) <= 1e-6 * d
        assert float(otdd(tx, ty, sx, sy)) == pytest.approx(d, rel=1e-6)
        permuted = np.where(sy == sy.min(), 11, 2)  # label ids renamed, order swapped
        assert float(otdd(sx, permuted, tx, ty)) == pytest.approx(d, rel=1e-6)


def test_gaussian_inner_equals_closed_form():
    (sx, sy), (tx, ty) = DATASETS[1]
    with jax.enable_x64(True):
        got = cross_block(gaussian_label_distances_within, sx, sy, tx, ty)
    for i, a in enumerate(np.unique(sy)):
        for j, b in enumerate(np.unique(ty)):
            xa, xb = sx[sy == a], tx[ty == b]
            ca, cb = np.cov(xa.T), np.cov(xb.T)
            root = scipy.linalg.sqrtm(ca).real
            cross = scipy.linalg.sqrtm(root @ cb @ root).real
            expected = np.sum((xa.mean(0) - xb.mean(0)) ** 2) + np.trace(ca + cb - 2 * cross)
            assert got[i, j] == pytest.approx(expected, rel=1e-6)


def frozen_label_otdd(settings):
    """OTDD as a function of the target features with the label distances frozen at their current value: the
    function whose gradient otdd returns (the label distances are constants, as in the official code)."""
    (sx, sy), (tx, ty) = converged_case(0)
    joint = class_layout(np.r_[sy, ty + 100])
    w = label_matrix(jnp.concatenate([sx, tx]), joint, "exact", settings)
    a, b = np.full(len(sx), 1 / len(sx)), np.full(len(tx), 1 / len(tx))

    def f(t):
        diameter = dataset_diameter([(sx, a), (t, b)], joint.num_classes)
        return sinkhorn_divergence(augmented_cost(w), (sx, joint.index[: len(sx)]), a, (t, joint.index[len(sx):]),
                                   b, diameter=diameter, settings=settings)

    return jax.jit(f), tx


@pytest.mark.slow
def test_converged_gradient_matches_finite_differences_unrolling_and_otdd():
    unrolled = SinkhornSettings(solver="converged", threshold=1e-8, max_iterations=3000, differentiation="unrolled")
    with jax.enable_x64(True):
        f, tx = frozen_label_otdd(CONVERGED)
        grad = np.asarray(jax.grad(f)(tx))
        rng = np.random.default_rng(0)
        for _ in range(3):
            direction = rng.normal(size=tx.shape)
            h = 1e-5
            numeric = (float(f(tx + h * direction)) - float(f(tx - h * direction))) / (2 * h)
            assert np.sum(grad * direction) == pytest.approx(numeric, rel=1e-4, abs=1e-9)
        # Implicit differentiation (the default) and backpropagation through the iterations agree.
        np.testing.assert_allclose(jax.grad(frozen_label_otdd(unrolled)[0])(tx), grad, rtol=1e-5, atol=1e-10)
        # otdd's gradient is this one: the label distances are constants.
        (sx, sy), (_, ty) = converged_case(0)
        np.testing.assert_allclose(jax.grad(lambda t: otdd(sx, sy, t, ty, settings=CONVERGED))(tx), grad,
                                   rtol=1e-6, atol=1e-12)


def relative_error(got, expected):
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@pytest.mark.slow
@pytest.mark.parametrize(
    "solver, scales, value_tol, grad_tol",
    [
        # The annealed solver holds float32's precision at any scale.
        ("annealed", (3000.0, 1e-3), 1e-6, 1e-6),
        # The converged one too while d²·2⁻²³ ≪ ε; here d² ≈ 1.4e-5 ε and 1.2e6 ε (the gradient drifts as d²/ε
        # grows, see SinkhornSettings; beyond 10 ε of rounding it refuses, tested below).
        ("converged", (1e-3,), 1e-6, 1e-6),
        ("converged", (100.0,), 1e-5, 5e-3),
    ],
)
def test_float32_matches_float64_at_large_and_small_feature_scales(solver, scales, value_tol, grad_tol):
    """Features ×3000 (a body's embedding layer can produce that) or ×1e-3, with an offset shared by both datasets
    of 10× their spread: float32 value and gradients against float64 on the same (float32) inputs. Measured:
    ≤ 3e-7 for both solvers at these scales, except the converged gradient at ×100 (1.3e-3)."""
    (sx, sy), (tx, ty) = DATASETS[0]
    settings = SinkhornSettings(solver=solver)

    def value_and_grads(a, b):
        return jax.value_and_grad(lambda a, b: otdd(a, sy, b, ty, settings=settings), argnums=(0, 1))(a, b)

    for scale in scales:
        src, tgt = ((sx + 10) * scale).astype(np.float32), ((tx + 10) * scale).astype(np.float32)
        value, grads = value_and_grads(src, tgt)
        with jax.enable_x64(True):
            expected, expected_grads = value_and_grads(src.astype(np.float64), tgt.astype(np.float64))
        assert np.isfinite(float(value))
        assert abs(float(value) / float(expected) - 1) <= value_tol, scale
        for got, want in zip(grads, expected_grads):
            assert relative_error(got, want) <= grad_tol, scale


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx[:, :2], ty), "feature width 2"),
        (lambda sx, sy, tx, ty: otdd(sx, sy[:-1], tx, ty), "labels have 23"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, np.r_[ty[:-1], 99]), r"class\(es\) \[99\]"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, ty, epsilon=0.0), "epsilon=0.0"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, ty, solver="exact"), "solver='exact'"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, ty, inner="bures"), "inner='bures'"),
        (lambda sx, sy, tx, ty: otdd(sx, sy.astype(float), tx, ty), "integer array"),
        (lambda sx, sy, tx, ty: jax.jit(lambda y: otdd(sx, y, tx, ty))(sy), "close over it"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, ty, epsilon=0.2, settings=CONVERGED), "given together with"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, tx, ty, settings=SinkhornSettings(solver="converged",
                                                                              differentiation="auto")),
         "differentiation='auto'"),
        (lambda sx, sy, tx, ty: otdd(np.where(np.arange(3) == 1, np.nan, sx), sy, tx, ty),
         r"src_x has 24 non-finite entries \(NaN or ±inf\) out of 72"),
        (lambda sx, sy, tx, ty: otdd(sx, sy, np.where(tx > 1.0, np.inf, tx), ty),
         rf"tgt_x has {int(np.sum(DATASETS[0][1][0] > 1.0))} non-finite entries"),
        (lambda sx, sy, tx, ty: otdd(sx * 3000, sy, tx * 3000, ty, solver="converged"),
         r"solver='converged' cannot resolve these datasets: its squared diameter is .* Use solver='annealed'"),
    ],
)
def test_bad_input_is_an_error_that_names_it(call, match):
    (sx, sy), (tx, ty) = DATASETS[0]
    with pytest.raises((ValueError, TypeError), match=match):
        call(sx, sy, tx, ty)
