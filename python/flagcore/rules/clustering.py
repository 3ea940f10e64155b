"""Clustering rules: SignGuard and clipped clustering. Both split the workers into two groups
by average-linkage agglomerative clustering, keep the larger group, clip it and average it.

- clipped_clustering (Li, Ngai and Voigt, "An Experimental Study of Byzantine-Robust
  Aggregation Schemes in Federated Learning", IEEE Trans. Big Data 2023): clip every gradient
  to tau (default: the median norm of this call's workers), cluster by cosine distance
  1 - cos(g_i, g_j), average the clipped members of the larger cluster. Entirely in p-space.
- signguard (Xu, Huang, Wang, Liu and Shen, "SignGuard: Byzantine-robust Federated Learning
  through Collaborative Malicious Gradient Filtering", ICDCS 2022): S1 = workers whose norm
  ratio to the median norm M lies in [lower, upper] (0.1, 3.0); S2 = the larger cluster of the
  sign statistics (fractions of positive, zero and negative values on a random ``sample``
  fraction of the coordinates, Euclidean distance); the aggregate is the mean of the members of
  S1 and S2 clipped to M (0 when the intersection is empty).

Ties: the larger cluster wins; equal sizes keep the cluster of the lowest-index worker; the
closest pair of clusters is merged first, ties to the lowest (i, j).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np


def two_clusters(dist: np.ndarray) -> np.ndarray:
    """Labels (0/1, the cluster of row 0 is 0) of average-linkage agglomerative clustering of a
    symmetric (p, p) distance matrix stopped at two clusters (Lance-Williams updates, O(p^3))."""
    p = dist.shape[0]
    if p <= 1:
        return np.zeros(p, np.int64)
    d = np.array(dist, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    size = np.ones(p)
    active = np.ones(p, bool)
    owner = np.arange(p)
    for _ in range(p - 2):
        masked = np.where(active[:, None] & active[None, :], d, np.inf)
        i, j = divmod(int(np.argmin(masked)), p)
        i, j = min(i, j), max(i, j)
        row = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i], d[:, i] = row, row
        d[i, i] = np.inf
        size[i] += size[j]
        active[j] = False
        owner[owner == j] = i
    return cast(np.ndarray, (owner != owner[0]).astype(np.int64))


def majority(labels: np.ndarray) -> np.ndarray:
    """Members of the larger cluster (equal sizes: the cluster of row 0)."""
    ones = int(labels.sum())
    return cast(np.ndarray, labels == (1 if ones > labels.size - ones else 0))


def cosine_distances(g: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    den = norms[:, None] * norms[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(den > 0, g / den, 0.0)
    return 1.0 - np.clip(cos, -1.0, 1.0)


def clip_factors(norms: np.ndarray, tau: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > tau, tau / norms, 1.0)


def clipped_clustering_solve(g: np.ndarray, tau: float | None, scale: float) -> dict[str, Any]:
    """g: the Gram divided by ``scale`` (rules.selection.per_problem), so its norms are the
    workers' divided by sqrt(scale); an explicit tau (the caller's units) is divided likewise.
    The median norm (tau None) needs no conversion."""
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    with np.errstate(over="ignore"):  # tau far above every norm: inf, nothing is clipped
        t = float(np.median(norms)) if tau is None else tau / math.sqrt(scale)
    sel = majority(two_clusters(cosine_distances(g)))
    return dict(
        unit=np.where(sel, clip_factors(norms, t), 0.0),
        count=int(sel.sum()),
        selected=sel,
        scores=norms,
        score_power=0.5,
    )


def sign_features(xs: np.ndarray) -> np.ndarray:
    """(p, 3) fractions of positive, zero and negative values of each row (finite rows: the zeros
    are counted as the values neither positive nor negative, two passes instead of three)."""
    k = xs.shape[1]
    pos = np.count_nonzero(xs > 0, axis=1)
    neg = np.count_nonzero(xs < 0, axis=1)
    counts = np.stack([pos, k - pos - neg, neg], axis=1)
    return cast(np.ndarray, counts / max(k, 1))


def signguard_solve(g: np.ndarray, xs: np.ndarray, lower: float, upper: float) -> dict[str, Any]:
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    m = float(np.median(norms))
    if m > 0:
        s1 = (norms / m >= lower) & (norms / m <= upper)
    else:
        s1 = np.ones(norms.size, bool)
    feats = sign_features(xs)
    diff = feats[:, None, :] - feats[None, :, :]
    s2 = majority(two_clusters(np.sqrt((diff * diff).sum(axis=2))))
    sel = s1 & s2
    return dict(
        unit=np.where(sel, clip_factors(norms, m), 0.0),
        count=int(sel.sum()),
        selected=sel,
        scores=norms,
        score_power=0.5,
    )
