"""Memory of the attacks at large n: the statistics are taken over blocks of columns (no float64
copy of the whole honest stack for the non-adaptive attacks), equal rows are returned without
f float64 copies, the adaptive attacks transform their float64 copies in place, and an attack
whose estimated peak exceeds the available memory is refused with a MemoryError naming it
before anything of size n is allocated (flagcore.attacks._attack_need; bench/bench_attack_memory.py
measures the peaks)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from flagcore import _memory, attacks
from flagcore.attacks import ALL_ATTACKS, attack


def _kw(name: str, nh: int, f: int) -> dict:
    kw: dict = {}
    if name in ("optimal_alie", "optimal_ipm", "min_max"):
        kw["rule"] = "median"
    if name == "alie" and f >= nh:
        kw["z"] = 1.0
    return kw


def _stack(nh: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((nh, n)) * 10.0 ** rng.integers(-3, 4, size=(1, n))
    if n > 3:
        x[1, 2] = np.nan  # a non-finite honest row: the adaptive attacks leave it out
    return x


@pytest.mark.parametrize("n", [1, 2, 3, 7, 101])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocks_of_columns_give_the_same_bits(monkeypatch, n, dtype) -> None:
    x = _stack(6, n, n).astype(dtype)
    whole = {name: attack(name, x, 3, seed=1, **_kw(name, 6, 3)) for name in ALL_ATTACKS}
    monkeypatch.setattr(attacks, "_BLOCK_BYTES", 64)  # blocks of two columns
    assert [b - a for a, b in attacks._Honest.of_array(x).blocks()] in (
        [1],
        [2] * (n // 2) if n % 2 == 0 else [2] * (n // 2 - 1) + [3],
    )
    for name in ALL_ATTACKS:
        got = attack(name, x, 3, seed=1, **_kw(name, 6, 3))
        assert got.dtype == dtype and got.shape == (3, n)
        np.testing.assert_array_equal(got, whole[name], err_msg=name)


def test_statistics_match_a_float64_reference_across_blocks(monkeypatch) -> None:
    monkeypatch.setattr(attacks, "_BLOCK_BYTES", 8 * 5 * 7)  # blocks of 7 columns
    x = np.random.default_rng(3).standard_normal((5, 50)) * 1e3
    mu, sd = x.mean(axis=0), x.std(axis=0, ddof=1)
    np.testing.assert_allclose(attack("sign_flip", x, 2)[1], -mu, rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(attack("ipm", x, 1)[0], -0.1 * mu, rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(attack("alie", x, 2, z=1.5)[0], mu - 1.5 * sd, rtol=1e-12)


@pytest.mark.parametrize("name", ["mimic", "sign_flip", "alie", "min_max", "fa_aware"])
@pytest.mark.parametrize("f", [1, 3])
def test_results_never_share_the_input_memory(name, f) -> None:
    x = np.random.default_rng(0).standard_normal((6, 40))
    keep = x.copy()
    out = attack(name, x, f, **_kw(name, 6, f))
    assert not np.shares_memory(out, x) and out.flags.writeable and out.flags.c_contiguous
    out[0] = 7.0
    if f > 1:
        assert not np.any(out[1] == 7.0)  # f rows of their own, not one row seen f times
    np.testing.assert_array_equal(x, keep)
    t = torch.from_numpy(x.copy())
    tout = attack(name, t, f, **_kw(name, 6, f))
    assert tout.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    tout[0] = 7.0
    assert torch.equal(t, torch.from_numpy(keep))
    items = attack(name, [t[i].clone() for i in range(6)], f, **_kw(name, 6, f))
    ptrs = {it.untyped_storage().data_ptr() for it in items}
    assert len(ptrs) == f and t.untyped_storage().data_ptr() not in ptrs


@pytest.fixture
def small_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "available_bytes", lambda: 256 << 20)


@pytest.mark.parametrize(
    ("name", "f", "kw"),
    [("fa_aware", 3, {}), ("min_max", 3, {"rule": "mean"}), ("random", 60, {})],
)
def test_an_attack_beyond_the_memory_is_refused_before_allocating(small_room, name, f, kw) -> None:
    x = np.zeros((10, 1_000_000), np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError) as e:
            attack(name, x, f, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(e.value)
    assert msg.startswith(f"attack: attack {name!r} on 10 honest rows of n = 1000000 with f = {f}")
    assert "than the 256 MiB available" in msg and "a slice of the gradient" in msg, msg
    assert peak < 20e6  # nothing of size n x rows was allocated (one float64 row is 8 MB)


def test_the_attack_check_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, small_room) -> None:
    x = np.zeros((10, 300_000), np.float32)
    with pytest.raises(MemoryError):
        attack("random", x, 60)
    monkeypatch.setenv("FLAGCORE_MEMORY_CHECK", "0")
    out = attack("random", x, 60)
    assert out.shape == (60, 300_000) and out.dtype == np.float32


def test_every_attack_has_an_estimate() -> None:
    assert set(attacks._ATTACK_ROWS) == set(ALL_ATTACKS)


def _measured_over_estimated(setup: str, call: str) -> float:
    prog = f"""
import numpy as np, flagcore
from flagcore import attacks
flagcore.set_num_threads(2)
def hwm():
    with open("/proc/self/status") as fh:
        return int(fh.read().split("VmHWM:")[1].split()[0]) * 1024
{setup}
w = args(x[:, :100].copy())
attacks.attack(w[0], w[1], w[2], rule=w[3])  # imports and first-call set-up
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # VmHWM back to the current resident size
with open("/proc/self/status") as fh:
    base = int(fh.read().split("VmRSS:")[1].split()[0]) * 1024
a = args(x)
{call}
need = attacks._attack_need(a[0], attacks._honest_rows(x, "t")[0], a[2], a[3] is not None)
print((hwm() - base) / need)
"""
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.parametrize(
    ("name", "dtype", "f", "rule"),
    [
        ("fa_aware", "float32", 3, None),
        ("fa_aware", "float64", 12, None),
        ("min_max", "float32", 3, None),
        ("min_sum", "float32", 12, "signguard"),
        ("optimal_ipm", "float32", 12, "mean"),
        ("random", "float32", 12, None),
    ],
)
def test_estimate_bounds_the_measured_peak(name, dtype, f, rule) -> None:
    # the estimate is an upper bound, and not a loose one for the attacks that need the most
    if sys.platform != "linux":
        pytest.skip("VmHWM is read from /proc/self/status")
    setup = (
        f"x = np.random.default_rng(0).standard_normal((12, 1_000_000)).astype({dtype!r})\n"
        f"def args(h):\n    return ({name!r}, h, {f}, {rule!r})"
    )
    call = "attacks.attack(a[0], a[1], a[2], rule=a[3])"
    ratio = _measured_over_estimated(setup, call)
    assert 0.5 <= ratio <= 1.0, ratio


@pytest.mark.parametrize("kind", ["numpy64", "numpy32", "torch64", "list64"])
def test_adaptive_attacks_leave_the_input_as_it_was(kind) -> None:
    # the finite rows are moved up in place only in flagcore's own float64 copies
    x = _stack(7, 50, 1)
    x[4, 0] = np.inf
    for name in ("optimal_alie", "optimal_ipm", "min_max", "min_sum", "fa_aware"):
        for kw in ({}, {"rule": "mean"}) if name != "optimal_alie" else ({"rule": "mean"},):
            if kind == "numpy64":
                inp: object = x.copy()
            elif kind == "numpy32":
                inp = x.astype(np.float32)
            elif kind == "torch64":
                inp = torch.from_numpy(x.copy())
            else:
                inp = [r.copy() for r in x]

            def arr(v: object) -> np.ndarray:
                if isinstance(v, list):
                    return np.stack(v)
                return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

            keep = arr(inp).copy()
            kw = dict(kw, rule="mean") if name == "optimal_ipm" else kw
            attack(name, inp, 2, **kw)
            np.testing.assert_array_equal(arr(inp), keep, err_msg=name)
