"""The official backend, for comparison only: otdd's ``precomputed_labeldist`` + ``exact`` inner OT on geomloss, as
ORCA calls it (debiased inner and outer Sinkhorn, ε = entreg, blur = √ε, tensorized outer backend), and the
official multi-kernel ``MMD_loss``. Written from the published behaviour; nothing is cached, as in the original."""
import itertools

import torch
from geomloss import SamplesLoss
from geomloss._legacy.utils import squared_distances


def label_distances(x1, y1, x2=None, y2=None, entreg=0.1):
    """otdd's ``pwdist_exact``: one geomloss call per class pair, read out with ``.item()``."""
    symmetric = x2 is None
    if symmetric:
        x2, y2 = x1, y1
    c1, c2 = torch.unique(y1), torch.unique(y2)
    loss = SamplesLoss("sinkhorn", p=2, cost=squared_distances, debias=True, blur=entreg ** 0.5)
    pairs = itertools.combinations(range(len(c1)), 2) if symmetric else itertools.product(range(len(c1)),
                                                                                        range(len(c2)))
    d = torch.zeros(len(c1), len(c2), dtype=x1.dtype)
    for i, j in pairs:
        d[i, j] = loss(x1[y1 == c1[i]], x2[y2 == c2[j]]).item()
        if symmetric:
            d[j, i] = d[i, j]
    return d


def otdd(x1, y1, x2, y2, entreg=0.1):
    """Debiased OTDD with the label distances as constants; differentiable w.r.t. x1 and x2 (torch tensors)."""
    k1 = len(torch.unique(y1))
    y1 = torch.unique(y1, return_inverse=True)[1]
    y2 = torch.unique(y2, return_inverse=True)[1] + k1
    cross = label_distances(x1, y1, x2, y2)
    w = torch.cat([torch.cat([label_distances(x1, y1), cross], 1),
                   torch.cat([cross.T, label_distances(x2, y2)], 1)], 0)

    def cost(z1, z2):
        l1, l2 = z1[:, :, -1].long(), z2[:, :, -1].long()
        label_part = w.flatten()[(w.shape[1] * l1[:, :, None] + l2[:, None, :]).flatten(1)].reshape(
            -1, l1.shape[1], l2.shape[1])
        return squared_distances(z1[:, :, :-1], z2[:, :, :-1]) / 2 + label_part / 2

    loss = SamplesLoss("sinkhorn", p=2, cost=cost, debias=True, blur=entreg ** 0.5, backend="tensorized")
    z1 = torch.cat([x1, y1.to(x1.dtype)[:, None]], -1)
    z2 = torch.cat([x2, y2.to(x2.dtype)[:, None]], -1)
    return loss(z1, z2)


def mmd(source, target, kernel_mul=2.0, kernel_num=5):
    """The official ``MMD_loss.forward`` on equally sized source and target batches."""
    n = source.shape[0] + target.shape[0]
    total = torch.cat([source, target], 0)
    l2 = ((total[None] - total[:, None]) ** 2).sum(2)
    bandwidth = torch.sum(l2.data) / (n ** 2 - n) / kernel_mul ** (kernel_num // 2)
    kernels = sum(torch.exp(-l2 / (bandwidth * kernel_mul ** i)) for i in range(kernel_num))
    b = source.shape[0]
    return torch.mean(kernels[:b, :b] + kernels[b:, b:] - kernels[:b, b:] - kernels[b:, :b])
