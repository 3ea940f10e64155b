"""Heterogeneous servers: ``levels`` given per server (a list of n level sets).

Against closed forms: (2, 1) with cancellation and exponential work is M/M/1 at the sum of the
two servers' rates (both always serve the head request); with k = n every server is its own
M/G/1, so its busy share per level (lambda p_s / r_s) and the mean power are exact. Identities:
one set per server equal to the shared set is bit-identical to the homogeneous run; a
permutation of the servers gives the same distribution (within the confidence intervals);
the policies pick each server's own levels. Tolerances: 4 of the runs' 95% half-widths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flagcore.energy import DeadlinePolicy, ThresholdPolicy, simulate


def close(est, hw, exact):
    return abs(est - exact) < 4.0 * hw


def test_one_server_per_server_levels_equal_the_homogeneous_run():
    lv = [(1.0, 1.0, 0.3), (2.5, 5.0, 0.7)]
    a = simulate(1, 1, 0.8, [lv], requests=20_000, seed=2)
    b = simulate(1, 1, 0.8, lv, requests=20_000, seed=2)
    assert a.mean_response_time == b.mean_response_time
    assert a.average_power == b.average_power


def test_identical_sets_are_bit_identical_to_the_shared_levels():
    lv = [(1.0, 1.0, 0.4), (3.0, 9.0, 0.6)]
    a = simulate(4, 2, 1.0, [lv] * 4, requests=20_000, seed=3, switch_energy=0.2)
    b = simulate(4, 2, 1.0, lv, requests=20_000, seed=3, switch_energy=0.2)
    assert a.mean_response_time == b.mean_response_time
    assert a.average_power == b.average_power
    assert a.params["levels"] == [[list(t) for t in lv]] * 4


def test_two_servers_k1_cancel_is_mm1_at_the_summed_rate():
    r1, r2, w1, w2, lam, idle = 1.0, 2.0, 1.0, 3.0, 1.5, 0.2
    r = simulate(
        2, 1, lam, [[(r1, w1, 1.0)], [(r2, w2, 1.0)]], idle_power=idle, requests=300_000, seed=4
    )
    rho = lam / (r1 + r2)
    assert close(r.mean_response_time, r.mean_response_time_ci, 1.0 / (r1 + r2 - lam))
    assert close(r.average_power, r.average_power_ci, rho * (w1 + w2) + (1 - rho) * 2 * idle)
    assert close(r.p99, r.percentile_ci(0.99), -math.log(0.01) / (r1 + r2 - lam))


def test_k_equals_n_per_server_busy_shares_and_power_are_exact():
    sets = [[(1.0, 1.0, 1.0)], [(2.0, 3.0, 1.0)], [(1.0, 1.0, 0.5), (3.0, 5.0, 0.5)]]
    lam, idle = 0.5, 0.1
    r = simulate(3, 3, lam, sets, idle_power=idle, requests=300_000, seed=5)
    share = np.array([lam * p / rt for s in sets for rt, _, p in s])  # per (server, level)
    power = sum(lam * p / rt * w for s in sets for rt, w, p in s)
    power += sum((1 - lam * sum(p / rt for rt, _, p in s)) * idle for s in sets)
    np.testing.assert_allclose(r.utilisation * 3, share, rtol=0.02)
    assert close(r.average_power, r.average_power_ci, power)


def test_a_permutation_of_the_servers_gives_the_same_distribution():
    sets = [[(1.0, 1.0, 1.0)], [(2.0, 4.0, 1.0)], [(0.8, 0.5, 0.5), (3.0, 6.0, 0.5)]]
    kw = dict(requests=200_000, idle_power=0.3, service=("erlang", 2))
    a = simulate(3, 2, 1.0, sets, seed=6, **kw)
    b = simulate(3, 2, 1.0, [sets[2], sets[0], sets[1]], seed=7, **kw)
    for name in ("mean_response_time", "average_power", "energy_per_request"):
        x, y = getattr(a, name), getattr(b, name)
        assert abs(x - y) < 4 * math.hypot(getattr(a, name + "_ci"), getattr(b, name + "_ci")), name
    assert abs(a.p99 - b.p99) < 4 * math.hypot(a.percentile_ci(0.99), b.percentile_ci(0.99))


def test_threshold_policy_per_server_k1_cancel_is_a_birth_death_chain():
    # both servers share the queue q; the head request completes at the sum of their rates
    sets = [[(1.0, 1.0), (2.0, 4.0)], [(0.5, 0.4), (3.0, 7.0)]]
    lam, T, nmax = 1.8, 2, 3000
    rate = [0.0] + [sum(s[int(q > T)][0] for s in sets) for q in range(1, nmax)]
    pw = [0.0] + [sum(s[int(q > T)][1] for s in sets) for q in range(1, nmax)]
    logpi = np.zeros(nmax)
    for q in range(1, nmax):
        logpi[q] = logpi[q - 1] + math.log(lam / rate[q])
    pi = np.exp(logpi - logpi.max())
    pi /= pi.sum()
    r = simulate(2, 1, lam, sets, policy=ThresholdPolicy(T), requests=300_000, seed=8)
    assert close(r.mean_response_time, r.mean_response_time_ci, float(np.arange(nmax) @ pi) / lam)
    assert close(r.average_power, r.average_power_ci, float(np.asarray(pw) @ pi))


def test_deadline_policy_picks_each_servers_own_slowest_level():
    sets = [[(2.0, 4.0), (1.0, 1.0)], [(3.0, 9.0), (0.7, 0.5), (1.5, 2.0)]]
    kw = dict(requests=20_000, seed=9)
    loose = simulate(2, 1, 0.5, sets, policy=DeadlinePolicy(1e300), **kw)
    slow = simulate(2, 1, 0.5, [[(1.0, 1.0, 1.0)], [(0.7, 0.5, 1.0)]], **kw)
    assert loose.mean_response_time == slow.mean_response_time
    assert loose.average_power == slow.average_power


@pytest.mark.parametrize(
    "levels,kw,match",
    [
        ([[(1, 1, 1)], [(1, 1, 1)]], {}, "must list n = 3 level sets, got 2"),
        ([[(1, 1, 1)], [(1, 1, 1)], [(1, -1, 1)]], {}, r"levels of server 2\): levels\[0\].power"),
        (
            [[(1, 1, 1)], [(1, 1, 1)], [(1, 1, 0.5)]],
            {},
            r"levels of server 2\): level probabilities",
        ),
        (
            [[(1, 1), (2, 2)], [(1, 1)], [(1, 1), (2, 2)]],
            dict(policy=ThresholdPolicy(1)),
            "same number of levels",
        ),
    ],
)
def test_bad_per_server_levels_are_refused(levels, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        simulate(3, 2, 0.5, levels, requests=1000, **kw)
    assert "simulate" in str(e.value)


def test_hetero_certainly_unstable():
    with pytest.raises(ValueError, match="server 0"):
        simulate(2, 2, 1.2, [[(1.0, 1.0, 1.0)], [(5.0, 1.0, 1.0)]], requests=1000)
    with pytest.raises(ValueError, match="sum of the servers' fastest rates"):
        simulate(2, 1, 3.0, [[(1.0, 1.0, 1.0)], [(2.0, 1.0, 1.0)]], requests=1000)
