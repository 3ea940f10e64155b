"""flagcore's private OpenBLAS (scipy-openblas32) runs on one thread whatever threadpoolctl does:
its threaded kernels sum in an order that depends on their thread count, and replicas must agree.
threadpoolctl finds that library too; before the fix a `threadpool_limits(2)` (or leaving a
`threadpool_limits` block entered before flagcore's first call, which restores the count it saw)
raised its count for the rest of the process, and CAF, DnC, the geometric median, core.symv and
core.eigh_top changed their bits (review, 2026-12-05)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref
from flagcore._backend import core

threadpoolctl = pytest.importorskip("threadpoolctl")


def _flagcore_blas_threads() -> list[int]:
    return [
        int(i["num_threads"])
        for i in threadpoolctl.threadpool_info()
        if "scipy_openblas32" in str(i.get("filepath", ""))
    ]


def _digest() -> str:
    rng = np.random.default_rng(11)
    a = rng.standard_normal((1000, 1000))
    a = (a + a.T) / 2
    b = rng.standard_normal((700, 700))
    b = b @ b.T
    lam, u = core.eigh_top(b, 3)
    x = ref.make_gradients(1000, 12, byzantine=100, seed=5, dtype=np.float64)
    h = hashlib.sha256()
    for arr in (
        core.symv(a, rng.standard_normal(1000)),  # dsymv on fixed blocks
        lam,
        np.abs(u),
        flagcore.aggregate(x, "caf", f=100),  # Lanczos on symv, the eigensolver's dsytrd
        flagcore.aggregate(x, "geometric_median"),
    ):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def test_results_do_not_depend_on_threadpoolctl_limits() -> None:
    if not _flagcore_blas_threads():
        pytest.skip("threadpoolctl does not see flagcore's OpenBLAS here")
    base = _digest()
    assert _flagcore_blas_threads() == [1]  # every BLAS entry sets one thread
    with threadpoolctl.threadpool_limits(limits=2):
        assert _flagcore_blas_threads() == [2]  # raised: the case that changed bits
        assert _digest() == base
        assert _flagcore_blas_threads() == [1]
    # leaving the block restores the count threadpoolctl saw on entry (1 here); the next call
    # must still run single-threaded even when something else raised it meanwhile
    limiter = threadpoolctl.threadpool_limits(limits=2)
    try:
        assert _flagcore_blas_threads() == [2]
        assert _digest() == base
    finally:
        limiter.restore_original_limits()
