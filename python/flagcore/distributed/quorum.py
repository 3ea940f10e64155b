"""Predicting a parameter server's step time with backup workers (``ParameterServer(quorum=k)``).

One synchronous step forks a task (compute a gradient, send it) to n workers and completes when
the k-th gradient has arrived; the rest is dropped. That is an (n, k) fork-join with
cancellation, the model ``flagcore.energy`` simulates: ``predict_step_time`` feeds per-worker
step-time samples to ``flagcore.energy.simulate_trace`` (each step arriving at an empty system,
as in a synchronous loop) and returns the distribution of the step time.

The model assumes a worker starts every step when the step begins. A worker that was late in
the previous step starts later in a real run (it first finishes and sends its stale gradient),
so the prediction is exact when the late workers are always the same (deliberately slowed
ranks, say) and optimistic when the order of the workers changes from step to step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .._arrays import check_float, check_int

__all__ = ["predict_step_time"]


def _real_array(x: Any, fn: str, what: str) -> np.ndarray:
    """``x`` as a 1-D float64 array of real numbers: strings, booleans, objects and nested
    (2-D or deeper) data are refused, never converted or flattened."""
    a = np.asarray(x)
    if a.dtype.kind not in "iuf":
        raise TypeError(
            f"{fn}: {what} must hold real numbers (seconds), got dtype {a.dtype} from "
            f"{type(x).__name__}"
        )
    if a.ndim != 1:
        raise ValueError(f"{fn}: {what} must be 1-D, got shape {a.shape}")
    return a.astype(np.float64)


def _samples(spec: Any, steps: int, rng: np.random.Generator, i: int) -> np.ndarray:
    fn = "predict_step_time"
    what = f"worker_times[{i}]"
    if callable(spec):
        s = _real_array(spec(rng, steps), fn, f"{what} (a callable)'s result")
        if s.size != steps:
            raise ValueError(
                f"{fn}: {what} (a callable) returned {s.size} samples, expected {steps}"
            )
    elif isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(
        spec, (bool, np.bool_)
    ):
        s = np.full(steps, float(spec))
    elif isinstance(spec, (str, bytes, dict)) or not hasattr(spec, "__len__"):
        raise TypeError(
            f"{fn}: {what} must be a number, a 1-D array of times or a callable, got "
            f"{spec!r} ({type(spec).__name__})"
        )
    else:
        a = _real_array(spec, fn, what)
        if a.size == 0:
            raise ValueError(f"{fn}: {what} is empty")
        s = rng.choice(a, size=steps, replace=True)
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"{fn}: {what} must give finite times >= 0")
    return s


def predict_step_time(
    worker_times: Sequence[Any],
    quorum: int | None = None,
    *,
    steps: int = 20000,
    overhead: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Step-time distribution of a parameter server that aggregates the first ``quorum`` of n
    workers (None: all n), as an (n, k) fork-join with cancellation (flagcore.energy).

    Parameters
    ----------
    worker_times : n entries, one per worker, each the time (seconds) from the start of a step
        to the arrival of that worker's gradient: a number (always that long), a 1-D array of
        measured times (resampled with replacement), or a callable ``(rng, size) -> array``
        drawing ``size`` samples from a numpy Generator.
    quorum : k, 1 <= k <= n; None means n.
    steps : simulated steps.
    overhead : seconds added to every step (the server's aggregation and the result's trip).
    seed : seed of the numpy Generator the samples are drawn with.

    Returns a dict: ``samples`` (steps,), ``mean``, ``p50``, ``p90``, ``p99`` (seconds), ``n``,
    ``k``.
    """
    from ..energy import simulate_trace

    fn = "predict_step_time"
    if isinstance(worker_times, dict):
        raise TypeError(
            f"{fn}: worker_times must be a sequence (one entry per worker), got a dict: pass "
            "list(d.values()) if its values are the workers' times"
        )
    if (
        isinstance(worker_times, (str, bytes))
        or not hasattr(worker_times, "__len__")
        or len(worker_times) == 0
    ):
        raise ValueError(
            f"{fn}: worker_times must be a non-empty sequence (one entry per worker), "
            f"got {worker_times!r}"
        )
    n = len(worker_times)
    k = n if quorum is None else check_int(quorum, fn, "quorum", low=1, high=n)
    steps = check_int(steps, fn, "steps", low=1)
    overhead = check_float(overhead, fn, "overhead", low=0.0)
    seed = check_int(seed, fn, "seed", low=0)
    rng = np.random.default_rng(seed)
    services = np.stack(
        [_samples(w, int(steps), rng, i) for i, w in enumerate(worker_times)], axis=1
    )
    gap = float(services.max()) * 2.0 + 1.0  # every step finds the system empty: a synchronous loop
    if not np.isfinite(gap * int(steps)):
        raise ValueError(
            f"{fn}: worker_times up to {float(services.max()):g} s are too long to simulate "
            f"{int(steps)} steps (the steps, laid end to end, overflow float64)"
        )
    arrivals = np.arange(int(steps), dtype=np.float64) * gap
    out = simulate_trace(n, int(k), arrivals, services, cancel=True)
    t = out["response_times"] + overhead
    return {
        "samples": t,
        "mean": float(t.mean()),
        "p50": float(np.percentile(t, 50)),
        "p90": float(np.percentile(t, 90)),
        "p99": float(np.percentile(t, 99)),
        "n": n,
        "k": int(k),
    }


def lognormal_times(mean: float, sigma: float, shift: float = 0.0) -> Callable[..., Any]:
    """A sampler for ``predict_step_time``: shift + a lognormal of the given mean and sigma (of
    the underlying normal). mean > 0, sigma >= 0 and shift >= 0 (seconds, finite)."""
    fn = "lognormal_times"
    mean = check_float(mean, fn, "mean", low=0.0, strict_low=True)
    sigma = check_float(sigma, fn, "sigma", low=0.0)
    shift = check_float(shift, fn, "shift", low=0.0)
    mu = np.log(mean) - sigma**2 / 2
    if not np.isfinite(mu):
        raise ValueError(f"{fn}: sigma = {sigma:g} is too large for mean = {mean:g}")

    def draw(rng: np.random.Generator, size: int) -> np.ndarray:
        return shift + rng.lognormal(mu, sigma, size)

    return draw
