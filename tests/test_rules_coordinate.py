"""Coordinate-wise rules against float64 NumPy references, hand-computed cases, non-finite
workers, every instruction-set variant, and the p-space sorting networks."""

import numpy as np
import pytest

import flagcore
from flagcore import _reference_rules as ref
from flagcore._backend import core

TOL = {np.float32: 2e-6, np.float64: 1e-12}
REFS = {
    "mean": lambda x, f: ref.mean_ref(x),
    "median": lambda x, f: ref.median_ref(x),
    "trimmed_mean": ref.trimmed_mean_ref,
    "meamed": ref.meamed_ref,
    "phocas": ref.phocas_ref,
}
PS = [1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 40]


def _fs(p):
    return sorted({0, (p - 1) // 2, max(0, (p - 1) // 4)})


@pytest.mark.parametrize("rule", list(REFS))
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference(rule, p, dtype):
    n = 203  # several blocks plus a ragged tail for every vector width
    x = ref.make_gradients(p, n, seed=p, dtype=dtype)
    for f in _fs(p):
        got = flagcore.aggregate(x, rule, f=f)
        assert got.dtype == dtype and got.shape == (n,)
        want = REFS[rule](x.astype(np.float64), f)
        np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=TOL[dtype] * 4)


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_simd_levels_agree(level):
    if level == "avx512" and flagcore.build_info()["simd_supported"] != "avx512":
        pytest.skip("this CPU has no AVX-512")
    if level == "avx2" and flagcore.build_info()["simd_supported"] == "generic":
        pytest.skip("this CPU has no AVX2")
    x = ref.make_gradients(15, 1000, seed=3)
    try:
        core.set_simd_level(level)
        for rule in REFS:
            np.testing.assert_allclose(
                flagcore.aggregate(x, rule, f=3), REFS[rule](x, 3), rtol=2e-6, atol=1e-6
            )
    finally:
        core.set_simd_level("auto")


def test_hand_computed():
    x = np.array([[1.0, 10.0], [2.0, -1.0], [3.0, 0.0], [100.0, 4.0]])
    np.testing.assert_array_equal(flagcore.aggregate(x, "median"), [2.5, 2.0])  # midpoints
    np.testing.assert_array_equal(flagcore.aggregate(x, "trimmed_mean", f=1), [2.5, 2.0])
    # meamed f=1: 3 values closest to the median 2.5 of column 0: {1, 2, 3}; column 1 median
    # 2: distances 8, 3, 2, 2 -> {-1, 0, 4}
    np.testing.assert_allclose(flagcore.aggregate(x, "meamed", f=1), [2.0, 1.0])
    y = np.array([[0.0], [1.0], [2.0], [3.0]])
    # tie: 3 values closest to 1.5 from {0,1,2,3}: 0 and 3 tie at 1.5, the smaller is kept
    np.testing.assert_allclose(flagcore.aggregate(y, "meamed", f=1), [1.0])
    # phocas f=1: trimmed mean of {1, 2, 3, 100} is 2.5, closest 3 are {1, 2, 3}
    np.testing.assert_allclose(flagcore.aggregate(x[:, :1], "phocas", f=1), [2.0])
    assert flagcore.aggregate(np.array([[5.0], [1.0], [3.0]], np.float32), "median")[0] == 3.0


def test_midpoint_does_not_overflow_float32():
    big = np.finfo(np.float32).max
    x = np.array([[big], [big]], np.float32)
    assert flagcore.aggregate(x, "median")[0] == big


@pytest.mark.parametrize("rule", list(REFS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_worker_is_excluded(rule, bad):
    p, f = 9, 2
    x = ref.make_gradients(p, 300, seed=1, dtype=np.float64)
    x[4, 17] = bad
    got, info = flagcore.aggregate(x, rule, f=f, return_info=True)
    assert info.excluded.tolist() == [i == 4 for i in range(p)]
    want = REFS[rule](np.delete(x, 4, axis=0), f - 1)  # one excluded worker counts toward f
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.isfinite(got).all()


def test_more_nonfinite_than_f_and_all_nonfinite():
    x = ref.make_gradients(7, 50, seed=2, dtype=np.float64)
    x[[0, 1, 2], 3] = np.nan
    got = flagcore.aggregate(x, "trimmed_mean", f=1)
    np.testing.assert_allclose(got, ref.trimmed_mean_ref(x[3:], 0), rtol=1e-12)
    x[:] = np.inf
    got, info = flagcore.aggregate(x, "median", return_info=True)
    assert info.excluded.all() and np.all(got == 0)


def test_batch_with_different_exclusions():
    x = np.stack([ref.make_gradients(8, 100, seed=s, dtype=np.float64) for s in range(3)])
    x[1, 2, 5] = np.nan
    got, info = flagcore.aggregate(x, "phocas", f=2, return_info=True)
    assert got.shape == (3, 100) and info.excluded.shape == (3, 8) and info.excluded.sum() == 1
    for q in range(3):
        keep = ~info.excluded[q]
        np.testing.assert_allclose(
            got[q], ref.phocas_ref(x[q][keep], 2 - (~keep).sum()), rtol=1e-12
        )


def test_rules_cross_the_boundary_by_name():
    """The rule is a bound enum on both sides: the Python names map one to one onto
    core.CoordRule, a bare int is refused by pybind11 and an out-of-range value by name."""
    from flagcore.rules.coordinate import RULE_IDS

    assert {k: v.name for k, v in RULE_IDS.items()} == {k: k for k in RULE_IDS}
    assert set(core.CoordRule.__members__) == set(RULE_IDS)
    x = ref.make_gradients(5, 9, seed=1)[None]
    with pytest.raises(TypeError):
        core.coordinate(x, 0, 0, -1)
    with pytest.raises(
        ValueError, match=r"coordinate: rule must be a CoordRule .* got the value 7"
    ):
        core.coordinate(x, core.CoordRule(7), 0, -1)
    with pytest.raises(ValueError, match="coordinate_network: rule must be a CoordRule"):
        core.coordinate_network(5, core.CoordRule(-1), 0, 5)


@pytest.mark.parametrize("pe", [*range(1, 41), 47, 63, 64, 65, 100, 129])
def test_networks_sort_every_zero_one_input(pe):
    """0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input.
    Checked exhaustively for the full networks up to 16 inputs, on random 0/1 inputs beyond
    (Batcher's merge exchange for any count, also between powers of two)."""
    comp = core.coordinate_network(
        pe, core.CoordRule.meamed, 0, pe
    )  # keeps every position: full network
    rng = np.random.default_rng(pe)
    if pe <= 16:
        v = ((np.arange(2**pe)[:, None] >> np.arange(pe)[None]) & 1).astype(np.int8)
    else:
        v = rng.integers(0, 2, size=(20000, pe)).astype(np.int8)
    for i, j in comp:
        lo, hi = np.minimum(v[:, i], v[:, j]), np.maximum(v[:, i], v[:, j])
        v[:, i], v[:, j] = lo, hi
    assert np.all(np.diff(v, axis=1) >= 0)


@pytest.mark.parametrize("pe", [16, 31, 32, 33, 34, 48, 64, 65, 96, 100, 128])
def test_median_network_sizes(pe):
    """The merge-exchange network's comparator counts after pruning to the median's two
    positions (Knuth's Algorithm M; the figures below were counted independently from his
    description): between powers of two it needs fewer than Batcher's network on the next power
    of two with the padding dropped (198 at 33, 542 at 65, 865 at 96)."""
    expected = {
        16: 53,
        31: 152,
        32: 157,
        33: 169,
        34: 185,
        48: 301,
        64: 445,
        65: 462,
        96: 829,
        100: 889,
        128: 1213,
    }
    assert len(core.coordinate_network(pe, core.CoordRule.median, 0, 0)) == expected[pe]


def test_torch_in_torch_out():
    torch = pytest.importorskip("torch")
    x = ref.make_gradients(10, 64, seed=4)
    t = torch.from_numpy(x).to(torch.bfloat16)
    got = flagcore.aggregate(t, "trimmed_mean", f=2)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bfloat16 and got.shape == (64,)
    want = ref.trimmed_mean_ref(t.float().numpy(), 2)
    np.testing.assert_allclose(got.float().numpy(), want, rtol=1e-2, atol=1e-2)


def test_torch_fallback_matches_native():
    """The plain-torch path (used for device tensors without the CUDA kernel) agrees with the
    native CPU kernel, exclusions included."""
    torch = pytest.importorskip("torch")
    from flagcore.rules.coordinate import RULE_IDS, _coordinate_torch

    x = np.stack([ref.make_gradients(11, 77, seed=s, dtype=np.float64) for s in range(2)])
    excl = np.zeros((2, 11), bool)
    excl[1, 3] = True
    for rule, rid in RULE_IDS.items():
        got = _coordinate_torch(torch.from_numpy(x), rid, 3, -1, excl).numpy()
        want, _ = core.coordinate(x, rid, 3, -1, excl.astype(np.uint8))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=rule)


@pytest.mark.cuda
@pytest.mark.parametrize("p", [3, 15, 16, 17, 33, 64])  # each register-sort width (4 .. 64)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cuda_matches_cpu(p, dtype):
    torch = pytest.importorskip("torch")
    if not flagcore.cuda_available():
        pytest.skip("no CUDA device or flagcore built without CUDA")
    assert flagcore._core.coordinate_cuda_max_p == 64
    x = np.stack([ref.make_gradients(p, 5003, seed=s) for s in range(2)]).astype(dtype)
    x[1, p - 2, 7] = np.nan
    x[0, 0, 11] = -np.inf
    t = torch.from_numpy(x).cuda()
    f = (p - 1) // 3
    tol = 2e-6 if dtype == np.float32 else 1e-12
    for rule in REFS:
        kw = {} if rule in ("mean", "median") else {"f": f}
        got, info = flagcore.aggregate(t, rule, return_info=True, **kw)
        want, winfo = flagcore.aggregate(x, rule, return_info=True, **kw)
        np.testing.assert_allclose(got.cpu().numpy(), want, rtol=tol, atol=tol, err_msg=rule)
        np.testing.assert_array_equal(info.excluded, winfo.excluded)


@pytest.mark.parametrize(
    "rule,kw",
    [
        ("mean", {}),
        ("median", {}),
        ("trimmed_mean", {"f": 1}),
        ("meamed", {"f": 1}),
        ("phocas", {"f": 1}),
    ],
)
@pytest.mark.parametrize("p", [4, 5, 40])  # sorting network and std::sort paths
def test_float64_near_max_does_not_overflow(rule, kw, p):
    # Sums of values near DBL_MAX overflow; the rules' results (means of such values) do not.
    big = np.finfo(np.float64).max
    x = np.full((p, 9), 0.9 * big)
    x[1::2] = 0.7 * big
    x[0, :3] = -0.8 * big  # mixed signs: centre-to-value distances overflow too
    got = flagcore.aggregate(x, rule, **kw)
    want = {"mean": ref.mean_ref, "median": ref.median_ref}.get(rule)
    with np.errstate(over="ignore"):
        scaled = x / 64  # the references on scaled data (exact: a power of 2), scaled back
        want = (want(scaled) if want else getattr(ref, f"{rule}_ref")(scaled, 1)) * 64
    assert np.all(np.isfinite(got)), got
    np.testing.assert_allclose(got, want, rtol=1e-12)


# ---------------------------------------------------------------- exact means (issue 14)
def test_mean_sums_then_divides_hand_case():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert flagcore.aggregate(x, "mean").tolist() == [4.0, 5.0, 6.0]
    assert flagcore.aggregate(x.T, "mean").tolist() == [2.0, 5.0, 8.0]
    assert flagcore.aggregate(x, "trimmed_mean", f=0).tolist() == [4.0, 5.0, 6.0]
    assert flagcore.aggregate(x, "multi_krum", f=0, m=3).tolist() == [4.0, 5.0, 6.0]
    assert flagcore.aggregate(list(x), "mean").tolist() == [4.0, 5.0, 6.0]


@pytest.mark.parametrize("seed", range(12))
def test_means_equal_numpy_bit_for_bit(seed):
    """float64 input: flagcore adds the rows in order and divides, as numpy's mean(axis=0)
    does, so the results are identical bit for bit; float32 input: the same in float64, then
    one rounding (numpy's float64 mean of the upcast rows, rounded)."""
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 80))
    n = int(rng.integers(1, 300))
    scale = 10.0 ** rng.integers(-5, 6)
    x = scale * rng.standard_normal((p, n))
    x[:, : n // 3] = np.round(x[:, : n // 3], 1)  # decimal-looking values, where 1/p-first errs
    f = int(rng.integers(0, (p + 1) // 2))
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        x64 = xd.astype(np.float64)
        want = {
            "mean": x64.mean(axis=0),
            "trimmed_mean": np.sort(x64, axis=0)[f : p - f].mean(axis=0),
        }
        for rule, w in want.items():
            got = flagcore.aggregate(xd, rule, f=f if rule != "mean" else 0)
            np.testing.assert_array_equal(got, w.astype(dtype), err_msg=f"{rule} {dtype.__name__}")
        got = flagcore.aggregate(np.stack([xd, xd[::-1]]), "mean")
        np.testing.assert_array_equal(got[0], want["mean"].astype(dtype))
        np.testing.assert_array_equal(got[1], x64[::-1].mean(axis=0).astype(dtype))
    if p >= 3:
        fk = (p - 3) // 2
        got, info = flagcore.aggregate(x, "multi_krum", f=fk, return_info=True)
        np.testing.assert_array_equal(got, x[info.selected].mean(axis=0))


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512"])
def test_mean_of_negative_zeros_has_numpy_sign(level):
    # numpy's add.reduce starts from +0.0, so a column of -0.0 has mean +0.0 (compared as bits:
    # assert_array_equal takes -0.0 == +0.0); p = 1, 3, 9 run the 1-, 4- and 8-row groups.
    supported = flagcore.build_info()["simd_supported"]
    missing = {"avx512": supported != "avx512", "avx2": supported == "generic", "generic": False}
    if missing[level]:
        pytest.skip(f"this CPU has no {level}")
    try:
        core.set_simd_level(level)
        for p in (1, 3, 9, 33):
            for dtype, bits in ((np.float64, np.uint64), (np.float32, np.uint32)):
                x = np.full((p, 40), -0.0, dtype)
                x[:, 20:] = np.arange(20, dtype=dtype) - 7
                want = x.astype(np.float64).mean(axis=0).astype(dtype)
                got = flagcore.aggregate(x, "mean")
                msg = f"p={p} {dtype}"
                np.testing.assert_array_equal(got.view(bits), want.view(bits), err_msg=msg)
    finally:
        core.set_simd_level("auto")


@pytest.mark.parametrize("seed", range(4))
def test_closest_means_within_an_ulp_class(seed):
    """MeaMed, Phocas and Bulyan's final step average a window of sorted values in value order
    (the reference orders by distance), so they agree to a few ulps rather than bit for bit."""
    rng = np.random.default_rng(100 + seed)
    p, n, f = 9 + 4 * seed, 200, 2 + seed
    x = rng.standard_normal((p, n))
    for rule in ("meamed", "phocas"):
        got = flagcore.aggregate(x, rule, f=f)
        np.testing.assert_allclose(got, REFS[rule](x, f), rtol=4e-16 * p, atol=4e-16 * p)
