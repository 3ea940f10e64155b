"""Rules that select or weight whole workers, computed in p-space: minimum-diameter averaging
(MDA), smallest maximum eigenvalue averaging (SMEA), MoNNA, comparative gradient elimination
(CGE), the covariance-bound agnostic filter (CAF), FLTrust, divide and conquer (DnC) and Krum's
peer variant (p - f - 1 neighbours).

Every one of them needs only inner products of the workers (the (p, p) Gram matrix, one read of
the data; FLTrust adds the server's reference as row p+1; DnC reads a random subset of the
coordinates) and returns sum_i c_i g_i, one weighted-sum read. Means over a selected set are
formed as a sum, then divided by the count (float64 inputs), so that the mean of [1, 2, 3],
[4, 5, 6], [7, 8, 9] is exactly [4, 5, 6] as in numpy and torch.

Non-finite workers are excluded (their Gram diagonal is NaN/Inf) and the rule runs on the
p - e others with f_eff = max(f - e, 0) (see the rules package docstring). A problem whose
workers are all excluded aggregates to 0.

Combinatorial rules (mda, smea) enumerate the C(p, f) subsets of p - f workers; they refuse,
with a ValueError, a problem with more than ``max_subsets`` subsets instead of running for hours.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any, Callable, cast

import numpy as np

from .._backend import core
from ._source import Source, reference_products

# ---------------------------------------------------------------- shared machinery


def sq_distances(g: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """Squared distances from a Gram matrix, clamped at 0 (the rows ``rows`` of them: all by
    default; each entry is formed alone, so a block of rows holds the same bits)."""
    d = np.diag(g)
    return np.maximum(d[rows, None] + d[None, :] - 2.0 * g[rows], 0.0)


def excluded_rows(src: Source, g: np.ndarray) -> np.ndarray:
    """(b, p') rows the rule leaves out: those pre-aggregation excluded, and any row whose
    squared norm is not finite (a NaN/Inf value, or overflow). g: the (b, p', p') Gram, or the
    (b, p') squared norms alone."""
    diag = g if g.ndim == 2 else np.diagonal(g, axis1=1, axis2=2)
    excl = ~np.isfinite(diag)
    if src.excluded is not None:
        excl = excl | src.excluded
    return cast(np.ndarray, excl)


def pow2_scale(v: float) -> float:
    """The power of two nearest above v (1 for 0, NaN or Inf; 2^1023 for v >= 2^1023, where the
    next one would overflow): dividing by it is exact, so rescaling keeps exact ties exact."""
    if not (v > 0.0 and math.isfinite(v)):
        return 1.0
    return math.ldexp(1.0, min(math.frexp(v)[1], 1023))


def _f64_output(src: Source) -> bool:
    st = src.st
    if not st.on_cpu:
        return True  # torch_weighted_sum returns float64
    return bool(st.data_dtype == np.float64)


def weighted_mean(src: Source, unit: np.ndarray, count: np.ndarray) -> Any:
    """sum_i unit_i y_i / count per problem, (b, n). For float64 outputs the sum is formed first
    and then divided (numpy's rounding); otherwise the float64 accumulation of unit / count is
    rounded once. count 0 gives 0."""
    count = np.asarray(count, dtype=np.float64)
    safe = np.where(count > 0, count, 1.0)
    if _f64_output(src):
        out = src.combine(np.ascontiguousarray(unit, dtype=np.float64))
        if isinstance(out, np.ndarray):
            return out / safe[:, None]
        import torch

        return out / torch.from_numpy(safe).to(out.device)[:, None]
    return src.combine(np.ascontiguousarray(unit / safe[:, None]))


def per_problem(
    src: Source,
    f: int,
    solve: Callable[[np.ndarray, int, int, np.ndarray, float], dict[str, Any]],
    g: np.ndarray | None = None,
) -> dict[str, Any]:
    """Run ``solve(G_survivors / scale, f_eff, q, keep, scale)`` per problem on the Gram of the
    surviving rows (``keep``: their indices among the rows the rule sees), divided by ``scale``,
    a power of two near its largest diagonal entry (``pow2_scale``). A solver that compares
    with a threshold given in the caller's units (a norm) divides it by sqrt(scale). A (b, p')
    ``g`` is the squared norms alone (rules that need nothing else: ``squared_norms``), and the
    solver gets the survivors' squared norms / scale: O(p) memory, not O(p^2).

    solve returns a dict with ``unit`` (per-survivor coefficients before division) and
    ``count`` (the divisor), or ``coef`` (final coefficients); optional ``selected`` (bool),
    ``scores`` (float, with ``score_power``: scores ~ G ** score_power, e.g. 0.5 for norms and
    distances, 1 for squared distances, 0 for cosines), ``objective`` (with
    ``objective_power``, default 1), ``iterations``. Scores and objective are returned in the
    caller's units. Returns the info dict over the rows the rule sees, with the (b, p') ``unit``
    and (b,) ``count`` that ``finish`` combines."""
    g = src.gram() if g is None else g
    b, p = g.shape[0], g.shape[1]
    excl = excluded_rows(src, g)
    unit = np.zeros((b, p))
    count = np.zeros(b)
    selected = np.zeros((b, p), bool)
    scores = np.full((b, p), np.nan)
    objective = np.full(b, np.nan)
    iterations = np.zeros(b, np.int64)
    have: set[str] = set()
    for q in range(b):
        keep = np.flatnonzero(~excl[q])
        if keep.size == 0:
            continue
        f_eff = max(f - (p - keep.size), 0)
        # every rule here is invariant to a common scale of the workers: work on G / max G_ii so
        # that distances and centred Grams of huge (or subnormal) gradients stay finite
        if g.ndim == 2:  # squared norms only
            gs = g[q][keep]
            scale = pow2_scale(float(np.max(gs)))
        else:
            gs = g[q] if keep.size == p else g[q][np.ix_(keep, keep)]  # no copy when all are kept
            scale = pow2_scale(float(np.max(np.diag(gs))))
        r = solve(gs / scale, f_eff, q, keep, scale)
        with np.errstate(over="ignore"):  # back to the caller's units: x ~ G ** power
            if "objective" in r:
                r["objective"] = r["objective"] * scale ** r.get("objective_power", 1.0)
            if "scores" in r:  # every solver that reports scores says their units
                r["scores"] = np.asarray(r["scores"], np.float64) * scale ** r["score_power"]
        if "coef" in r:
            unit[q, keep] = r["coef"]
            count[q] = 1.0
        else:
            unit[q, keep] = r["unit"]
            count[q] = r["count"]
        for key in ("selected", "scores"):
            if key in r:
                have.add(key)
                (selected if key == "selected" else scores)[q, keep] = r[key]
        for key, arr in (("objective", objective), ("iterations", iterations)):
            if key in r:
                have.add(key)
                arr[q] = r[key]
    d = dict(excluded=excl, unit=unit, count=count)
    with np.errstate(invalid="ignore", divide="ignore"):
        d["coefficients"] = np.where(
            count[:, None] > 0, unit / np.where(count > 0, count, 1.0)[:, None], 0.0
        )
    for key, out in (
        ("selected", selected),
        ("scores", scores),
        ("objective", objective),
        ("iterations", iterations),
    ):
        if key in have:
            d[key] = out
    return d


def _excluded_orig(src: Source) -> np.ndarray:
    """The caller's excluded workers (set together with the mixing matrix by build_source)."""
    if src.excluded_orig is None:
        return np.zeros((src.b, src.st.p), bool)
    return src.excluded_orig


def finish(src: Source, d: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    out = weighted_mean(src, d.pop("unit"), d.pop("count"))
    return out, d


def select_mean(sel: np.ndarray) -> dict[str, Any]:
    sel = np.asarray(sel, bool)
    return dict(unit=sel.astype(np.float64), count=int(sel.sum()), selected=sel)


# ---------------------------------------------------------------- subsets: MDA, SMEA


def check_subsets(fn: str, rule: str, p: int, f: int, max_subsets: int) -> None:
    count = math.comb(p, f)
    if count > max_subsets:
        raise ValueError(
            f"{fn}: rule {rule!r} enumerates the C(p, f) = C({p}, {f}) = {count} subsets of "
            f"p - f workers (time ~ C(p, f) (p - f)^{3 if rule == 'smea' else 2}), more than "
            f"max_subsets = {max_subsets}; "
            f"raise max_subsets to run it anyway, or use a polynomial rule (e.g. krum, caf)"
        )


def _subset_chunks(p: int, k: int) -> Iterator[np.ndarray]:
    """The k-subsets of range(p) in lexicographic order, as (m, k) index blocks of at most
    ~2M entries of k x k (about 16 MB of float64 per temporary)."""
    chunk = max(1, min(8192, (1 << 21) // max(k * k, 1)))
    it = itertools.combinations(range(p), k)
    while True:
        block = list(itertools.islice(it, chunk))
        if not block:
            return
        yield np.asarray(block, dtype=np.intp).reshape(len(block), k)


def mda_solve(g: np.ndarray, f: int) -> dict[str, Any]:
    """Minimum-diameter averaging (El Mhamdi, Guerraoui and Rouault 2018 / ByzFL): the mean of
    the p - f workers whose largest pairwise distance is smallest; ties: the first subset in
    lexicographic (itertools.combinations) order, as ByzFL."""
    p = g.shape[0]
    k = p - f
    d2 = sq_distances(g)
    best, best_sub = np.inf, None
    for idx in _subset_chunks(p, k):
        diam = d2[idx[:, :, None], idx[:, None, :]].reshape(idx.shape[0], -1).max(axis=1)
        j = int(np.argmin(diam))
        if diam[j] < best:
            best, best_sub = float(diam[j]), idx[j]
    sel = np.zeros(p, bool)
    sel[best_sub] = True
    return dict(select_mean(sel), objective=math.sqrt(best), objective_power=0.5)


def centred_top_eigenvalues(gs: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of the empirical covariance (1/k) sum (x_i - mu)(x_i - mu)^T of each
    (m, k, k) stack of Gram blocks, from the doubly centred Gram (same nonzero spectrum, times
    k). The centred blocks are exactly symmetric (the Gram blocks are) and their top
    eigenvalue comes from the native eigensolver, one block at a time: numpy's batched
    eigvalsh runs on numpy's BLAS, whose result depends on its thread count from k ~ 300."""
    k = gs.shape[-1]
    rm = gs.mean(axis=-1)
    c = gs - (rm[:, :, None] + rm[:, None, :]) + gs.mean(axis=(-1, -2))[:, None, None]
    top = np.array([core.eigh_top(c[j], 1)[0][0] for j in range(c.shape[0])], np.float64)
    return cast(np.ndarray, top / k)


def smea_solve(g: np.ndarray, f: int) -> dict[str, Any]:
    """Smallest maximum eigenvalue averaging (Allouah et al. 2023): the mean of the p - f
    workers whose empirical covariance has the smallest largest eigenvalue (exact eigenvalues;
    ties: the first subset in lexicographic order)."""
    p = g.shape[0]
    k = p - f
    best, best_sub = np.inf, None
    for idx in _subset_chunks(p, k):
        lam = centred_top_eigenvalues(g[idx[:, :, None], idx[:, None, :]])
        j = int(np.argmin(lam))
        if lam[j] < best:
            best, best_sub = float(lam[j]), idx[j]
    sel = np.zeros(p, bool)
    sel[best_sub] = True
    return dict(select_mean(sel), objective=max(best, 0.0))


# ---------------------------------------------------------------- MoNNA, CGE, Krum (peer)


def monna_solve(g: np.ndarray, f: int, centre: int) -> dict[str, Any]:
    """Mean of the p - f nearest neighbours of worker ``centre`` (itself included; ties to the
    lower index). Scores: the distances to worker ``centre`` (0 for itself)."""
    p = g.shape[0]
    d = np.maximum(g[centre, centre] + np.diag(g) - 2.0 * g[centre], 0.0)
    d[centre] = -1.0  # itself first even when a duplicate has a lower index
    sel = np.zeros(p, bool)
    sel[np.argsort(d, kind="stable")[: p - f]] = True
    d[centre] = 0.0
    return dict(select_mean(sel), scores=np.sqrt(d), score_power=0.5)


def cge_solve(sq: np.ndarray, f: int) -> dict[str, Any]:
    """Comparative gradient elimination (Gupta and Vaidya 2020) on the (p,) squared norms: drop
    the f largest norms, average the p - f others (ties: the lower index is kept)."""
    p = sq.shape[0]
    norms = np.sqrt(np.maximum(sq, 0.0))
    sel = np.zeros(p, bool)
    sel[np.argsort(norms, kind="stable")[: p - f]] = True
    return dict(select_mean(sel), scores=norms, score_power=0.5)


def krum_peer_solve(g: np.ndarray, f: int, m: int) -> dict[str, Any]:
    """Krum as ByzFL and ByzPy compute it: the score of worker i sums its squared distances
    to its p - f - 1 nearest others (the textbook takes p - f - 2); the m lowest scores are
    averaged (ties: the lower index)."""
    p = g.shape[0]
    nb = max(p - f - 1, 0)
    scores = np.empty(p)
    # in blocks of rows, about p / 64 of them (~0.05 p x p matrices in all, not the 3-4 of the
    # whole distance matrix and its sorted copy; the same bits: each row is formed and summed
    # alone either way)
    step = max(1, min(p, max(-(-p // 64), (1 << 16) // max(p, 1))))
    for i0 in range(0, p, step):
        i1 = min(p, i0 + step)
        d2 = sq_distances(g, slice(i0, i1))
        d2[np.arange(i1 - i0), np.arange(i0, i1)] = np.inf
        scores[i0:i1] = np.sort(d2, axis=1)[:, :nb].sum(axis=1)
    sel = np.zeros(p, bool)
    sel[np.argsort(scores, kind="stable")[: min(m, p)]] = True
    return dict(select_mean(sel), scores=scores, score_power=1.0)


# ---------------------------------------------------------------- top eigenpair


def _matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """a @ v for a symmetric (p, p) float64 matrix (a Gram, a centred Gram): the native
    symmetric product (core.symv: one triangle read, an order fixed by p, the same for every
    thread count), never numpy's BLAS."""
    return cast(np.ndarray, core.symv(np.ascontiguousarray(a), np.ascontiguousarray(v)))


# From this size the top eigenpair of a p x p matrix comes from a Lanczos iteration (a p x p
# eigensolve costs ~600-770 of its matrix-vector products there: docs/scaling_rules.md)
LANCZOS_MIN_P = 1000
_LANCZOS_TOL = 1e-13  # Ritz residual |beta_k s_k| relative to the Ritz value
_LANCZOS_CHECK_TOL = 1e-10  # bound on ||A u - theta u|| / max(|theta|, the norm estimate)
_LANCZOS_SEED = 0x5EED  # the fixed start direction (numpy's PCG64: the same on every machine)
_LANCZOS_RANGE = 2.0**300  # first products outside [1 / this, this] rescale the operator
_LANCZOS_NEAR_INVARIANT = 1e-8  # a block converged with beta_k below this of the norm estimate
_LANCZOS_HIDDEN = 1e-6  # the restart's ||A r|| below this * top / sqrt(p): nothing above the top


def _fixed_dot(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum())  # numpy's pairwise sum: a fixed order, one thread


def _orthogonalise(vk: np.ndarray, w: np.ndarray) -> np.ndarray:
    """w minus its components along the rows of vk ((1, k, p)), in place, by classical
    Gram-Schmidt twice (native products in fixed orders); returns the summed coefficients."""
    h = core.reference_products(vk, w[None])[0][0]
    w -= core.weighted_sum(vk, h[None])[0]
    h2 = core.reference_products(vk, w[None])[0][0]
    w -= core.weighted_sum(vk, h2[None])[0]
    return cast(np.ndarray, h + h2)


def lanczos_top(
    matvec: Callable[[np.ndarray], np.ndarray], p: int, max_iter: int | None = None
) -> tuple[float, np.ndarray] | None:
    """Top (algebraically largest) eigenpair of a symmetric p x p float64 operator (``matvec``:
    v -> A v, in a fixed order) by Lanczos with full reorthogonalisation (twice, classical
    Gram-Schmidt), or None when it does not converge in ``max_iter`` steps (default
    min(p, max(64, min(p // 8, 300)))) or meets a non-finite value.

    Start: a fixed random direction (seeded: the same on every machine with the same numpy),
    never a warm start: a start close to an eigenvector that is no longer the top one (CAF's
    previous step) would leave the top pair a tiny component, and Lanczos could converge to the
    second first; on CAF's steps a warm start saved nothing (within 12 %:
    docs/scaling_rules.md). Converged when the Ritz residual is at most 1e-13 of the Ritz value
    (checked every 4 steps of a block up to 64, then every 8); the true residual
    ||A u - theta u|| must then be at most 1e-10 of max(|theta|, the norm estimate), else None.

    When the Krylov space of the start becomes invariant (or nearly: converged with beta_k at
    most 1e-8 of the norm estimate) before it spans the space (an operator of low rank, or a
    start orthogonal to some eigenvectors), its pairs are exact but the top one may lie outside
    it: the iteration restarts once from a second seeded direction r orthogonal to that space
    and returns the larger of the two blocks' top pairs, or the first block's at once when
    ||A r|| <= 1e-6 theta / sqrt(p) for its top Ritz value theta > 0 (an eigenvalue above theta
    outside the first block would need |<v, r>| < 1e-6 / sqrt(p): probability ~1e-6).
    An operator whose first nonzero product lies outside [2^-300, 2^300] in magnitude runs as
    A / c (c a power of two, so every value is exactly scaled), so squares neither underflow
    nor overflow (a centred Gram of entries ~1e-196 took its start's Rayleigh quotient for an
    invariant space).

    The basis products are native (core.reference_products for V w, core.weighted_sum for
    V^T h: fixed orders, the same bits for every thread count) and the small tridiagonal
    problem goes to core.eigh_top: no numpy BLAS, whose result depends on numpy's thread count."""
    m = min(p, max_iter if max_iter is not None else max(64, min(p // 8, 300)))
    rng = np.random.default_rng(_LANCZOS_SEED)
    r = rng.standard_normal(p)
    r /= math.sqrt(_fixed_dot(r, r))
    basis = np.empty((m + 1, p))
    basis[0] = r
    alpha, beta = np.zeros(m), np.zeros(m)
    scale = 0.0
    c, c_known = 1.0, False  # the operator runs as A / c, c set by the first nonzero product
    k0 = 0  # the current block's first basis vector
    first: tuple[float, np.ndarray] | None = None  # the first block's top pair, after a restart
    for k in range(m):
        w = np.array(matvec(basis[k]), dtype=np.float64)  # a fresh array: updated in place
        if not c_known:
            big = float(np.max(np.abs(w)))
            if not math.isfinite(big):
                return None
            if big > 0.0:
                c_known = True
                if not _LANCZOS_RANGE**-1 <= big <= _LANCZOS_RANGE:
                    c = pow2_scale(big)
        if c != 1.0:
            w /= c
        if (
            first is not None
            and k == k0
            and first[0] > 0.0
            and math.sqrt(_fixed_dot(w, w)) <= _LANCZOS_HIDDEN * first[0] / math.sqrt(p)
        ):
            # ||A r|| >= lam |<v, r>| for an eigenpair (lam, v) outside the first block, and a
            # random unit r has |<v, r>| below 1e-6 / sqrt(p) with probability ~1e-6: none
            # above the first block's top (a low-rank operator plus rounding noise lands here)
            return first[0] * c, first[1]
        vk = basis[None, : k + 1]  # both blocks after a restart
        # the three-term recurrence and the reorthogonalisation in one
        alpha[k] += _orthogonalise(vk, w)[k]  # 0 + (h1 + h2): the bits of (0 + h1) + h2
        b = math.sqrt(_fixed_dot(w, w))
        if not (math.isfinite(b) and math.isfinite(alpha[k])):
            return None
        beta[k] = b
        scale = max(scale, abs(alpha[k]) + b)
        invariant = b <= 1e-15 * scale  # the Krylov space is invariant: its pairs are exact
        j = k + 1 - k0  # steps of this block
        if invariant or j % (4 if j <= 64 else 8) == 0 or k + 1 == m:
            a_b, b_b = alpha[k0 : k + 1], beta[k0:k]
            t = np.diag(a_b) + np.diag(b_b, 1) + np.diag(b_b, -1)
            theta_a, s_a = core.eigh_top(t, 1)
            theta, s = float(theta_a[0]), np.asarray(s_a[:, 0])
            if invariant or b * abs(s[-1]) <= _LANCZOS_TOL * abs(theta):
                u = core.weighted_sum(basis[None, k0 : k + 1], s[None])[0]
                u /= math.sqrt(_fixed_dot(u, u))
                res = np.asarray(matvec(u), dtype=np.float64) / c - theta * u
                bound = _LANCZOS_CHECK_TOL * max(abs(theta), scale)
                if not math.sqrt(_fixed_dot(res, res)) <= bound:
                    return None
                if b <= _LANCZOS_NEAR_INVARIANT * scale and first is None and k + 1 < p:
                    if k + 1 >= m:
                        return None  # no room to look outside the invariant space
                    first = (theta, u)
                    r = rng.standard_normal(p)  # the restart: orthogonal to the first block
                    _orthogonalise(vk, r)
                    nr = math.sqrt(_fixed_dot(r, r))
                    if not nr > 0.0:
                        return theta * c, u
                    basis[k + 1] = r / nr
                    k0 = k + 1
                    continue
                if first is not None and first[0] >= theta:
                    theta, u = first
                return theta * c, u
        basis[k + 1] = w / b
    return None


def top_eigenpair_of(
    p: int, matvec: Callable[[np.ndarray], np.ndarray], dense: Callable[[], np.ndarray]
) -> tuple[float, np.ndarray]:
    """(lam, u): the top eigenpair of a symmetric p x p float64 operator; from p = LANCZOS_MIN_P
    by lanczos_top on ``matvec``, below it or when that does not converge by the native
    eigensolver (core.eigh_top) on the matrix ``dense()`` (built only then). Either way the
    result does not depend on the thread count."""
    if p >= LANCZOS_MIN_P:
        got = lanczos_top(matvec, p)
        if got is not None:
            return got
    lam, u = core.eigh_top(dense(), 1)
    return float(lam[0]), np.asarray(u[:, 0])


def top_eigenpair(a: np.ndarray) -> tuple[float, np.ndarray]:
    """top_eigenpair_of a symmetric (p, p) float64 matrix."""
    return top_eigenpair_of(a.shape[0], lambda v: _matvec(a, v), lambda: a)


# ---------------------------------------------------------------- CAF


def _scaled(
    k: np.ndarray, sq: np.ndarray, s: float
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], np.ndarray]]:
    """K_c = C^1/2 K C^1/2 / s (sq = diag C^1/2) for top_eigenpair_of: its products without
    forming it, and the matrix itself (for the native eigensolver only)."""
    return (
        lambda v: cast(np.ndarray, sq * _matvec(k, sq * v) / s),
        lambda: cast(np.ndarray, k * (sq[:, None] * sq[None, :]) / s),
    )


def caf_solve(g: np.ndarray, f: int) -> dict[str, Any]:
    """Covariance-bound agnostic filter (Allouah, Guerraoui and Stephan 2025), in p-space.

    Weights c = 1; while sum c > p - 2f: mu = sum c_i x_i / sum c, Sigma = sum c_i (x_i - mu)
    (x_i - mu)^T / sum c, (lam, v) its top eigenpair (from the p x p matrix
    C^1/2 D D^T C^1/2 / sum c with D the centred rows: top_eigenpair, converged to ~1e-13),
    tau_i = ((x_i - mu) . v)^2 and c_i <- c_i (1 - tau_i / max_{c_j > 0} tau_j) (0 for a
    ratio within 1e-12 of 1). Returns the mu with the smallest lam seen.
    Each step zeroes at least one weight, so it stops after at most 2f + 1 steps.

    No numpy BLAS/LAPACK (their result depends on numpy's BLAS thread count, and replicas must
    agree): the centred Gram is O(p^2) elementwise work, its products with vectors native
    symmetric products in a fixed order, and the top eigenpair comes from top_eigenpair_of (the
    native eigensolver below p = LANCZOS_MIN_P, Lanczos from there; bitwise the same for every
    thread count)."""
    p = g.shape[0]
    c = np.ones(p)
    best_lam, best_c, best_s = np.inf, np.ones(p), float(p)
    steps = 0
    while c.sum() > p - 2 * f:
        steps += 1
        s = c.sum()
        w = c / s
        # D D^T = (I - 1 w^T) G (I - w 1^T): K_ij = G_ij - (Gw)_i - (Gw)_j + w^T G w, written so
        # that K is exactly symmetric (G is)
        gw = _matvec(g, w)
        k = np.add(gw[:, None], gw[None, :])  # K = G - (gw_i + gw_j) + w'Gw, one p x p array
        np.subtract(g, k, out=k)
        k += float((w * gw).sum())
        sq = np.sqrt(c)
        lam, u = top_eigenpair_of(p, *_scaled(k, sq, s))
        if lam < best_lam:
            best_lam, best_c, best_s = lam, c, s
        if not lam > 0.0:
            break
        proj = _matvec(k, sq * u) / math.sqrt(s * lam)
        tau = proj * proj
        tmax = tau[c > 0].max()
        if not tmax > 0.0:
            break
        ratio = tau / tmax
        # projections within 1e-12 of the maximum count as maximal: equal projections (symmetric
        # workers) zero together whatever the rounding of the p-space products
        c = np.where((c > 0) & (ratio < 1.0 - 1e-12), c * (1.0 - ratio), 0.0)
    # mu = sum c_i x_i / sum c: summed, then divided (numpy's rounding for float64)
    return dict(unit=best_c, count=best_s, objective=max(best_lam, 0.0), iterations=steps)


# ---------------------------------------------------------------- FLTrust


def fltrust_solve(sq: np.ndarray, cross: np.ndarray, r2: float) -> dict[str, Any]:
    """FLTrust (Cao, Fang, Liu and Gong, NDSS 2021) from the workers' squared norms ``sq``, their
    products with the server's reference g_0 (``cross``) and ||g_0||^2 (``r2``): trust
    TS_i = ReLU(cos(g_i, g_0)), each g_i rescaled to ||g_0||, aggregate = sum_i TS_i ||g_0|| /
    ||g_i|| g_i / sum_i TS_i (0 when every trust score is 0; a zero gradient gets trust 0).
    O(p): the three are the only entries of the Gram with the reference that it reads."""
    p = sq.shape[0]
    s = pow2_scale(float(np.max(np.append(sq, r2))))  # scale-free: no overflow
    n0 = math.sqrt(max(r2 / s, 0.0))
    norms = np.sqrt(np.maximum(sq / s, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((norms > 0) & (n0 > 0), (cross / s) / (norms * n0), 0.0)
    ts = np.maximum(cos, 0.0)
    total = ts.sum()
    if not total > 0:
        return dict(coef=np.zeros(p), scores=ts, score_power=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = np.where(ts > 0, ts * n0 / norms, 0.0) / total
    return dict(coef=coef, scores=ts, score_power=0.0)


def _caller_row_squares(st: Any) -> np.ndarray:
    """(b, p) float64 squared norms of the caller's rows, one read: core.row_squares on the CPU,
    one float64 reduction per problem for a device tensor."""
    if st.on_cpu:
        return np.asarray(core.row_squares(st.data), dtype=np.float64)
    import torch

    x = st.torch_data
    sq = torch.stack([(x[q].to(torch.float64) ** 2).sum(dim=1) for q in range(st.b)])
    return np.asarray(sq.cpu().numpy(), dtype=np.float64)


def squared_norms(src: Source) -> np.ndarray:
    """(b, p') squared norms of the rows the rule sees, for rules that need only the norms (one
    O(p n) read, O(p) memory; per_problem takes them in place of a Gram). With pre-aggregation
    they are the mixed Gram's diagonal (that Gram is already known)."""
    if src.mix is not None:
        return np.ascontiguousarray(np.diagonal(src.gram(), axis1=1, axis2=2))
    return _caller_row_squares(src.st)


def reference_stats(src: Source, ref: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(b, p') squared norms of the rows the rule sees, (b, p') their products with the
    reference and (b,) ||ref||^2, from one O(p n) read: O(p) memory. With pre-aggregation the
    norms are the mixed Gram's diagonal (that Gram is already known) and the products are mixed
    with the same matrix. ``ref`` is a (b, n) float64 array / tensor."""
    # the caller's squares in the same pass when they are the rows the rule sees
    cross, r2, diag = reference_products(src.st, ref, diag=src.mix is None)
    if src.mix is not None:
        cross = np.where(_excluded_orig(src), 0.0, cross)
        cross = np.einsum("qij,qj->qi", src.mix, cross)
        diag = squared_norms(src)
    return np.asarray(diag, dtype=np.float64), np.asarray(cross), np.asarray(r2)


# ---------------------------------------------------------------- DnC


def columns(src: Source, cols: np.ndarray) -> np.ndarray:
    """(b, p', len(cols)) float64 values of the rows the rule sees at the given coordinates
    (non-finite rows are read as they are; callers leave excluded rows out)."""
    st = src.st
    if st.on_cpu:
        # one native pass on flagcore's threads (numpy's fancy index and float64 cast: two
        # passes on one thread, 2-3.5x the time on two threads)
        x = core.gather_columns(st.data, np.asarray(cols, dtype=np.int64))
    else:
        import torch

        t = st.torch_data.index_select(2, torch.from_numpy(cols).to(st.torch_data.device))
        x = t.to(torch.float64).cpu().numpy()
    if src.mix is None:
        return x
    x = np.where(_excluded_orig(src)[:, :, None], 0.0, x)
    return cast(np.ndarray, np.einsum("qjp,qpc->qjc", src.mix, x))


def sorted_sample(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """np.sort(rng.choice(n, size=k, replace=False)), the same draw and the same array: where
    n <= 32 k through a mask of the n coordinates (the indices are distinct), O(n) instead of
    numpy's sort (at k = 1e5 of n = 1e6: 1.5 instead of 3.9 ms here)."""
    cols = rng.choice(n, size=k, replace=False)
    if n > 32 * k:
        return np.sort(cols)
    mask = np.zeros(n, bool)
    mask[cols] = True
    return np.flatnonzero(mask)


def kept_rows(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """a[keep] along the first axis, a itself (no copy) when keep is every row in order."""
    if keep.size == a.shape[0] and (keep.size == 0 or keep[-1] == keep.size - 1):
        return a  # keep is sorted and distinct (flatnonzero): 0 .. size - 1
    return cast(np.ndarray, a[keep])


def _pow2_above_max_abs(a: np.ndarray) -> float:
    """pow2_scale of max |a| (without a temporary array)."""
    return pow2_scale(max(float(np.max(a)), -float(np.min(a))))


def dnc_scores(xs: np.ndarray) -> np.ndarray:
    """Outlier scores s_i = ((x_i - mu) . v)^2 with v the top right singular vector of the
    (p, m) centred rows D, in the smaller of the two spaces: for m >= p, s = lam u^2 for the top
    eigenpair (lam, u) of the p x p matrix D D^T; for m < p, v is the top eigenvector of the
    m x m matrix D^T D and s = (D v)^2 (the same numbers: D v = sqrt(lam) u), O(p m^2 + m^3)
    instead of O(p^2 m + p^3). D is the rows divided by the power of two above their largest
    |x|, centred, and divided again by the power of two above its own largest |entry| when
    centring left that below 1/2 (exact scalings). The matrices are native Grams, the
    eigenpair top_eigenpair's (Lanczos from LANCZOS_MIN_P, the native eigensolver below) and
    D v native row products: no numpy BLAS/LAPACK, whose result depends on numpy's thread
    count."""
    p, m = xs.shape
    if m == 0:  # no coordinate: every centred row is empty
        return np.zeros(p)
    top = _pow2_above_max_abs(xs)
    d = np.ascontiguousarray(xs / top)  # scale-free selection: no overflow for huge gradients
    d -= d.mean(axis=0, keepdims=True)  # centred in place: one fresh array, not three
    # and free of a common offset: rows sharing a coordinate ~1e90 times their spread left
    # entries ~1e-98, a Gram ~1e-196, whose squares underflow in the eigensolvers (review,
    # 2026-12-05); powers of two, so every value is exactly scaled
    spread = _pow2_above_max_abs(d)
    if spread < 1.0:
        d /= spread
        top *= spread
    if m < p:
        _, v = top_eigenpair(core.gram(np.ascontiguousarray(d.T)[None])[0])
        dv = core.reference_products(d[None], v[None])[0][0]
        with np.errstate(over="ignore"):
            return cast(np.ndarray, dv * dv * top * top)
    lam, u = top_eigenpair(core.gram(d[None])[0])
    with np.errstate(over="ignore"):
        return cast(np.ndarray, max(lam, 0.0) * top * top * u**2)


def dnc_keep(p: int, f: int, fraction: float) -> int:
    return p - math.floor(fraction * f)


def nonfinite_rows(src: Source) -> np.ndarray:
    """(b, p') rows to leave out without forming the Gram: the rows pre-aggregation excluded,
    or the caller's rows whose float64 squared norm is not finite (a NaN/Inf value or overflow:
    the same rows as a Gram diagonal flags), one read (core.row_squares on the CPU)."""
    if src.mix is not None:
        return np.array(src.excluded, dtype=bool)  # set with mix by build_source
    return cast(np.ndarray, ~np.isfinite(_caller_row_squares(src.st)))
