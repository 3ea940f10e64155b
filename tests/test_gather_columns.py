"""core.gather_columns, DnC's and SignGuard's sampled coordinates in float64: equal to numpy's
x[:, :, cols].astype(float64) for float32 and float64, (b, p, n) arrays and lists of rows,
sorted, unsorted and repeated indices, more columns than one task holds, any thread count; NaN
and Inf kept; indices outside [0, n) and a cols of the wrong shape refused. Also the two other
pieces of those rules' sampling: the sorted draw and SignGuard's sign counts."""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from flagcore import _core
from flagcore.rules import selection as _sel
from flagcore.rules.clustering import sign_features


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["sorted", "unsorted", "repeated"])
def test_equals_numpy_fancy_index(dtype, order):
    rng = np.random.default_rng(5)
    n = 50_000
    x = rng.standard_normal((2, 7, n)).astype(dtype)
    x[1, 3, 17] = np.nan
    x[0, 6, 99] = -np.inf
    cols = rng.choice(n, size=40_000, replace=order == "repeated")  # 3 tasks per row
    cols[:2] = (17, 99)
    if order == "sorted":
        cols = np.sort(cols)
    got = _core.gather_columns(x, cols)
    assert got.dtype == np.float64 and got.shape == (2, 7, cols.size)
    np.testing.assert_array_equal(got, x[:, :, cols].astype(np.float64))


def test_a_list_of_rows_and_thread_counts():
    rng = np.random.default_rng(6)
    rows = [rng.standard_normal(20_001).astype(np.float32) for _ in range(5)]
    cols = np.sort(rng.choice(20_001, size=17_000, replace=False))
    want = np.stack(rows)[None][:, :, cols].astype(np.float64)
    try:
        for threads in (1, 2, 3):
            flagcore.set_num_threads(threads)
            np.testing.assert_array_equal(_core.gather_columns(rows, cols), want)
    finally:
        flagcore.set_num_threads(0)


def test_no_column():
    x = np.ones((1, 3, 10), np.float32)
    assert _core.gather_columns(x, np.zeros(0, np.int64)).shape == (1, 3, 0)


@pytest.mark.parametrize("bad", [-1, 10])
def test_an_index_outside_the_rows_is_refused(bad):
    x = np.ones((1, 3, 10), np.float32)
    with pytest.raises(
        ValueError, match=rf"gather_columns: cols must lie in \[0, 10\), got {bad} at position 1"
    ):
        _core.gather_columns(x, np.array([0, bad, 2]))


def test_a_two_dimensional_cols_is_refused():
    with pytest.raises(
        ValueError, match="gather_columns: cols must be one-dimensional, got 2 dimensions"
    ):
        _core.gather_columns(np.ones((1, 3, 10)), np.zeros((2, 2), np.int64))


@pytest.mark.parametrize(("n", "k"), [(1_000, 100), (1_000, 1_000), (100_000, 50), (64, 2)])
def test_sorted_sample_is_the_sorted_choice(n, k):
    """DnC's and SignGuard's coordinates: the mask form (n <= 32 k) and the sort give the same
    array as np.sort(choice(...)) from the same generator state."""
    got = _sel.sorted_sample(np.random.default_rng(9), n, k)
    want = np.sort(np.random.default_rng(9).choice(n, size=k, replace=False))
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_sign_features_of_finite_rows():
    rng = np.random.default_rng(10)
    xs = rng.standard_normal((6, 999))
    xs[:, ::4] = 0.0
    xs[2] = -0.0
    want = np.stack([(xs > 0).sum(1), (xs == 0).sum(1), (xs < 0).sum(1)], axis=1) / 999
    np.testing.assert_array_equal(sign_features(xs), want)
