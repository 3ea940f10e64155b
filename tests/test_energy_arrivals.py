"""Arrivals beyond Poisson: MMPP/M/1 against its matrix-geometric solution (Neuts), and an
MMPP with equal phase rates against the Poisson result. Seeded; tolerances from each run's own
95% confidence half-width (test_energy_sim.py)."""

from __future__ import annotations

import numpy as np
import pytest

from flagcore.energy import MMPP, Renewal, simulate


def mmpp_m1_mean_in_system(rates, switch, mu):
    """Level-independent QBD: levels = number in system, phases = MMPP phase. Up: diag(rates);
    local: D0 - mu eye (levels >= 1), D0 at level 0; down: mu eye. R is the minimal solution of
    A0 + R A1 + R^2 A2 = 0; pi_n = pi_1 R^(n-1) for n >= 1."""
    lam = np.diag(rates)
    Q = np.array(switch, dtype=float)
    np.fill_diagonal(Q, 0.0)
    np.fill_diagonal(Q, -Q.sum(axis=1))
    P = len(rates)
    D0 = Q - lam
    A0, A1, A2 = lam, D0 - mu * np.eye(P), mu * np.eye(P)
    R = np.zeros((P, P))
    inv = np.linalg.inv(A1)
    for _ in range(100_000):
        Rn = -(A0 + R @ R @ A2) @ inv
        if np.abs(Rn - R).max() < 1e-15:
            break
        R = Rn
    R = Rn
    # boundary: pi0 D0 + pi1 A2 = 0, pi0 A0 + pi1 (A1 + R A2) = 0, normalisation
    M = np.block([[D0, A0], [A2, A1 + R @ A2]])
    eye = np.eye(P)
    norm = np.concatenate([np.ones(P), np.linalg.solve(eye - R, np.ones(P))])
    A = np.vstack([M.T, norm])
    b = np.zeros(2 * P + 1)
    b[-1] = 1.0
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    pi1 = x[P:]
    IR = np.linalg.inv(eye - R)
    return float(pi1 @ IR @ IR @ np.ones(P)), float(x[:P].sum())


@pytest.mark.parametrize(
    "rates,switch",
    [
        ((0.2, 1.2), ((0, 0.1), (0.1, 0))),
        ((0.0, 0.6, 1.2), ((0, 0.3, 0.1), (0.2, 0, 0.2), (0.1, 0.4, 0))),
    ],
)
def test_mmpp_m1_matches_the_matrix_geometric_solution(rates, switch):
    mu = 1.0
    m = MMPP(rates, switch)
    lam = m.mean_rate
    EN, p0 = mmpp_m1_mean_in_system(rates, switch, mu)
    exact_t = EN / lam  # Little's law
    r = simulate(1, 1, lam, [(mu, 1.0, 1.0)], arrivals=m, requests=400_000, seed=13, batches=20)
    assert r.mean_response_time_ci < 0.06 * exact_t
    assert abs(r.mean_response_time - exact_t) < 4 * r.mean_response_time_ci, (
        r.mean_response_time,
        exact_t,
    )
    assert r.idle_fraction == pytest.approx(p0, abs=0.01)
    assert r.throughput == pytest.approx(lam, rel=0.02)
    # burstiness costs latency: worse than the Poisson M/M/1 at the same load
    assert exact_t > 1.0 / (mu - lam)


def test_mmpp_with_equal_rates_is_poisson():
    m = MMPP((0.7, 0.7), ((0, 1.0), (2.0, 0)))
    r = simulate(1, 1, 0.7, [(1.0, 1.0, 1.0)], arrivals=m, requests=200_000, seed=3)
    assert abs(r.mean_response_time - 1 / 0.3) < 4 * r.mean_response_time_ci
    assert r.params["arrivals"]["rates"] == [0.7, 0.7]


def test_mmpp_rates_are_scaled_to_the_arrival_rate():
    m = MMPP((1.0, 3.0), ((0, 1.0), (1.0, 0)))  # mean 2
    r = simulate(4, 2, 1.0, [(1.0, 1.0, 1.0)], arrivals=m, requests=20_000, seed=1)
    assert r.params["arrivals"]["rates"] == [0.5, 1.5]
    assert r.throughput == pytest.approx(1.0, rel=0.05)


def test_bad_mmpp_is_refused():
    with pytest.raises(ValueError, match="simulate: the MMPP phase process must be irreducible"):
        simulate(1, 1, 0.5, [(1, 1, 1)], arrivals=MMPP((1.0, 2.0), ((0, 0), (0, 0))), requests=100)
    with pytest.raises(ValueError, match="simulate: MMPP needs rates"):
        simulate(1, 1, 0.5, [(1, 1, 1)], arrivals=MMPP((1.0, 2.0), ((0, 1),)), requests=100)
    with pytest.raises(TypeError, match="simulate: arrivals must be None"):
        simulate(1, 1, 0.5, [(1, 1, 1)], arrivals="bursty", requests=100)


def gm1_sigma(lst, mu):
    """G/M/1: sigma in (0, 1) solving sigma = A*(mu (1 - sigma)), A* the inter-arrival LST;
    the sojourn time is then Exp(mu (1 - sigma))."""
    sigma = 0.5
    for _ in range(10_000):
        nxt = lst(mu * (1.0 - sigma))
        if abs(nxt - sigma) < 1e-15:
            break
        sigma = nxt
    return nxt


@pytest.mark.parametrize(
    "dist,lst",
    [
        ("deterministic", lambda lam: lambda s: np.exp(-s / lam)),
        (("erlang", 3), lambda lam: lambda s: (3 * lam / (3 * lam + s)) ** 3),
        (("gamma", 0.5), lambda lam: lambda s: (0.5 * lam / (0.5 * lam + s)) ** 0.5),
    ],
)
def test_renewal_arrivals_gm1(dist, lst):
    """Renewal arrivals at an M/M/1-type server: the G/M/1 closed form (mean and p90)."""
    lam, mu = 0.6, 1.0
    sigma = gm1_sigma(lst(lam), mu)
    rate = mu * (1 - sigma)
    r = simulate(1, 1, lam, [(mu, 1.0, 1.0)], arrivals=Renewal(dist), requests=200_000, seed=17)
    assert abs(r.mean_response_time - 1 / rate) < 4 * r.mean_response_time_ci, (
        r.mean_response_time,
        1 / rate,
    )
    p90 = -np.log(0.1) / rate
    assert abs(r.percentile(0.9) - p90) < 4 * r.percentile_ci(0.9) + 0.004 * p90
    assert r.params["arrivals"]["kind"] == "renewal"
    assert r.throughput == pytest.approx(lam, rel=0.01)


def test_renewal_with_exponential_shape_is_poisson_exactly():
    a = simulate(4, 2, 1.2, [(1.0, 1.0, 1.0)], requests=20_000, seed=5)
    b = simulate(
        4, 2, 1.2, [(1.0, 1.0, 1.0)], arrivals=Renewal("exponential"), requests=20_000, seed=5
    )
    assert a.mean_response_time == b.mean_response_time  # the same draws, the same path
