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

from .._backend import core


def two_clusters(dist: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Labels (0/1, the cluster of row 0 is 0) of average-linkage agglomerative clustering of a
    symmetric (p, p) distance matrix stopped at two clusters: core.two_clusters (Lance-Williams
    updates; each row keeps its nearest neighbour, so O(p^2) typical time instead of a search of
    the whole matrix per merge; the same merges, ties included). ``overwrite``: the clustering
    works in ``dist`` itself (a float64 C-contiguous array the caller no longer needs; its
    contents are lost) instead of a p x p copy."""
    d = np.ascontiguousarray(dist, dtype=np.float64)
    return cast(np.ndarray, core.two_clusters(d, overwrite=overwrite))


def majority(labels: np.ndarray) -> np.ndarray:
    """Members of the larger cluster (equal sizes: the cluster of row 0)."""
    ones = int(labels.sum())
    return cast(np.ndarray, labels == (1 if ones > labels.size - ones else 0))


def cosine_distances(g: np.ndarray) -> np.ndarray:
    """1 - clip(G_ij / (|g_i| |g_j|), -1, 1), with 0 for the cosine where a norm is 0; in place
    on one (p, p) array (the norms are >= 0, so den is 0 exactly where it is not > 0)."""
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    den = np.multiply.outer(norms, norms)
    np.divide(g, den, out=den, where=den > 0)
    np.clip(den, -1.0, 1.0, out=den)
    return np.subtract(1.0, den, out=den)


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
    sel = majority(two_clusters(cosine_distances(g), overwrite=True))  # a fresh array
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


def signguard_solve(sq: np.ndarray, xs: np.ndarray, lower: float, upper: float) -> dict[str, Any]:
    """sq: the (p,) squared norms (per_problem's scaled ones); xs: the rows' sampled values."""
    norms = np.sqrt(np.maximum(sq, 0.0))
    m = float(np.median(norms))
    if m > 0:
        s1 = (norms / m >= lower) & (norms / m <= upper)
    else:
        s1 = np.ones(norms.size, bool)
    feats = sign_features(xs)
    # the Euclidean distances feature by feature: p x p temporaries, not a (p, p, 3) one (400 MB
    # at p = 4096); (d0 + d1) + d2 is numpy's sum over the last axis of three, bit for bit
    d2 = np.zeros((feats.shape[0], feats.shape[0]))
    diff = np.empty_like(d2)
    for c in range(feats.shape[1]):
        np.subtract(feats[:, c, None], feats[None, :, c], out=diff)
        d2 += np.multiply(diff, diff, out=diff)
    del diff
    s2 = majority(two_clusters(np.sqrt(d2, out=d2), overwrite=True))  # d2 is not needed after
    sel = s1 & s2
    return dict(
        unit=np.where(sel, clip_factors(norms, m), 0.0),
        count=int(sel.sum()),
        selected=sel,
        scores=norms,
        score_power=0.5,
    )
