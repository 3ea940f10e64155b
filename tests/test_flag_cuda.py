"""The CUDA path of the Flag Aggregator, and what of it runs without a GPU.

CPU-runnable: the ragged/layers API (native CPU), the IRLS run by a team of CPU threads with a
barrier the way a CUDA block runs it (bitwise equal to the serial run), the workspace plan, and
clean refusals of the CUDA entry points. GPU tests (marked cuda) compare the kernels with the
CPU path and the float64 reference for float32/float16/bfloat16, batched and unbatched,
p in {2, 7, 15, 64, 128}; they skip, with the reason shown, where there is no GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

import flagcore
from conftest import make_gradients, require_torch
from flagcore import _core
from flagcore._backend import cuda_array
from flagcore._reference import flag_aggregate_reference as reference

INFO_KEYS = (
    "coefficients",
    "weights",
    "reconstruction_ratios",
    "objective",
    "excluded",
    "iterations",
    "last_step_rejected",
    "rank",
)


def _rel(a, b, data_scale=0.0):
    """max |a - b| / max |b|. data_scale (max |x| of the inputs) floors the denominator at
    1e-6 of it: an aggregate that small is rounding noise of a cancelling combination (p = 2,
    one honest and one Byzantine worker: FA's coefficients are ~1e-16, CPU and GPU agree on
    ~0 but not on its noise)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6 * data_scale, 1e-300))


def _assert_info_equal(a: dict, b: dict):
    for k in INFO_KEYS:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


# ---------------------------------------------------------------- layers API (CPU)


def _layers(seed=0, dtype=np.float64, ps=(7, 7, 7, 7), ns=(1, 300, 5000, 33)):
    return [
        make_gradients(p, n, byzantine=1 if p > 3 else 0, seed=seed + i, dtype=dtype)
        for i, (p, n) in enumerate(zip(ps, ns))
    ]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "lam,max_iter,scale", [(0.0, 1, "paper"), (0.5, 4, "paper"), (0.0, 3, "median_norm")]
)
def test_layers_equal_per_layer_calls(dtype, lam, max_iter, scale):
    layers = _layers(dtype=dtype, ps=(7, 9, 7, 12), ns=(1, 300, 40_000, 33))
    outs, infos = flagcore.flag_aggregate_layers(
        layers, r=3, lam=lam, max_iter=max_iter, scale=scale, return_info=True
    )
    assert len(outs) == len(layers) == len(infos)
    for x, out, info in zip(layers, outs, infos):
        exp, ei = flagcore.flag_aggregate(
            x, r=3, lam=lam, max_iter=max_iter, scale=scale, return_info=True
        )
        assert out.dtype == dtype and out.shape == (x.shape[1],)
        np.testing.assert_array_equal(out, exp)  # same native code per problem: bitwise
        np.testing.assert_array_equal(info.objective, ei.objective)
        np.testing.assert_array_equal(info.weights, ei.weights)
        np.testing.assert_array_equal(info.coefficients, ei.coefficients)
        assert info.iterations == ei.iterations and info.rank == ei.rank
        assert info.last_step_rejected == ei.last_step_rejected


def test_layers_match_float64_reference_and_restore_shapes():
    rng = np.random.default_rng(3)
    shapes = [(4, 3, 3), (16,), (2, 5)]
    layers = [rng.standard_normal((6,) + s) for s in shapes]
    layers[1][2] = np.nan  # excluded in that layer only
    outs = flagcore.flag_aggregate_layers(layers, r=2, max_iter=3)
    for x, out, s in zip(layers, outs, shapes):
        assert out.shape == s
        ref = reference(x.reshape(6, -1), 2, 0.0, 3)
        np.testing.assert_allclose(out.reshape(-1), ref["aggregate"], rtol=1e-9, atol=1e-12)
    # a layer given as a list of per-worker arrays
    lst = [layers[0][i] for i in range(6)]
    out_list = flagcore.flag_aggregate_layers([lst, layers[2]], r=2, max_iter=3)
    np.testing.assert_array_equal(out_list[0], outs[0])


def test_layers_torch_inputs_and_half_precision():
    torch = require_torch()
    layers = _layers(seed=5)
    for dt, tol in [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)]:
        ts = [torch.from_numpy(x).to(dt) for x in layers]
        outs = flagcore.flag_aggregate_layers(ts, r=3, max_iter=2)
        for t, out in zip(ts, outs):
            assert isinstance(out, torch.Tensor) and out.dtype == dt and out.shape == (t.shape[1],)
            exp = flagcore.flag_aggregate(t.double().numpy(), r=3, max_iter=2)
            assert _rel(out.double().numpy(), exp) < tol


def test_layers_different_p_and_default_r():
    layers = _layers(ps=(3, 8, 5), ns=(50, 60, 70), seed=9)
    outs, infos = flagcore.flag_aggregate_layers(
        layers, return_info=True
    )  # r = (p_l + 1) // 2 per layer
    for x, out, info in zip(layers, outs, infos):
        np.testing.assert_array_equal(
            out, flagcore.flag_aggregate(x)
        )  # the same default r as flag_aggregate
        assert info.weights.shape == (x.shape[0],)
        assert info.rank == (x.shape[0] + 1) // 2
    explicit = flagcore.flag_aggregate_layers(layers, r=2)  # an explicit r applies to every layer
    for x, out in zip(layers, explicit):
        np.testing.assert_array_equal(out, flagcore.flag_aggregate(x, r=2))
    with pytest.raises(ValueError, match="r must be"):
        flagcore.flag_aggregate_layers(layers, r=4)  # above the smallest p (3)


LAYER_BAD = [
    (
        lambda: flagcore.flag_aggregate_layers(np.zeros((3, 4))),
        TypeError,
        "layers must be a list or tuple",
    ),
    (lambda: flagcore.flag_aggregate_layers([]), ValueError, "at least one layer"),
    (
        lambda: flagcore.flag_aggregate_layers([np.zeros(4)]),
        ValueError,
        r"layers\[0\] must be \(p, \.\.\.\)",
    ),
    (
        lambda: flagcore.flag_aggregate_layers([np.zeros((3, 4)), np.zeros((3, 4), np.float32)]),
        TypeError,
        r"layers\[1\] has dtype float32",
    ),
    (lambda: flagcore.flag_aggregate_layers([np.zeros((3, 4)), "x"]), TypeError, r"layers\[1\]"),
    (
        lambda: flagcore.flag_aggregate_layers([np.zeros((3, 4)), np.zeros((2, 4))], r=3),
        ValueError,
        r"r must be in \[1, 2\], got 3",
    ),
    (
        lambda: flagcore.flag_aggregate_layers([np.zeros((3, 4), np.int32)]),
        TypeError,
        "floating dtype",
    ),
]


@pytest.mark.parametrize("call,exc,match", LAYER_BAD, ids=[str(i) for i in range(len(LAYER_BAD))])
def test_layers_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------- the IRLS as a team (CPU)


def _grams(p, b=3, seed=0, n=200):
    gs = []
    for q in range(b):
        x = make_gradients(p, n, byzantine=min(2, p - 1), seed=seed + q)
        if q == 1 and p > 2:
            x[1] = x[0] * 3.0  # rank deficient
            x[p - 1, 5] = np.nan  # excluded worker
        with np.errstate(invalid="ignore"):
            gs.append(x @ x.T)
    return np.stack(gs)


@pytest.mark.parametrize(
    "p", [1, 2, 7, 15, 32]
)  # the Jacobi range (kJacobiMaxP = 32); above, host LAPACK
@pytest.mark.parametrize("threads", [2, 5, 16])
def test_team_emulation_equals_serial_bitwise(p, threads):
    g = _grams(p, seed=p)
    for lam, max_iter, scale in [(0.0, 3, "paper"), (0.7, 4, "median_norm")]:
        r = max(1, p // 2)
        prm = _core.FlagParams(r=r, lam=lam, max_iter=max_iter, scale=scale)
        serial = _core.flag_irls(g, prm)
        team = _core.flag_irls(g, prm, threads)
        _assert_info_equal(team, serial)


# ---------------------------------------------------------------- plan and refusals (CPU)


def test_cuda_plan_layout():
    ps, ns = [7, 15, 3, 128], [0, 100_000, 32768, 70_000]
    pl = _core.flag_cuda_plan(ps, ns, 5)
    meta = pl["meta"]
    parts = [max(1, -(-n // 32768)) for n in ns]
    assert meta.shape == (4, 7)
    np.testing.assert_array_equal(meta[:, 0], ps)
    np.testing.assert_array_equal(meta[:, 1], ns)
    np.testing.assert_array_equal(meta[:, 2], np.concatenate([[0], np.cumsum(ps)[:-1]]))
    np.testing.assert_array_equal(meta[:, 3], np.concatenate([[0], np.cumsum(np.square(ps))[:-1]]))
    np.testing.assert_array_equal(meta[:, 4], np.concatenate([[0], np.cumsum(parts)[:-1]]))
    tri = [p * (p + 1) // 2 * k for p, k in zip(ps, parts)]
    np.testing.assert_array_equal(meta[:, 5], np.concatenate([[0], np.cumsum(tri)[:-1]]))
    np.testing.assert_array_equal(meta[:, 6], np.concatenate([[0], np.cumsum(ns)[:-1]]))
    assert (
        pl["rows"] == sum(ps)
        and pl["parts"] == sum(parts)
        and pl["p_max"] == 128
        and pl["p_min"] == 3
    )
    # p = 128 > 32: the IRLS runs on the host (LAPACK), no device scratch
    assert pl["irls_on_host"] is True and pl["irls_smem"] is False and pl["irls_ws_each"] == 0
    # regions in order, 256-byte aligned, non-overlapping, inside the buffer
    keys = [
        "off_gram",
        "off_partials",
        "off_irls",
        "off_coef",
        "off_weights",
        "off_ratios",
        "off_objective",
        "off_iterations",
        "off_rank",
        "off_excluded",
        "off_rejected",
    ]
    sizes = [
        pl["gram"] * 8,
        pl["partials"] * 8,
        pl["b"] * pl["irls_ws_each"] * 8,
        pl["rows"] * 8,
        pl["rows"] * 8,
        pl["rows"] * 8,
        pl["b"] * 6 * 8,
        pl["b"] * 4,
        pl["b"] * 4,
        pl["rows"],
        pl["b"],
    ]
    for i, (k, size) in enumerate(zip(keys, sizes)):
        assert pl[k] % 256 == 0
        end = pl[keys[i + 1]] if i + 1 < len(keys) else pl["bytes"]
        assert pl[k] + size <= end
    uni = _core.flag_cuda_plan_uniform(4, 15, 25_600_000, 1)
    assert uni["irls_smem"] is True and uni["parts"] == 4 * 782
    small = _core.flag_cuda_plan([32], [10], 1)  # the Jacobi block, scratch in shared memory
    assert (
        small["irls_smem"] is True and small["irls_on_host"] is False and small["irls_ws_each"] > 0
    )
    big = _core.flag_cuda_plan([33], [10], 1)
    assert big["irls_on_host"] is True and big["irls_smem"] is False
    assert (
        _core.flag_cuda_plan_uniform(2, 8, 10, 10**6)["objective_steps"] == 1025
    )  # history capped on the GPU
    with pytest.raises(ValueError, match="p <= 6144"):
        _core.flag_cuda_plan_uniform(1, 6145, 10, 1)


def _dev(shape, dtype="float32", strides=None, device=0, data=1 << 20):
    """A CudaArray describing a dense array at a made-up address (never dereferenced: the
    checks below run before any device work)."""
    if strides is None:
        strides, k = [], 1
        for v in reversed(shape):
            strides.insert(0, k)
            k *= v
    return _core.CudaArray(
        data=data,
        dtype=getattr(_core.CudaDtype, dtype),
        shape=list(shape),
        strides=list(strides),
        device=device,
    )


def _ws(bytes_):
    return _dev([bytes_], "uint8")


def test_cuda_entry_points_refuse_cleanly_without_gpu():
    if flagcore.cuda_available():
        pytest.skip("a GPU is present: the cuda-marked tests cover these entry points")
    prm = _core.FlagParams(r=1)
    plan = _core.flag_cuda_plan_uniform(1, 3, 10, 1)
    with pytest.raises(RuntimeError, match=r"not compiled with GPU support|no CUDA device"):
        _core.flag_aggregate_cuda_uniform(
            _dev([1, 3, 10]), _dev([1, 10]), _ws(plan["bytes"]), prm, stream=0
        )
    ragged = _core.flag_cuda_plan([3], [10], 1)
    with pytest.raises(RuntimeError, match=r"not compiled with GPU support|no CUDA device"):
        _core.flag_aggregate_cuda_ragged(
            _dev([7 + 3], "int64"),
            _dev([10]),
            _ws(ragged["bytes"]),
            prm,
            ps=[3],
            ns=[10],
            aligned16=True,
            stream=0,
        )
    empty = _core.flag_cuda_plan_uniform(2, 3, 0, 1)  # n = 0: torch's strides of empty arrays
    with pytest.raises(RuntimeError, match=r"not compiled with GPU support|no CUDA device"):
        _core.flag_aggregate_cuda_uniform(
            _dev([2, 3, 0], strides=[0, 0, 1]),
            _dev([2, 0], strides=[1, 1]),
            _ws(empty["bytes"]),
            prm,
            stream=0,
        )
    irls = _core.flag_cuda_plan_uniform(1, 3, 0, 1)
    with pytest.raises(RuntimeError, match=r"not compiled with GPU support|no CUDA device"):
        _core.flag_irls_cuda(_dev([1, 3, 3], "float64"), _ws(irls["bytes"]), prm, stream=0)
    with pytest.raises(RuntimeError, match=r"not compiled with GPU support|no CUDA device"):
        _core.coordinate_cuda(
            _dev([1, 3, 10]),
            _dev([1, 10]),
            _dev([1], "int64"),
            _dev([1, 3], "int32"),
            rule=_core.CoordRule.median,
            f=0,
            keep=-1,
            stream=0,
        )
    from flagcore.flag import _require_native_cuda

    with pytest.raises(
        RuntimeError, match=r"flag_aggregate: .*(not compiled with GPU support|no CUDA device)"
    ):
        _require_native_cuda("flag_aggregate")


def test_cuda_entry_points_check_their_arrays_before_any_device_work():
    """The bound CudaArray arguments are checked (dtype, shape, device, density, workspace size,
    enum values) on the host in every build, with messages naming the function and argument."""
    prm = _core.FlagParams(r=1)
    plan = _core.flag_cuda_plan_uniform(2, 3, 10, 1)
    x, out, ws = _dev([2, 3, 10]), _dev([2, 10]), _ws(plan["bytes"])
    fn = _core.flag_aggregate_cuda_uniform
    cases = [
        ((_dev([3, 10]), out, ws), "x must be \\(b, p, n\\), got \\(3, 10\\)"),
        (
            (_dev([2, 3, 10], "float64"), out, ws),
            "x must be float32, float16 or bfloat16, got float64",
        ),
        ((_dev([2, 3, 10], strides=[60, 20, 2]), out, ws), "x's last axis must be contiguous"),
        ((x, _dev([2, 10], "float16"), ws), "out must be float32, got float16"),
        ((x, _dev([2, 11]), ws), "out must be \\(2, 10\\), got \\(2, 11\\)"),
        ((x, _dev([2, 10], device=1), ws), "out is on CUDA device 1, the data on 0"),
        ((x, _dev([2, 10], strides=[1, 2]), ws), "out must be contiguous"),
        ((x, out, _ws(plan["bytes"] - 1)), f"ws holds {plan['bytes'] - 1} bytes, the plan needs"),
        ((x, out, _dev([plan["bytes"]], "int64")), "ws must be a one-dimensional uint8 array"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match="flag_aggregate_cuda_uniform: " + msg):
            fn(*args, prm, stream=0)
    with pytest.raises(ValueError, match="kernel must be a GramKernel, got the value 9"):
        fn(x, out, ws, prm, stream=0, kernel=_core.GramKernel(9))
    with pytest.raises(TypeError):  # a bare int is not a GramKernel
        fn(x, out, ws, prm, stream=0, kernel=1)
    with pytest.raises(TypeError):  # nor an address a CudaArray
        fn(0, out, ws, prm, stream=0)
    with pytest.raises(ValueError, match=r"table must be \(11,\), got \(10,\)"):
        _core.flag_aggregate_cuda_ragged(
            _dev([10], "int64"), _dev([10]), ws, prm, ps=[4], ns=[10], aligned16=True, stream=0
        )
    with pytest.raises(ValueError, match="flag_irls_cuda: gram must be float64, got float32"):
        _core.flag_irls_cuda(_dev([1, 3, 3]), ws, prm, stream=0)
    with pytest.raises(ValueError, match="coordinate_cuda: flags must be int32, got uint8"):
        _core.coordinate_cuda(
            x,
            out,
            _dev([2], "int64"),
            _dev([2, 3], "uint8"),
            rule=_core.CoordRule.mean,
            f=0,
            keep=-1,
            stream=0,
        )
    with pytest.raises(ValueError, match=r"at most 65535 problems per call \(one grid row each\)"):
        _core.coordinate_cuda(
            _dev([65536, 3, 10]),
            _dev([65536, 10]),
            _dev([65536], "int64"),
            _dev([65536, 3], "int32"),
            rule=_core.CoordRule.median,
            f=0,
            keep=-1,
            stream=0,
        )
    with pytest.raises(ValueError, match=r"coordinate_cuda: p must be in \[1, 64\], got 65"):
        _core.coordinate_cuda(
            _dev([1, 65, 10]),
            _dev([1, 10]),
            _dev([1], "int64"),
            _dev([1, 65], "int32"),
            rule=_core.CoordRule.median,
            f=0,
            keep=-1,
            stream=0,
        )


def test_cuda_array_describes_its_tensor():
    torch = require_torch()
    from flagcore._backend import cuda_dtype

    assert cuda_dtype(torch.bfloat16) == _core.CudaDtype.bfloat16
    assert cuda_dtype(torch.complex64) is None and cuda_dtype(np.float32) is None
    with pytest.raises(TypeError, match="cuda_array: t must be a CUDA tensor"):
        cuda_array(torch.zeros(3))
    with pytest.raises(ValueError, match=r"CudaArray: shape .* and strides .* differ in length"):
        _core.CudaArray(data=0, dtype=_core.CudaDtype.float32, shape=[2, 3], strides=[1], device=0)
    with pytest.raises(ValueError, match="CudaArray: dtype must be a CudaDtype, got the value 42"):
        _core.CudaArray(data=0, dtype=_core.CudaDtype(42), shape=[2], strides=[1], device=0)
    a = _dev([2, 3])
    assert (a.shape, a.strides, a.dtype, a.device) == ([2, 3], [3, 1], _core.CudaDtype.float32, 0)


# ---------------------------------------------------------------- GPU


def _cuda_torch():
    if not flagcore.cuda_available():
        reason = (
            "flagcore was built without CUDA"
            if not flagcore.build_info()["cuda_compiled"]
            else "no CUDA device visible"
        )
        pytest.skip(f"GPU test: {reason}")
    torch = require_torch()
    if not torch.cuda.is_available():
        pytest.skip("GPU test: this torch build has no CUDA")
    return torch


TOL = {
    "float32": 1e-4,
    "float16": 3e-3,
    "bfloat16": 2e-2,
}  # max |gpu - cpu| / max |cpu|, output rounding included


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("p", [2, 7, 15, 64, 128])
@pytest.mark.parametrize("batched", [False, True])
def test_gpu_matches_cpu_and_reference(dtype, p, batched):
    torch = _cuda_torch()
    dt = getattr(torch, dtype)
    n = 70_001  # three parts, a ragged tail
    b = 3 if batched else 1
    x = np.stack(
        [make_gradients(p, n, byzantine=max(1, p // 5), seed=p * 10 + q) for q in range(b)]
    )
    xt = torch.from_numpy(x).to(dt)
    x_rounded = xt.double().numpy()  # the values the GPU actually sees
    for lam, max_iter in [(0.0, 1), (0.5, 3)]:
        r = max(1, p // 2)
        arg = xt.cuda() if batched else xt[0].cuda()
        out, info = flagcore.flag_aggregate(arg, r=r, lam=lam, max_iter=max_iter, return_info=True)
        assert out.device.type == "cuda" and out.dtype == dt
        assert out.shape == ((b, n) if batched else (n,))
        got = out.double().cpu().numpy().reshape(b, n)
        cpu, cinfo = flagcore.flag_aggregate(
            x_rounded, r=r, lam=lam, max_iter=max_iter, return_info=True
        )
        cpu = cpu.reshape(b, n)
        scale = float(np.max(np.abs(x_rounded)))
        assert _rel(got, cpu, scale) < TOL[dtype], (lam, max_iter)
        w_gpu = np.asarray(info.weights).reshape(b, p)
        np.testing.assert_allclose(w_gpu, np.asarray(cinfo.weights).reshape(b, p), rtol=1e-3)
        assert np.array_equal(
            np.asarray(info.iterations).reshape(-1), np.asarray(cinfo.iterations).reshape(-1)
        )
        if (
            p <= 15 and max_iter == 1 and lam == 0.0
        ):  # the float64 SVD reference (small enough here)
            ref = reference(x_rounded[0], r, lam, max_iter)["aggregate"]
            assert _rel(got[0], ref, scale) < TOL[dtype]


@pytest.mark.cuda
@pytest.mark.parametrize("p", [1, 2, 7, 15, 44, 45, 128])
def test_gpu_irls_equals_cpu(p):
    """The same flag_irls source on a CUDA block and on one CPU thread: equal to rounding (bitwise
    on x86-64 hosts, where neither side fuses multiply-adds)."""
    torch = _cuda_torch()
    g = _grams(p, b=3, seed=p)
    for lam, max_iter, scale in [(0.0, 5, "paper"), (0.7, 4, "median_norm")]:
        r = max(1, p // 2)
        prm = _core.FlagParams(r=r, lam=lam, max_iter=max_iter, scale=scale)
        cpu = _core.flag_irls(g, prm)
        plan = _core.flag_cuda_plan_uniform(3, p, 0, max_iter)
        gd = torch.from_numpy(g).cuda()
        ws = torch.empty(plan["bytes"], dtype=torch.uint8, device="cuda")
        _core.flag_irls_cuda(
            cuda_array(gd), cuda_array(ws), prm, stream=torch.cuda.current_stream().cuda_stream
        )
        from flagcore.flag import _info_from_workspace

        gpu = _info_from_workspace(ws, plan, (3, p), (3,))
        for k in ("iterations", "rank", "excluded", "last_step_rejected"):
            np.testing.assert_array_equal(gpu[k], np.asarray(cpu[k]), err_msg=k)
        for k in ("coefficients", "weights", "reconstruction_ratios", "objective"):
            np.testing.assert_allclose(
                gpu[k], cpu[k], rtol=1e-11, atol=1e-300, equal_nan=True, err_msg=k
            )


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("p", [7, 15, 16])
def test_gpu_gram_kernels_agree_and_are_deterministic(dtype, p):
    """Every Gram kernel that takes p (registers: p <= 8; staged: p <= 16, aligned rows; tile
    pairs: any) gives the same FA to float32 rounding, and each gives the same bits twice."""
    torch = _cuda_torch()
    from flagcore.flag import _flag_aggregate_cuda

    K = _core.GramKernel
    # n: 3 parts, a tail that is not a whole stage (512 / 1024 columns), rows 16-byte aligned
    x = (
        torch.from_numpy(make_gradients(p, 70_008, byzantine=2, seed=p))
        .to(getattr(torch, dtype))
        .cuda()[None]
    )
    prm = _core.FlagParams(r=(p + 1) // 2, max_iter=3)
    kernels = [K.tile_pairs, K.staged, K.blocked, K.automatic] + ([K.registers] if p <= 8 else [])
    res = {}
    for k in kernels:
        a, d = _flag_aggregate_cuda(x, prm, True, kernel=k)
        a2, d2 = _flag_aggregate_cuda(x, prm, True, kernel=k)
        assert torch.equal(a, a2), k  # deterministic: no atomics, fixed reduction order
        np.testing.assert_array_equal(d["coefficients"], d2["coefficients"])
        res[k] = (a, d)
    ref_a, ref_d = res[K.tile_pairs]
    for k in kernels:
        np.testing.assert_allclose(
            res[k][1]["coefficients"], ref_d["coefficients"], rtol=1e-5, atol=1e-9, err_msg=str(k)
        )
        assert _rel(res[k][0].double().cpu().numpy(), ref_a.double().cpu().numpy()) < TOL[dtype]
    auto = K.registers if p <= 8 else K.staged  # automatic picks these on aligned rows
    assert torch.equal(res[K.automatic][0], res[auto][0])
    with pytest.raises(ValueError, match="staged Gram kernel takes p <= 16 with 16-byte aligned"):
        _flag_aggregate_cuda(x[:, :, 1:], prm, False, kernel=K.staged)  # unaligned rows
    with pytest.raises(ValueError, match=rf"r must be in \[1, {p}\]"):
        _flag_aggregate_cuda(x, _core.FlagParams(r=p + 1, max_iter=1), False)


def _pinned_fa_and_gram(torch, x, kernel, prm):
    """The uniform CUDA FA of x (b, p, n) with the Gram kernel pinned: (aggregates, the float64
    Gram matrices it left in its workspace as a (b, p, p) NumPy array, info dict)."""
    from flagcore.flag import _info_from_workspace

    b, p, n = x.shape
    plan = _core.flag_cuda_plan_uniform(b, p, n, prm.max_iter)
    out = torch.empty((b, n), dtype=x.dtype, device=x.device)
    ws = torch.empty(plan["bytes"], dtype=torch.uint8, device=x.device)
    _core.flag_aggregate_cuda_uniform(
        cuda_array(x),
        cuda_array(out),
        cuda_array(ws),
        prm,
        stream=torch.cuda.current_stream().cuda_stream,
        kernel=kernel,
    )
    off = plan["off_gram"]
    gram = ws[off : off + 8 * b * p * p].view(torch.float64).reshape(b, p, p).cpu().numpy()
    return out, gram, _info_from_workspace(ws, plan, (b, p), (b,))


def _gram_bound(x64, products=32):
    """Entry-wise bound on a Gram whose float32 products are summed in float32 over at most
    `products` columns and then in float64: (products + 2) u sum_k |x_ik x_jk| <= that times
    sqrt(G_ii G_jj) (Cauchy-Schwarz), u = 2^-24; plus the float64 part, negligible."""
    d = np.sqrt(np.einsum("bpn,bpn->bp", x64, x64))
    return (products + 2) * 2.0**-24 * d[:, :, None] * d[:, None, :] + 1e-300


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("p", [5, 40, 64, 65, 130, 300])
def test_gpu_blocked_gram_matches_float64(dtype, p):
    """The blocked kernel (64 x 64 tile pairs, slabs of 32 columns through shared memory, two
    groups of 256 threads on alternate slabs; any p): its Gram within the float32-then-float64
    bound of float64 NumPy on the same (rounded) data, for a partial single tile (p = 5, 40), one
    whole tile (64), a second tile row (65, 130) and 5 x 5 tiles (300); a batch of two; aligned
    and unaligned rows; three parts with a ragged last slab (n = 70007) or one part (p = 300);
    bitwise the same twice; its FA equal to the tile-pair kernel's to the data type's rounding."""
    torch = _cuda_torch()
    K = _core.GramKernel
    n = 70_007 if p <= 130 else 20_007
    xs = [make_gradients(p, n + 1, byzantine=max(1, p // 5), seed=p * 7 + q) for q in range(2)]
    x = torch.from_numpy(np.stack(xs)).to(getattr(torch, dtype)).cuda()  # rows of n + 1 = 8 k
    prm = _core.FlagParams(r=max(1, p // 2), max_iter=2)
    for view in (x[:, :, :n], x[:, :, 1:]):  # 16-byte aligned rows, then unaligned
        a, g, info = _pinned_fa_and_gram(torch, view, K.blocked, prm)
        a2, g2, _ = _pinned_fa_and_gram(torch, view, K.blocked, prm)
        assert torch.equal(a, a2) and np.array_equal(g, g2)  # deterministic
        x64 = view.double().cpu().numpy()
        exact = x64 @ x64.transpose(0, 2, 1)
        assert np.all(np.abs(g - exact) <= _gram_bound(x64)), np.max(np.abs(g - exact))
        np.testing.assert_array_equal(g, np.transpose(g, (0, 2, 1)))  # both triangles written
        at, gt, info_t = _pinned_fa_and_gram(torch, view, K.tile_pairs, prm)
        assert np.all(np.abs(g - gt) <= 2 * _gram_bound(x64))
        # IRLS weights react to the Gram's float32 rounding 10-100x more than the aggregate
        np.testing.assert_allclose(info["weights"], info_t["weights"], rtol=1e-3)
        assert _rel(a.double().cpu().numpy(), at.double().cpu().numpy()) < TOL[dtype]


@pytest.mark.cuda
def test_gpu_blocked_nonfinite_huge_and_ragged_layers():
    """The blocked kernel on a NaN worker (excluded), a float32 row whose products overflow (the
    float64 refinement recomputes it), and a ragged batch of layers (p = 70 and 130, one launch),
    against the CPU path in float64."""
    torch = _cuda_torch()
    from flagcore.flag import _flag_aggregate_cuda, _flag_aggregate_layers_cuda

    K = _core.GramKernel
    p = 70
    x = make_gradients(p, 50_001, seed=21).astype(np.float32)
    x[3, 17] = np.nan
    x[5] *= np.float32(1e25)  # squares ~1e50: float32 overflow
    prm = _core.FlagParams(r=20, max_iter=3)
    got, info = _flag_aggregate_cuda(torch.from_numpy(x).cuda()[None], prm, True, kernel=K.blocked)
    exp, cinfo = flagcore.flag_aggregate(x.astype(np.float64), r=20, max_iter=3, return_info=True)
    assert info["excluded"][0].tolist() == [i == 3 for i in range(p)]
    np.testing.assert_array_equal(info["excluded"][0], cinfo.excluded)
    assert _rel(got[0].double().cpu().numpy(), exp) < 1e-4
    # unaligned rows (scalar loads: some n odd), then every row 16-byte aligned (n % 4 == 0)
    for sizes in (
        ((70, 40_000), (70, 33), (130, 5000), (70, 70_001)),
        ((70, 40_000), (70, 36), (130, 5000), (70, 70_004)),
    ):
        layers = [
            torch.from_numpy(make_gradients(pq, nq, byzantine=3, seed=pq + nq).astype(np.float32))
            for pq, nq in sizes
        ]
        flat, _ = _flag_aggregate_layers_cuda(
            [t.cuda() for t in layers], _core.FlagParams(r=20, max_iter=2), False, kernel=K.blocked
        )
        outs = torch.split(flat, [t.shape[1] for t in layers])
        for t, out in zip(layers, outs):
            exp = flagcore.flag_aggregate(t.double().numpy(), r=20, max_iter=2)
            assert _rel(out.double().cpu().numpy(), exp) < 1e-4


@pytest.mark.cuda
def test_gpu_large_p_matches_cpu():
    """p = 2050: tri(p) / 32 upper-triangle chunks pass the 65535 limit of a grid's y dimension
    (the Gram reduction launched them there until this test's commit); the IRLS runs on the host."""
    torch = _cuda_torch()
    p, n = 2050, 3001
    x = np.random.default_rng(15).standard_normal((p, n)).astype(np.float32)
    got, info = flagcore.flag_aggregate(torch.from_numpy(x).cuda(), max_iter=1, return_info=True)
    exp, cinfo = flagcore.flag_aggregate(x.astype(np.float64), max_iter=1, return_info=True)
    assert _rel(got.double().cpu().numpy(), exp) < 1e-4
    np.testing.assert_allclose(info.weights, cinfo.weights, rtol=1e-3)


@pytest.mark.cuda
def test_gpu_nonfinite_and_huge_workers():
    torch = _cuda_torch()
    x = make_gradients(8, 50_000, seed=9).astype(np.float32)
    clean = flagcore.flag_aggregate(np.delete(x, 2, axis=0), r=4, max_iter=3)
    x[2, 17] = np.nan
    out, info = flagcore.flag_aggregate(
        torch.from_numpy(x).cuda(), r=4, max_iter=3, return_info=True
    )
    assert info.excluded.tolist() == [i == 2 for i in range(8)] and info.coefficients[2] == 0
    assert _rel(out.cpu().numpy(), clean) < 1e-4
    y = make_gradients(5, 40_000, seed=10).astype(np.float32)
    y[0] *= np.float32(1e25)  # float32 products overflow: the Gram row is recomputed in float64
    out, info = flagcore.flag_aggregate(torch.from_numpy(y).cuda(), r=2, return_info=True)
    assert not info.excluded.any()
    assert _rel(out.cpu().numpy(), reference(y.astype(np.float64), 2)["aggregate"]) < 1e-4


@pytest.mark.cuda
def test_gpu_unaligned_strided_and_empty():
    torch = _cuda_torch()
    base = torch.from_numpy(make_gradients(9, 40_003, seed=11).astype(np.float32)).cuda()
    for view in (base[:, 1:], base[:, 3:-2], base.t().contiguous().t(), base[::2]):
        got = flagcore.flag_aggregate(view, r=3, max_iter=2).cpu().numpy()
        exp = flagcore.flag_aggregate(view.cpu().double().numpy(), r=3, max_iter=2)
        assert _rel(got, exp) < 1e-4
    empty = flagcore.flag_aggregate(torch.zeros((4, 0), device="cuda"), r=2)
    assert empty.shape == (0,) and empty.device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_layers_match_per_layer_and_cpu(dtype):
    torch = _cuda_torch()
    dt = getattr(torch, dtype)
    ns = [1, 7, 64, 1000, 33_333, 70_001, 5]
    flat = torch.from_numpy(make_gradients(15, sum(ns), byzantine=3, seed=12)).to(dt).cuda()
    layers = list(torch.split(flat, ns, dim=1))  # strided views of one buffer, some unaligned
    outs, infos = flagcore.flag_aggregate_layers(layers, r=8, max_iter=3, return_info=True)
    for layer, out, info in zip(layers, outs, infos):
        single = flagcore.flag_aggregate(layer, r=8, max_iter=3)
        cpu = flagcore.flag_aggregate(layer.double().cpu().numpy(), r=8, max_iter=3)
        assert out.shape == (layer.shape[1],) and out.dtype == dt
        assert _rel(out.double().cpu().numpy(), single.double().cpu().numpy()) < TOL[dtype]
        assert _rel(out.double().cpu().numpy(), cpu) < TOL[dtype]
        assert info.weights.shape == (15,)


@pytest.mark.cuda
def test_gpu_runs_on_the_current_stream():
    torch = _cuda_torch()
    x = torch.from_numpy(
        make_gradients(15, 1_000_000, byzantine=3, seed=13).astype(np.float32)
    ).cuda()
    expected = flagcore.flag_aggregate(x, r=8, max_iter=2)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        y = x * 1.0  # produced on s: the FA call must be ordered after it on s
        got = flagcore.flag_aggregate(y, r=8, max_iter=2)
    s.synchronize()
    assert torch.equal(got, expected)


@pytest.mark.cuda
def test_gpu_float64_uses_the_torch_fallback():
    torch = _cuda_torch()
    x = make_gradients(6, 5000, seed=14)
    got = flagcore.flag_aggregate(torch.from_numpy(x).cuda(), r=3, max_iter=2)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(
        got.cpu().numpy(), flagcore.flag_aggregate(x, r=3, max_iter=2), rtol=1e-9, atol=1e-13
    )


def test_info_decoding_from_a_workspace_buffer():
    """The Python side of the CUDA path reads the IRLS outputs at the plan's offsets; check the
    decoding on a CPU buffer filled by hand."""
    torch = require_torch()
    from flagcore.flag import _info_from_workspace, _native_cuda_ok

    b, p, it = 2, 3, 4
    pl = _core.flag_cuda_plan_uniform(b, p, 10, it)
    ws = np.zeros(pl["bytes"], np.uint8)

    def put(key, arr):
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        ws[pl[key] : pl[key] + raw.size] = raw

    coef = np.arange(b * p, dtype=np.float64) + 0.5
    put("off_coef", coef)
    put("off_weights", coef * 2)
    put("off_ratios", coef / 10)
    put("off_objective", np.arange(b * (it + 1), dtype=np.float64))
    put("off_iterations", np.array([3, 1], np.int32))
    put("off_rank", np.array([2, 1], np.int32))
    put("off_excluded", np.array([0, 1, 0, 0, 0, 1], np.uint8))
    put("off_rejected", np.array([1, 0], np.uint8))
    d = _info_from_workspace(torch.from_numpy(ws), pl, (b, p), (b,))
    np.testing.assert_array_equal(d["coefficients"], coef.reshape(b, p))
    np.testing.assert_array_equal(d["weights"], 2 * coef.reshape(b, p))
    # trimmed to 1 + the most steps taken (3), as the CPU functions return it
    np.testing.assert_array_equal(d["objective"], np.arange(b * (it + 1)).reshape(b, it + 1)[:, :4])
    assert d["iterations"].tolist() == [3, 1] and d["rank"].tolist() == [2, 1]
    assert d["excluded"].tolist() == [[False, True, False], [False, False, True]]
    assert d["last_step_rejected"].tolist() == [True, False]
    info = flagcore.FlagInfo._from_native(d, True)
    assert info.iterations.tolist() == [3, 1]
    assert _native_cuda_ok(torch.zeros(3)) is False  # CPU tensors never take the CUDA path
