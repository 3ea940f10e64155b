"""The AMX float32 Gram (csrc/flag/gram_amx.cpp: each value split into three bfloat16 parts, six
tile products, float32 tile sums over slices of 256 columns (p < 224) or 128 (from 224) added in
float64): against float64 NumPy within the float32 accuracy class, at least as accurate as the
AVX-512 FMA kernels, identical for any thread count and memory layout, on the per-item path (row
parts as many as the threads need: 1, 2 or 3 here) and the shared one (one column group and more
than 4 row parts: 8 threads), and the same NaN/Inf, overflow and underflow handling. Forced on
for every p with set_gram_amx("on"); skipped on CPUs without AMX-BF16."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import flagcore
from flagcore import _core

AMX = bool(flagcore.build_info().get("amx_supported"))


def _amx_usable() -> bool:
    """The CPU has the tiles and the OS grants them (asked here, as the first AMX Gram would)."""
    if not AMX:
        return False
    try:
        _core.set_gram_amx("on")
        return True
    except ValueError:
        return False
    finally:
        _core.set_gram_amx("auto")


USABLE = _amx_usable()
needs_amx = pytest.mark.skipif(not USABLE, reason="the CPU or OS offers no AMX-BF16 tiles")


def _data(b, p, n, seed):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 100.0, size=(b, p, 1))  # rows of very different norms
    return (rng.standard_normal((b, p, n)) * scale).astype(np.float32)


def _rel_err(g, x):
    x64 = x.astype(np.float64)
    ref = x64 @ np.swapaxes(x64, 1, 2)
    d = np.sqrt(np.einsum("qii->qi", ref))
    bound = d[:, :, None] * d[:, None, :]  # Cauchy-Schwarz: >= sum |x_ik x_jk|
    return float(np.max(np.abs(g - ref) / np.where(bound > 0, bound, 1.0)))


@pytest.fixture
def amx_on():
    _core.set_gram_amx("on")
    yield
    _core.set_gram_amx("auto")
    flagcore.set_num_threads(0)


@needs_amx
@pytest.mark.parametrize(
    "b,p,n",
    [
        (1, 33, 1),
        (2, 47, 31),  # a row tile and a column block cut short
        (1, 64, 257),  # one column past a slice
        (3, 65, 513),
        (1, 200, 5_000),  # 256-column slices
        (1, 230, 129),  # 128-column slices, one column past the first
        (2, 250, 40_000),  # column groups
        (1, 511, 700),  # one group: row parts per thread; shared by 8 threads
        (2, 530, 9_001),
        (1, 1100, 300),
        (1, 1500, 2_100),  # a p x p partial over 16 MiB: two groups
    ],
)
def test_matches_float64_and_is_thread_and_layout_independent(amx_on, b, p, n):
    x = _data(b, p, n, seed=p + n)
    out = []
    for threads in (1, 2, 3, 8):
        flagcore.set_num_threads(threads)
        out.append(_core.gram(x))
    g = out[0]
    # float32 tile sums of at most 256 leading products (and 5 * 256 small ones), in float64
    assert _rel_err(g, x) <= 1e-6
    np.testing.assert_array_equal(g, np.swapaxes(g, 1, 2))
    for other in out[1:]:
        np.testing.assert_array_equal(other, g)
    wide = np.zeros((b, p, n + 5), np.float32)
    wide[:, :, 3 : n + 3] = x
    np.testing.assert_array_equal(_core.gram(wide[:, :, 3 : n + 3]), g)
    if b == 1:
        np.testing.assert_array_equal(_core.gram(list(x[0]))[0], g[0])


@needs_amx
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pack_ahead_path_sums_like_pack_then_multiply(amx_on, threads):
    # Up to p = 128 an item packs the next slice between the tile instructions of the current
    # one (a second buffer); above it packs, then multiplies. Both form each entry from the same
    # operations, so the leading p x p block of a p = 144 Gram (pack, then multiply) equals the
    # Gram of those p rows (pack ahead), bit for bit: several slices, a last one cut short.
    flagcore.set_num_threads(threads)
    x = _data(1, 144, 70_001, seed=11)
    big = _core.gram(x)[0]
    for p in (33, 64, 100, 128):
        small = _core.gram(x[:, :p])[0]
        np.testing.assert_array_equal(np.triu(small), np.triu(big[:p, :p]))


@needs_amx
@pytest.mark.parametrize("p,n", [(96, 20_000), (200, 5_000), (600, 3_000)])
def test_at_least_as_accurate_as_the_fma_kernels(p, n):
    x = _data(1, p, n, seed=11)
    errs = {}
    try:
        for mode in ("on", "off"):
            _core.set_gram_amx(mode)
            errs[mode] = _rel_err(_core.gram(x), x)
    finally:
        _core.set_gram_amx("auto")
    assert errs["on"] <= errs["off"] * 1.5 + 1e-9, errs


@needs_amx
def test_nonfinite_overflowing_and_tiny_rows(amx_on):
    x = _data(1, 70, 2000, seed=9)
    x[0, 5] *= np.float32(1e25)  # float32 products overflow: recomputed in float64
    x[0, 9, 3] = np.inf
    x[0, 12, 7] = np.nan
    x[0, 20] *= np.float32(1e-25)  # bf16 parts and products underflow: recomputed in float64
    x[0, 30, 100] = np.float32(3.4e38)  # rounds to +inf in bfloat16
    g = _core.gram(x)[0]
    ref = x[0].astype(np.float64) @ x[0].astype(np.float64).T
    assert abs(g[5, 5] - ref[5, 5]) <= 1e-6 * ref[5, 5]
    assert abs(g[20, 20] - ref[20, 20]) <= 1e-6 * ref[20, 20]
    assert not np.isfinite(g[9, 9]) and np.isnan(g[12, 12])
    assert abs(g[30, 30] - ref[30, 30]) <= 1e-12 * ref[30, 30]  # recomputed: bf16 overflow
    keep = [i for i in range(70) if i not in (9, 12, 30)]
    d = np.sqrt(np.diag(ref)[keep])
    sub = np.abs(g[np.ix_(keep, keep)] - ref[np.ix_(keep, keep)])
    assert np.all(sub <= 1e-6 * np.outer(d, d))


def test_switch_and_build_info():
    info = flagcore.build_info()
    assert isinstance(info["amx_supported"], bool) and isinstance(info["amx"], bool)
    with pytest.raises(ValueError, match="set_gram_amx: mode must be"):
        _core.set_gram_amx("yes")
    try:
        _core.set_gram_amx("off")
        assert flagcore.build_info()["amx"] is False
        if USABLE:
            _core.set_gram_amx("on")
            assert flagcore.build_info()["amx"] is True
        else:
            with pytest.raises(ValueError, match="does not offer AMX"):
                _core.set_gram_amx("on")
    finally:
        _core.set_gram_amx("auto")
    # another instruction set turns the tiles off
    try:
        other = "avx2" if flagcore.build_info()["simd_supported"] != "generic" else "generic"
        _core.set_simd_level(other)
        assert _core.gram_amx() is False
    finally:
        _core.set_simd_level("auto")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"),
    reason="arch_prctl is syscall 158 on x86-64 Linux",
)
def test_no_os_request_before_a_tile_gram():
    # importing flagcore and reading build_info must not ask Linux for the tile state (it makes
    # every later sigaltstack() need 8 KiB more): the request comes with the first AMX Gram
    code = (
        "import flagcore, ctypes; flagcore.build_info(); "
        "libc = ctypes.CDLL(None); buf = ctypes.c_uint64(0); "
        "rc = libc.syscall(158, 0x1022, ctypes.byref(buf)); "  # arch_prctl(ARCH_GET_XCOMP_PERM)
        "print(rc, (buf.value >> 18) & 1)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rc, granted = out.stdout.split()
    assert rc != "0" or granted == "0", out.stdout


def test_malformed_environment_value_is_refused():
    from flagcore._backend import check_runtime_env

    for bad in ("no", "1", "ON", ""):
        with pytest.raises(ValueError, match="FLAGCORE_AMX must be one of"):
            check_runtime_env({"FLAGCORE_AMX": bad})
    for good in ("auto", "off", "0"):
        check_runtime_env({"FLAGCORE_AMX": good})


def test_environment_switch_off():
    code = "import flagcore; print(flagcore.build_info()['amx'])"
    env = dict(os.environ, FLAGCORE_AMX="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
