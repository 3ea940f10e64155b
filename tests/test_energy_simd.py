"""The event loop's fast paths and the SIMD Philox kernel give the same bits as before.

The simulator draws Philox4x32-10 blocks with an AVX2 kernel where the CPU has AVX2 (a
run-time choice, like the Gram kernels), runs Poisson/exponential/one-level models through a
specialised random source, and scans the event slots with ties settled by sequence number only
when two times are equal. None of it may change a result: the pins below were written by main
at a5d6a67 (before these changes) with float.hex(), and every SIMD level must reproduce them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from conftest import simd_levels
from flagcore import _core
from flagcore.energy import simulate

# (mean response time, average power, p99) of simulate(requests=20000, seed=11, **case)
PINNED = {
    "mm1": (
        dict(n=1, k=1, arrival_rate=0.7, levels=[(1, 1, 1)]),
        ("0x1.c5f574fb7ee16p+1", "0x1.6d585037237f8p-1", "0x1.0824924924925p+4"),
    ),
    "fork_cancel": (
        dict(n=4, k=2, arrival_rate=1.5, levels=[(1, 1, 1)]),
        ("0x1.cce9276b41f5fp+0", "0x1.7fb51e15a5e91p+1", "0x1.bd00000000000p+2"),
    ),
    "fork_no_cancel": (
        dict(n=4, k=2, arrival_rate=0.7, levels=[(1, 1, 1)], cancel=False),
        ("0x1.21925ead72900p+1", "0x1.676a3c93fabdfp+1", "0x1.2900000000000p+3"),
    ),
    "fork_rate2": (  # a power-of-two rate and a power other than 1
        dict(n=3, k=2, arrival_rate=2.0, levels=[(2.0, 3.0, 1)]),
        ("0x1.04cba9a0170fdp+0", "0x1.8323a124a172dp+2", "0x1.e100000000000p+1"),
    ),
    "fork_deterministic": (  # equal completion times: ties settled by sequence number
        dict(n=4, k=2, arrival_rate=0.9, levels=[(1, 1, 1)], service="deterministic"),
        ("0x1.77edd96ec08efp+2", "0x1.cf89f4e363daep+1", "0x1.4e9999999999ap+4"),
    ),
    "tree_cancel": (  # n + 1 > 16 slots: the tournament tree
        dict(n=20, k=10, arrival_rate=1.5, levels=[(1, 1, 1)]),
        ("0x1.8dfe58f1a9dddp+0", "0x1.ded9f80f2a8e0p+3", "0x1.3145d1745d174p+2"),
    ),
}
# sha256 of _core.sim_sample(0, 0, [], 5, 2, 200000) (exponential draws, seed 5, stream 2)
EXP_SHA = "852901ba0a07226c02353fd13e725764f47d69f87c8311507a34b80511b37e74"


@pytest.mark.parametrize("case", sorted(PINNED))
def test_results_are_bit_identical_to_main_before_the_speedups(case, simd_level):
    kw, (t_hex, p_hex, p99_hex) = PINNED[case]
    r = simulate(requests=20000, seed=11, threads=1, **kw)
    assert r.mean_response_time == float.fromhex(t_hex)
    assert r.average_power == float.fromhex(p_hex)
    assert r.p99 == float.fromhex(p99_hex)


def test_exponential_draws_are_the_same_on_every_simd_level(simd_level):
    s = _core.sim_sample(0, 0, [], 5, 2, 200000)
    assert hashlib.sha256(np.ascontiguousarray(s).tobytes()).hexdigest() == EXP_SHA


def test_general_engine_matches_across_simd_levels():
    # two levels, sleep states and MMPP arrivals go through the general random source; every
    # draw comes from the same Philox words whichever kernel made them
    from flagcore.energy import MMPP, SleepState

    kw = dict(
        n=4,
        k=2,
        arrival_rate=1.25,  # the MMPP's mean rate, as tests/test_energy_arrivals.py passes it
        levels=[(1, 1, 0.4), (3, 9, 0.6)],
        sleep=[SleepState(0.5, 0.1, 0.2, 3.0)],
        arrivals=MMPP((0.5, 2.0), ((0, 0.3), (0.3, 0))),
        requests=20000,
        seed=4,
        threads=1,
    )
    got = {}
    try:
        for name in simd_levels():
            _core.set_simd_level(name)
            r = simulate(**kw)
            got[name] = (r.mean_response_time, r.average_power, r.p99, r.energy_per_request)
    finally:
        _core.set_simd_level("auto")
    assert len(set(got.values())) == 1, got
