"""predict_step_time: the parameter server's step time with backup workers from flagcore.energy's
(n, k) fork-join model, against the k-th order statistic computed directly and exact theory."""

from __future__ import annotations

import numpy as np
import pytest

from flagcore.distributed.quorum import lognormal_times, predict_step_time


def test_equals_kth_order_statistic_of_the_same_samples() -> None:
    times = [
        lognormal_times(0.02, 0.5),
        lognormal_times(0.02, 0.5),
        lognormal_times(0.02, 0.5, shift=0.06),
    ]
    res = predict_step_time(times, 2, steps=5000, overhead=0.001, seed=4)
    rng = np.random.default_rng(4)  # the same draws, in the same order
    s = np.stack([t(rng, 5000) for t in times], axis=1)
    np.testing.assert_allclose(res["samples"], np.sort(s, axis=1)[:, 1] + 0.001, rtol=0, atol=1e-9)
    assert res["n"] == 3 and res["k"] == 2
    assert res["p50"] <= res["p90"] <= res["p99"]


def test_exponential_workers_match_theory() -> None:
    # k-th of n i.i.d. Exp(1): mean = sum_{j=n-k+1}^{n} 1/j
    res = predict_step_time([lambda rng, m: rng.exponential(1.0, m)] * 5, 3, steps=50_000, seed=1)
    want = sum(1.0 / j for j in range(3, 6))
    assert res["mean"] == pytest.approx(want, rel=0.01)


def test_deterministic_and_empirical_inputs() -> None:
    assert predict_step_time([0.1, 0.3, 0.2], None, steps=10)["p50"] == pytest.approx(0.3)
    assert predict_step_time([0.1, 0.3, 0.2], 1, steps=10)["mean"] == pytest.approx(0.1)
    res = predict_step_time([np.array([1.0, 2.0]), 5.0], 1, steps=1000)
    assert set(np.unique(res["samples"])) == {1.0, 2.0}


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"predict_step_time: quorum must be in \[1, 2\], got 3"):
        predict_step_time([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="worker_times must be a non-empty sequence"):
        predict_step_time([], 1)
    with pytest.raises(ValueError, match=r"worker_times\[1\] must give finite times >= 0"):
        predict_step_time([1.0, -1.0], 1)
    with pytest.raises(
        ValueError, match=r"worker_times\[0\] \(a callable\) returned 3 samples, expected 10"
    ):
        predict_step_time([lambda rng, m: np.ones(3)], 1, steps=10)
    with pytest.raises(ValueError, match=r"predict_step_time: overhead must be >= 0.0, got -1.0"):
        predict_step_time([1.0], 1, overhead=-1.0)
