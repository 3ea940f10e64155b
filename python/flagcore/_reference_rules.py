"""Plain float64 NumPy references of the textbook robust rules, for tests and benchmarks only.

Each takes one (p, n) stack of finite gradients (exclusion of non-finite workers is the
caller's business) and follows the published definition directly: distances from explicit
differences, per-coordinate sorts, Weiszfeld on the full data. Also the input factory that
the tests and the benchmark share.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np


def make_gradients(
    p: int,
    n: int,
    *,
    seed: int = 0,
    byzantine: int = 0,
    dtype: Any = np.float32,
    spread: float = 1.0,
) -> np.ndarray:
    """(p, n) test gradients: honest rows = a common direction + noise; the last ``byzantine``
    rows are far off (uniform [0, 1) scaled by 10, like the FA paper's random attack)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n)
    x = base + spread * rng.standard_normal((p, n))
    if byzantine:
        x[p - byzantine :] = 10.0 * rng.random((byzantine, n))
    return x.astype(dtype)


def mean_ref(x: np.ndarray) -> np.ndarray:
    return cast(np.ndarray, np.asarray(x, np.float64).mean(axis=0))


def median_ref(x: np.ndarray) -> np.ndarray:
    return np.median(np.asarray(x, np.float64), axis=0)


def trimmed_mean_ref(x: np.ndarray, f: int) -> np.ndarray:
    s = np.sort(np.asarray(x, np.float64), axis=0)
    return cast(np.ndarray, s[f : s.shape[0] - f].mean(axis=0))


def _closest_mean(x: np.ndarray, centre: np.ndarray, k: int) -> np.ndarray:
    s = np.sort(np.asarray(x, np.float64), axis=0)
    d = np.abs(s - centre[None])
    order = np.argsort(d, axis=0, kind="stable")[:k]  # ties: the smaller value first
    return cast(np.ndarray, np.take_along_axis(s, order, axis=0).mean(axis=0))


def meamed_ref(x: np.ndarray, f: int) -> np.ndarray:
    return _closest_mean(x, median_ref(x), x.shape[0] - f)


def phocas_ref(x: np.ndarray, f: int) -> np.ndarray:
    return _closest_mean(x, trimmed_mean_ref(x, f), x.shape[0] - f)


def sq_dist_ref(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.array([[np.sum((a - b) ** 2) for b in x] for a in x])


def krum_scores_ref(x: np.ndarray, f: int, idx: list[Any] | None = None) -> np.ndarray:
    d = sq_dist_ref(x)
    idx = list(range(x.shape[0])) if idx is None else list(idx)
    nb = max(len(idx) - f - 2, 0)
    return np.array([np.sort([d[i, j] for j in idx if j != i])[:nb].sum() for i in idx])


def multi_krum_ref(x: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    sc = krum_scores_ref(x, f)
    sel = np.argsort(sc, kind="stable")[:m]
    return np.asarray(x, np.float64)[sel].mean(axis=0), np.sort(sel)


def bulyan_ref(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    p = x.shape[0]
    theta = p - 2 * f
    remaining = list(range(p))
    chosen = []
    for _ in range(theta):
        sc = krum_scores_ref(x, f, remaining)
        best = remaining[int(np.argmin(sc))]
        chosen.append(best)
        remaining.remove(best)
    sel = np.sort(chosen)
    beta = theta - 2 * f
    return _closest_mean(x[sel], median_ref(x[sel]), beta), sel


def geometric_median_ref(
    x: np.ndarray, *, iters: int = 20000, tol: float = 1e-15
) -> tuple[np.ndarray, float]:
    """Weiszfeld on the full data from the mean, to (near) machine precision."""
    x = np.asarray(x, np.float64)
    z = x.mean(axis=0)

    def obj(v: np.ndarray) -> float:
        return float(np.linalg.norm(x - v, axis=1).sum())

    f_prev = obj(z)
    for _ in range(iters):
        d = np.maximum(np.linalg.norm(x - z, axis=1), 1e-300)
        w = d.min() / d  # 1 / d scaled to max 1: no overflow when z sits on a data point
        z = (w[:, None] * x).sum(axis=0) / w.sum()
        f_new = obj(z)
        if f_prev - f_new <= tol * f_new:
            break
        f_prev = f_new
    return z, obj(z)


def weiszfeld_full(x: np.ndarray, iters: int) -> np.ndarray:
    """``iters`` plain Weiszfeld steps on the full data (the way peers compute it)."""
    x = np.asarray(x)
    z = x.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - z, axis=1), 1e-12)
        z = (w[:, None] * x).sum(axis=0) / w.sum()
    return cast(np.ndarray, z)


def centered_clipping_ref(
    x: np.ndarray, tau: float, iterations: int, v0: np.ndarray | None = None
) -> np.ndarray:
    x = np.asarray(x, np.float64)
    v = np.zeros(x.shape[1]) if v0 is None else np.asarray(v0, np.float64).copy()
    for _ in range(iterations):
        diff = x - v
        nrm = np.linalg.norm(diff, axis=1)
        c = np.minimum(1.0, tau / np.maximum(nrm, 1e-300))
        v = v + (c[:, None] * diff).mean(axis=0)
    return v


def nnm_ref(x: np.ndarray, f: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    p = x.shape[0]
    d = sq_dist_ref(x)
    out = np.empty_like(x)
    for i in range(p):
        key = d[i].copy()
        key[i] = -1.0
        nb = np.argsort(key, kind="stable")[: p - f]
        out[i] = x[nb].mean(axis=0)
    return out


def bucketing_ref(x: np.ndarray, s: int, perm: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    nb = math.ceil(x.shape[0] / s)
    return np.stack([x[perm[j * s : (j + 1) * s]].mean(axis=0) for j in range(nb)])


# ---------------------------------------------------------------- the catalogue (issue 14)
# Textbook forms in the data's own space (n-dimensional differences, explicit covariance
# matrices and SVDs, scipy's hierarchical clustering), independent of the p-space code.


def _subset_mean(x: np.ndarray, sel: Any) -> tuple[np.ndarray, np.ndarray]:
    sel = np.asarray(sorted(sel))
    return x[sel].sum(axis=0) / sel.size, sel


def mda_ref(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-diameter averaging: first subset (itertools order) of p - f rows whose largest
    pairwise Euclidean distance is smallest."""
    import itertools

    x = np.asarray(x, np.float64)
    p = x.shape[0]
    best, best_s = np.inf, None
    for s in itertools.combinations(range(p), p - f):
        diam = max(
            (float(np.linalg.norm(x[i] - x[j])) for i, j in itertools.combinations(s, 2)),
            default=0.0,
        )
        if diam < best:
            best, best_s = diam, s
    return _subset_mean(x, best_s)


def smea_ref(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest maximum eigenvalue averaging: the largest eigenvalue of (1/k) sum (x - mu)(x - mu)^T
    is the largest squared singular value of the centred rows over k."""
    import itertools

    x = np.asarray(x, np.float64)
    p = x.shape[0]
    best, best_s = np.inf, None
    for s in itertools.combinations(range(p), p - f):
        xs = x[list(s)]
        d = xs - xs.mean(axis=0)
        lam = np.linalg.svd(d, compute_uv=False)[0] ** 2 / len(s)
        if lam < best:
            best, best_s = lam, s
    return _subset_mean(x, best_s)


def monna_ref(x: np.ndarray, f: int, idx: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    d = np.linalg.norm(x - x[idx], axis=1)
    d[idx] = -1.0
    return _subset_mean(x, np.argsort(d, kind="stable")[: x.shape[0] - f])


def cge_ref(x: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    return _subset_mean(x, np.argsort(np.linalg.norm(x, axis=1), kind="stable")[: x.shape[0] - f])


def krum_byzfl_ref(x: np.ndarray, f: int, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """ByzFL's Krum / MultiKrum: squared distances, each row sorted (itself first), the mean of
    entries 1 .. p - f - 1, the m lowest (stable order)."""
    x = np.asarray(x, np.float64)
    p = x.shape[0]
    d = np.array([[np.sum((a - b) ** 2) for b in x] for a in x])
    sc = np.sort(d, axis=1)[:, 1 : p - f].mean(axis=1)
    return _subset_mean(x, np.argsort(sc, kind="stable")[:m])


def caf_ref(x: np.ndarray, f: int) -> np.ndarray:
    """Covariance-bound agnostic filter in n-space (the weighted covariance's top eigenpair from
    the SVD of the weighted centred rows); the maximum projection is taken over the rows still
    weighted (ratios within 1e-12 of 1 count as 1)."""
    x = np.asarray(x, np.float64)
    p = x.shape[0]
    c = np.ones(p)
    best, best_mu = np.inf, x.mean(axis=0)
    while c.sum() > p - 2 * f:
        mu = (c[:, None] * x).sum(axis=0) / c.sum()
        d = x - mu
        # Sigma = B^T B with B = C^1/2 D / sqrt(sum c): its top eigenpair is B's top singular pair
        _, sv, vt = np.linalg.svd(np.sqrt(c)[:, None] * d / np.sqrt(c.sum()), full_matrices=False)
        lam = sv[0] ** 2
        if lam < best:
            best, best_mu = lam, mu
        if not lam > 0:
            break
        tau = (d @ vt[0]) ** 2
        tmax = tau[c > 0].max()
        if not tmax > 0:
            break
        c = np.where((c > 0) & (tau / tmax < 1 - 1e-12), c * (1 - tau / tmax), 0.0)
    return cast(np.ndarray, best_mu)


def fltrust_ref(x: np.ndarray, g0: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    g0 = np.asarray(g0, np.float64)
    n0 = float(np.linalg.norm(g0))
    out = np.zeros(x.shape[1])
    total = 0.0
    for g in x:
        ng = float(np.linalg.norm(g))
        ts = max(float(g @ g0) / (ng * n0), 0.0) if ng > 0 and n0 > 0 else 0.0
        if ts > 0:
            out += ts * (n0 / ng) * g
            total += ts
    return out / total if total > 0 else out


def dnc_ref(
    x: np.ndarray, f: int, col_sets: list[Any], fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Divide and conquer (NDSS 2021, Algorithm 2) on given coordinate subsets: top right
    singular vector of the centred sub-rows, squared projections, the p - floor(c f) lowest."""
    x = np.asarray(x, np.float64)
    p = x.shape[0]
    good = set(range(p))
    for cols in col_sets:
        xs = x[:, cols]
        d = xs - xs.mean(axis=0)
        v = np.linalg.svd(d, full_matrices=False)[2][0]
        s = (d @ v) ** 2
        good &= set(np.argsort(s, kind="stable")[: p - math.floor(fraction * f)].tolist())
    if not good:
        return np.zeros(x.shape[1]), np.array([], int)
    return _subset_mean(x, good)


def _majority_scipy(dist: np.ndarray) -> np.ndarray:
    """Larger of the two average-linkage clusters (scipy), ties: the cluster of row 0."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    p = dist.shape[0]
    if p == 1:
        return np.ones(1, bool)
    lab = fcluster(
        linkage(squareform(dist, checks=False), method="average"), t=2, criterion="maxclust"
    )
    a = lab == lab[0]
    return cast(np.ndarray, a if a.sum() >= p - a.sum() else ~a)


def clipped_clustering_ref(x: np.ndarray, tau: float | None = None) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    t = np.median(norms) if tau is None else tau
    cos = (x @ x.T) / np.outer(norms, norms)
    sel = _majority_scipy(1 - np.clip(cos, -1, 1))
    clipped = x * np.minimum(1.0, t / norms)[:, None]
    return cast(np.ndarray, clipped[sel].sum(axis=0) / sel.sum())


def signguard_ref(
    x: np.ndarray, cols: np.ndarray, lower: float = 0.1, upper: float = 3.0
) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    m = np.median(norms)
    s1 = (norms / m >= lower) & (norms / m <= upper)
    xs = x[:, cols]
    feats = np.stack([(xs > 0).mean(axis=1), (xs == 0).mean(axis=1), (xs < 0).mean(axis=1)], axis=1)
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=2)
    sel = s1 & _majority_scipy(dist)
    if not sel.any():
        return np.zeros(x.shape[1])
    clipped = x * np.minimum(1.0, m / norms)[:, None]
    return cast(np.ndarray, clipped[sel].sum(axis=0) / sel.sum())


def clipping_ref(x: np.ndarray, c: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    return x * np.where(norms > c, c / np.where(norms > 0, norms, 1), 1.0)[:, None]


def arc_ref(x: np.ndarray, f: int) -> np.ndarray:
    """Adaptive robust clipping: the k = floor(2 f (p - f) / p) largest rows clipped to the
    norm of the largest of the others."""
    x = np.asarray(x, np.float64)
    p = x.shape[0]
    k = (2 * f * (p - f)) // p
    if k == 0:
        return x.copy()
    norms = np.linalg.norm(x, axis=1)
    order = np.argsort(norms, kind="stable")
    thr = norms[order[p - k - 1]]
    out = x.copy()
    for i in order[p - k :]:
        if norms[i] > thr:
            out[i] *= thr / norms[i]
    return out
