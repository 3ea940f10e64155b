"""core.two_clusters (SignGuard's and clipped clustering's average-linkage split) against the
greedy O(p^3) numpy form it replaced (kept here as the reference: the whole matrix searched at
every merge, first minimum in row-major order): the same labels on random, clustered and
tie-heavy (small-integer) distances, p up to 300; the contract's small cases; non-finite and
non-square input refused; SignGuard's feature distances bit for bit as numpy's (p, p, 3) sum."""

from __future__ import annotations

import numpy as np
import pytest

from flagcore import _core
from flagcore.rules.clustering import cosine_distances, two_clusters


def greedy_reference(dist: np.ndarray) -> np.ndarray:
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
    return (owner != owner[0]).astype(np.int64)


def _symmetric(a: np.ndarray) -> np.ndarray:
    d = np.triu(a, 1)
    return d + d.T


@pytest.mark.parametrize("p", [3, 4, 7, 20, 64, 300])
@pytest.mark.parametrize("kind", ["random", "clustered", "ties"])
def test_same_labels_as_the_greedy_search(p, kind):
    rng = np.random.default_rng(p)
    if kind == "random":
        d = _symmetric(rng.random((p, p)))
    elif kind == "clustered":
        pts = np.concatenate([rng.normal(0, 1, (p - p // 3, 4)), rng.normal(6, 1, (p // 3, 4))])
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    else:  # many exactly equal distances and equal averages
        d = _symmetric(rng.integers(1, 4, (p, p)).astype(np.float64))
    got = _core.two_clusters(d)
    assert got.dtype == np.int64 and got[0] == 0
    np.testing.assert_array_equal(got, greedy_reference(d))
    np.testing.assert_array_equal(two_clusters(d), got)
    # in place: the same labels, the matrix itself used as the work space
    work = d.copy()
    np.testing.assert_array_equal(_core.two_clusters(work, overwrite=True), got)
    if p > 2:
        assert not np.array_equal(work, d)  # it was overwritten, not copied
    # overwrite on a read-only array works on a copy and leaves it intact
    ro = d.copy()
    ro.setflags(write=False)
    np.testing.assert_array_equal(_core.two_clusters(ro, overwrite=True), got)
    np.testing.assert_array_equal(ro, d)


def test_small_cases():
    assert two_clusters(np.zeros((0, 0))).shape == (0,)
    np.testing.assert_array_equal(two_clusters(np.zeros((1, 1))), [0])
    np.testing.assert_array_equal(two_clusters(np.array([[0.0, 5.0], [5.0, 0.0]])), [0, 1])
    # 0 and 2 are closest; 1 joins them before 3 (average 2.5 < 9)
    d = np.array([[0, 3, 1, 9], [3, 0, 2, 9], [1, 2, 0, 9], [9, 9, 9, 0]], dtype=np.float64)
    np.testing.assert_array_equal(two_clusters(d), [0, 0, 0, 1])


def test_bad_input_is_refused():
    with pytest.raises(
        ValueError, match=r"two_clusters: dist must be a square \(p, p\) matrix, got shape \(3, 4\)"
    ):
        _core.two_clusters(np.zeros((3, 4)))
    d = np.zeros((3, 3))
    d[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"two_clusters: dist must be finite, got nan at \(1, 2\)"):
        _core.two_clusters(d)


def test_feature_distances_equal_numpy_three_term_sum():
    rng = np.random.default_rng(3)
    feats = rng.random((50, 3))
    diff = feats[:, None, :] - feats[None, :, :]
    want = (diff * diff).sum(axis=2)
    got = np.zeros((50, 50))
    for c in range(3):
        dc = feats[:, c, None] - feats[None, :, c]
        got += dc * dc
    np.testing.assert_array_equal(got, want)


def test_cosine_distances_equal_the_plain_numpy_form():
    """clipped clustering's distances, computed in place, bit for bit as the plain expression
    (a zero gradient gets cosine 0, so distance 1)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 30))
    x[7] = 0.0
    x[8] = 3 * x[9]  # cosine 1 up to rounding: clipped
    g = x @ x.T
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    den = norms[:, None] * norms[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        want = 1.0 - np.clip(np.where(den > 0, g / den, 0.0), -1.0, 1.0)
    np.testing.assert_array_equal(cosine_distances(g), want)
