"""Plain float64 NumPy references of the textbook robust rules, for tests and benchmarks only.

Each takes one (p, n) stack of finite gradients (exclusion of non-finite workers is the
caller's business) and follows the published definition directly: distances from explicit
differences, per-coordinate sorts, Weiszfeld on the full data. Also the input factory that
the tests and the benchmark share.
"""
from __future__ import annotations

import math

import numpy as np


def make_gradients(p: int, n: int, *, seed: int = 0, byzantine: int = 0, dtype=np.float32,
                   spread: float = 1.0) -> np.ndarray:
    """(p, n) test gradients: honest rows = a common direction + noise; the last ``byzantine``
    rows are far off (uniform [0, 1) scaled by 10, like the FA paper's random attack)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(n)
    x = base + spread * rng.standard_normal((p, n))
    if byzantine:
        x[p - byzantine:] = 10.0 * rng.random((byzantine, n))
    return x.astype(dtype)


def mean_ref(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).mean(axis=0)


def median_ref(x: np.ndarray) -> np.ndarray:
    return np.median(np.asarray(x, np.float64), axis=0)


def trimmed_mean_ref(x: np.ndarray, f: int) -> np.ndarray:
    s = np.sort(np.asarray(x, np.float64), axis=0)
    return s[f:s.shape[0] - f].mean(axis=0)


def _closest_mean(x: np.ndarray, centre: np.ndarray, k: int) -> np.ndarray:
    s = np.sort(np.asarray(x, np.float64), axis=0)
    d = np.abs(s - centre[None])
    order = np.argsort(d, axis=0, kind="stable")[:k]  # ties: the smaller value first
    return np.take_along_axis(s, order, axis=0).mean(axis=0)


def meamed_ref(x: np.ndarray, f: int) -> np.ndarray:
    return _closest_mean(x, median_ref(x), x.shape[0] - f)


def phocas_ref(x: np.ndarray, f: int) -> np.ndarray:
    return _closest_mean(x, trimmed_mean_ref(x, f), x.shape[0] - f)


def sq_dist_ref(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.array([[np.sum((a - b) ** 2) for b in x] for a in x])


def krum_scores_ref(x: np.ndarray, f: int, idx: list | None = None) -> np.ndarray:
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


def geometric_median_ref(x: np.ndarray, *, iters: int = 20000, tol: float = 1e-15) -> tuple[np.ndarray, float]:
    """Weiszfeld on the full data from the mean, to (near) machine precision."""
    x = np.asarray(x, np.float64)
    z = x.mean(axis=0)
    obj = lambda v: float(np.linalg.norm(x - v, axis=1).sum())  # noqa: E731
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
    return z


def centered_clipping_ref(x: np.ndarray, tau: float, iterations: int, v0: np.ndarray | None = None) -> np.ndarray:
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
        nb = np.argsort(key, kind="stable")[:p - f]
        out[i] = x[nb].mean(axis=0)
    return out


def bucketing_ref(x: np.ndarray, s: int, perm: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    nb = math.ceil(x.shape[0] / s)
    return np.stack([x[perm[j * s:(j + 1) * s]].mean(axis=0) for j in range(nb)])
