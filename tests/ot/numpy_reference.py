"""An independent converged reference in NumPy (float64): log-domain alternating Sinkhorn run until the L1 marginal
error is below 1e-11, the debiased divergence, otdd's exact label distances and the OTDD built from them. It shares
no code with orca_jax or OTT; it is slow and only meant for the tiny test datasets."""
import numpy as np
from scipy.special import logsumexp


def sinkhorn_cost(c, a, b, eps, tol=1e-11, max_iterations=200_000):
    """OT_ε(a, b) = ⟨a, f⟩ + ⟨b, g⟩ at convergence; ε is decreased geometrically first to converge faster."""
    f, g = np.zeros(len(a)), np.zeros(len(b))
    log_a, log_b = np.log(a), np.log(b)
    for e in [eps * 4.0 ** k for k in range(8, 0, -1)] + [eps] * max_iterations:
        f = -e * logsumexp(log_b[None] + (g[None] - c) / e, axis=1)
        g = -e * logsumexp(log_a[:, None] + (f[:, None] - c) / e, axis=0)
        if e == eps:
            row_marginal = np.exp(log_a[:, None] + log_b[None] + (f[:, None] + g[None] - c) / e).sum(1)
            if np.abs(row_marginal - a).sum() < tol:
                break
    else:
        raise RuntimeError("the NumPy reference Sinkhorn did not converge")
    return a @ f + b @ g


def divergence(cost, x, a, y, b, eps):
    return (sinkhorn_cost(cost(x, y), a, b, eps) - 0.5 * sinkhorn_cost(cost(x, x), a, a, eps)
            - 0.5 * sinkhorn_cost(cost(y, y), b, b, eps))


def sq_dist(x, y):
    return ((x[:, None] - y[None]) ** 2).sum(-1)


def uniform(n):
    return np.full(n, 1.0 / n)


def label_distances(x1, y1, x2, y2, eps=0.1):
    c1, c2 = np.unique(y1), np.unique(y2)
    return np.array([[divergence(sq_dist, x1[y1 == i], uniform(np.sum(y1 == i)), x2[y2 == j],
                                 uniform(np.sum(y2 == j)), eps) for j in c2] for i in c1])


def otdd(x1, y1, x2, y2, eps=0.1):
    k1 = len(np.unique(y1))
    l1 = np.unique(y1, return_inverse=True)[1]
    l2 = np.unique(y2, return_inverse=True)[1] + k1
    w = np.block([[label_distances(x1, y1, x1, y1, eps), label_distances(x1, y1, x2, y2, eps)],
                  [label_distances(x2, y2, x1, y1, eps), label_distances(x2, y2, x2, y2, eps)]])
    np.fill_diagonal(w, 0.0)

    def cost(p, q):
        return sq_dist(p[0], q[0]) / 2 + w[p[1]][:, q[1]] / 2

    return divergence(cost, (x1, l1), uniform(len(x1)), (x2, l2), uniform(len(x2)), eps)
