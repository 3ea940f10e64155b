"""Sleep states (delay-off timer, low-power states, wake-up latency and energy) against exact
results: continuous-time Markov chains solved with numpy (exponential timers and wake-ups;
M/M/1 with setup and delayed off in the style of Gandhi and Harchol-Balter, and (n, 1) with
cancellation, where a wake-up continues after its task is cancelled), the M/G/1 setup-time
decomposition for deterministic wake-ups, and per-server marginals for k = n. Tolerances come
from each run's own 95% confidence half-width (see test_energy_sim.py). Every run is seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flagcore.energy import SleepState, simulate

P_BUSY, P_IDLE, P_OFF, P_WAKE = 2.0, 0.6, 0.05, 3.0


def close(est, hw, exact, rel_floor=0.0):
    return abs(est - exact) < 4.0 * hw + rel_floor * abs(exact)


def chain_n1(n, lam, mu, alpha, beta, nmax=150):
    """(n, 1) fork-join with cancellation, one speed, each server idle -> off after Exp(alpha),
    off -> (work arrives) setup Exp(beta) -> busy. Every awake server works on the head
    request; a departure cancels the others (setups continue). State (N, server modes), modes
    B(usy) I(dle) O(ff) S(etup). Returns E[T], average power, and the time shares of the modes
    (summed over servers, divided by n)."""
    start = (0, ("I",) * n)
    index, states, trans = {start: 0}, [start], []
    todo = [start]

    def add(src, dst, rate):
        if dst not in index:
            index[dst] = len(states)
            states.append(dst)
            todo.append(dst)
        trans.append((index[src], index[dst], rate))

    while todo:
        st = todo.pop()
        N, modes = st
        if nmax > N:  # arrival
            add(st, (N + 1, tuple({"I": "B", "O": "S"}.get(m, m) for m in modes)), lam)
        busy = sum(m == "B" for m in modes)
        if busy:  # the head request completes (first of the busy servers)
            nxt = tuple(("B" if N - 1 >= 1 else "I") if m == "B" else m for m in modes)
            add(st, (N - 1, nxt), busy * mu)
        for i, m in enumerate(modes):
            if m == "S":
                add(st, (N, modes[:i] + ("B" if N >= 1 else "I",) + modes[i + 1 :]), beta)
            elif m == "I":
                add(st, (N, modes[:i] + ("O",) + modes[i + 1 :]), alpha)
    S = len(states)
    Q = np.zeros((S, S))
    for i, j, r in trans:
        Q[i, j] += r
        Q[i, i] -= r
    A = np.vstack([Q.T, np.ones(S)])
    b = np.zeros(S + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    N = np.array([s[0] for s in states], dtype=float)
    power = {"B": P_BUSY, "I": P_IDLE, "O": P_OFF, "S": P_WAKE}
    pw = np.array([sum(power[m] for m in s[1]) for s in states])
    share = {m: float(sum(p * s[1].count(m) for p, s in zip(pi, states)) / n) for m in "BIOS"}
    assert pi[nmax == N].sum() < 1e-10  # truncation is harmless
    return float(pi @ N) / lam, float(pi @ pw), share


@pytest.mark.parametrize(
    "n,lam,alpha,beta",
    [(1, 0.5, 1.0, 0.5), (1, 0.7, 0.2, 2.0), (2, 1.0, 0.5, 1.0), (3, 1.5, 2.0, 0.25)],
)
def test_exponential_setup_and_delay_off_against_the_chain(n, lam, alpha, beta):
    exact_t, exact_p, share = chain_n1(n, lam, 1.0, alpha, beta)
    r = simulate(
        n,
        1,
        lam,
        [(1.0, P_BUSY, 1.0)],
        idle_power=P_IDLE,
        requests=200_000,
        seed=n + 7,
        sleep=[SleepState(1.0 / alpha, P_OFF, 1.0 / beta, P_WAKE)],
        sleep_timer="exponential",
        wake_time="exponential",
    )
    assert r.mean_response_time_ci < 0.05 * exact_t
    assert close(r.mean_response_time, r.mean_response_time_ci, exact_t), (
        r.mean_response_time,
        exact_t,
    )
    assert close(r.average_power, r.average_power_ci, exact_p), (r.average_power, exact_p)
    # where the time went, state by state (no CI of their own: 3% of the value or 0.003)
    assert r.utilisation[0] == pytest.approx(share["B"], rel=0.03, abs=0.003)
    assert r.idle_fraction == pytest.approx(share["I"], rel=0.03, abs=0.003)
    assert r.sleep_fraction[0] == pytest.approx(share["O"], rel=0.03, abs=0.003)
    assert r.wake_fraction == pytest.approx(share["S"], rel=0.03, abs=0.003)
    assert math.fsum(np.sum(v) for v in r.power_split.values()) == pytest.approx(
        r.average_power, rel=1e-12
    )


@pytest.mark.parametrize("wake", ["deterministic", "exponential"])
def test_mg1_setup_decomposition(wake):
    """M/M/1 that sleeps as soon as it idles (after = 0) and pays a setup I on the next arrival:
    E[T] = 1/(mu - lam) + (2 E[I] + lam E[I^2]) / (2 (1 + lam E[I])) (setup-time decomposition);
    the server is off a share (1 - rho) / (1 + lam E[I]) of the time and waking lam E[I] times
    that."""
    lam, mu, D = 0.5, 1.0, 2.0
    EI, EI2 = D, (D * D if wake == "deterministic" else 2 * D * D)
    exact = 1 / (mu - lam) + (2 * EI + lam * EI2) / (2 * (1 + lam * EI))
    r = simulate(
        1,
        1,
        lam,
        [(mu, P_BUSY, 1.0)],
        requests=300_000,
        seed=3,
        sleep=[(0.0, P_OFF, D, P_WAKE)],
        wake_time=wake,
    )
    assert close(r.mean_response_time, r.mean_response_time_ci, exact), (
        r.mean_response_time,
        exact,
    )
    rho = lam / mu
    off = (1 - rho) / (1 + lam * EI)
    assert r.sleep_fraction[0] == pytest.approx(off, rel=0.02)
    assert r.wake_fraction == pytest.approx(lam * EI * off, rel=0.02)
    assert r.idle_fraction == pytest.approx(0.0, abs=1e-12)
    exact_p = P_BUSY * rho + P_OFF * off + P_WAKE * lam * EI * off
    assert close(r.average_power, r.average_power_ci, exact_p)


def test_k_equals_n_servers_follow_their_marginal_chain():
    """With k = n each server sees every task: its power and busy share are those of M/M/1 with
    setup and delayed off, whatever the other servers do."""
    n, lam, alpha, beta = 3, 0.5, 1.0, 0.5
    _, p1, share = chain_n1(1, lam, 1.0, alpha, beta)
    r = simulate(
        n,
        n,
        lam,
        [(1.0, P_BUSY, 1.0)],
        idle_power=P_IDLE,
        requests=200_000,
        seed=5,
        sleep=[(1.0 / alpha, P_OFF, 1.0 / beta, P_WAKE)],
        sleep_timer="exponential",
        wake_time="exponential",
    )
    assert close(r.average_power, r.average_power_ci, n * p1), (r.average_power, n * p1)
    assert r.sleep_fraction[0] == pytest.approx(share["O"], rel=0.03)
    # every wake-up ends a sleep period: wake-ups per unit time = per-server rate of entering setup
    wake_rate = r.wake_fraction * n * beta  # share of time waking / mean wake-up time, all servers
    assert r.wakeups_per_request * r.throughput == pytest.approx(wake_rate, rel=0.03)


def test_deeper_states_and_split():
    """Two states: light sleep after 0.5 idle, deep sleep 2.0 later; deterministic timers. The
    time in each state follows from the idle periods: with Poisson arrivals at an M/M/1 idle
    server, an idle period is Exp(lam), so P(idle period > a) = exp(-lam a)."""
    lam = 0.3
    st = [SleepState(0.5, 0.2, 0.1, 1.0), SleepState(2.0, 0.0, 1.0, 2.5)]
    r = simulate(
        1, 1, lam, [(1.0, P_BUSY, 1.0)], idle_power=P_IDLE, requests=300_000, seed=9, sleep=st
    )
    # An idle period of M/M/1 with setup ends at the next arrival: Exp(lam) long. Per idle
    # period, the expected time in state 0 is E[(min(X, 2.5) - 0.5)+] and in state 1
    # E[(X - 2.5)+]; their ratio does not depend on how many idle periods there are.
    a0, a1 = 0.5, 2.5
    t0 = (math.exp(-lam * a0) - math.exp(-lam * a1)) / lam
    t1 = math.exp(-lam * a1) / lam
    assert r.sleep_fraction[0] / r.sleep_fraction[1] == pytest.approx(t0 / t1, rel=0.03)
    # and the plain idle time per idle period is E[min(X, 0.5)]
    assert r.idle_fraction / r.sleep_fraction[1] == pytest.approx(
        (1 - math.exp(-lam * a0)) / lam / t1, rel=0.03
    )
    assert r.energy_split["sleep"].shape == (2,)
    assert math.fsum(np.sum(v) for v in r.energy_split.values()) == pytest.approx(
        r.total_energy_per_request, rel=1e-12
    )


def test_without_sleep_states_nothing_changes():
    a = simulate(4, 2, 1.2, [(1.0, 1.0, 1.0)], requests=20_000, seed=1, idle_power=0.3)
    b = simulate(4, 2, 1.2, [(1.0, 1.0, 1.0)], requests=20_000, seed=1, idle_power=0.3, sleep=[])
    assert a.mean_response_time == b.mean_response_time and a.average_power == b.average_power
    assert a.power_split["sleep"].size == 0 and a.power_split["wakeup"] == 0.0


def test_bad_sleep_states_are_refused():
    with pytest.raises(ValueError, match=r"simulate: sleep\[0\]\.wake_latency must be >= 0"):
        simulate(2, 1, 0.5, [(1.0, 1.0, 1.0)], requests=100, sleep=[(1.0, 0.1, -1.0, 1.0)])
    with pytest.raises(ValueError, match="simulate: sleep\\[0\\] must be"):
        simulate(2, 1, 0.5, [(1.0, 1.0, 1.0)], requests=100, sleep=[(1.0, 0.1)])
    with pytest.raises(TypeError, match="simulate: sleep must be a list"):
        simulate(2, 1, 0.5, [(1.0, 1.0, 1.0)], requests=100, sleep="deep")
    with pytest.raises(ValueError, match="simulate: sleep_timer must be"):
        simulate(
            2, 1, 0.5, [(1.0, 1.0, 1.0)], requests=100, sleep=[(1, 0, 1, 1)], sleep_timer="weibull"
        )
