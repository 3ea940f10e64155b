"""The Flag Aggregator (Almasi et al., ICLR 2024), computed in p-space.

See ``flag_aggregate`` and docs/spec_fa.md for the math. The native CPU path reads the
gradients twice (one Gram pass, one weighted-sum pass) and does the IRLS on p x p matrices in
float64. CUDA tensors of float32/float16/bfloat16 go to flagcore's CUDA kernels when this build
has them and a GPU is visible (csrc/flag/flag_cuda.hpp: Gram, IRLS in one block per problem,
weighted sum, all on torch's current stream, no host synchronisation unless return_info asks
for the diagnostics). Other device tensors (float64 on CUDA, other devices, or a build without
CUDA) use the same p-space algorithm with torch matmuls for the two passes and the native IRLS
on the host.

``flag_aggregate_layers`` takes a list of per-layer stacks of different sizes and aggregates
each layer as its own problem in one native call (one launch sequence on the GPU).
"""

from __future__ import annotations

import collections
import functools
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import Stack, as_stack, check_choice, check_float, check_int
from ._backend import core, cuda_array, cuda_available, cuda_dtype, get_num_threads
from ._memory import check_memory, flag_need

SCALES = ("paper", "median_norm")
# Largest lam accepted (kFlagMaxLam in csrc/flag/flag_irls.hpp): the pair weights carry
# mu^2 = (lam / (p (p - 1)))^2, which overflows float64 above ~1e155 and would turn every
# weight to Inf (an all-zero aggregate); refused rather than silently wrong.
MAX_LAM = 1e150


@dataclass(frozen=True)
class FlagInfo:
    """Diagnostics of one flag_aggregate call.

    For a (p, n) or list input each field is per worker (p,) or a scalar; for a (b, p, n) input
    each gains a leading batch axis b, and ``objective`` is (b, 1 + the most steps any problem
    took) padded with NaN after each problem's last step (on the native CUDA path: (b,
    min(max_iter, 1024) + 1), the first 1024 steps).

    weights: IRLS weights (|1 - v_i| + eps)^(-1/2) at the final subspace (what a further
        iteration would use); 0 for excluded workers. Large means trusted.
    reconstruction_ratios: v_i = ||Y^T x_i||^2 in [0, 1]: 1 when worker i lies in the subspace.
    coefficients: c_i with aggregate = sum_i c_i g_i on the raw gradients.
    objective: F at the start (all v_i = 0), then after every step taken.
    iterations: steps taken (eigen-solves), rejected ones included.
    last_step_rejected: the last step increased F and was discarded.
    excluded: workers whose gradient holds NaN or Inf (or whose squared norm overflows
        float64); they get weight 0 and do not enter the aggregate.
    rank: dimension of the subspace actually used (min(r, rank of the weighted Gram)).
    """

    weights: np.ndarray
    reconstruction_ratios: np.ndarray
    coefficients: np.ndarray
    objective: np.ndarray
    iterations: Any
    last_step_rejected: Any
    excluded: np.ndarray
    rank: Any

    @classmethod
    def _from_native(cls, d: dict[str, Any], batched: bool) -> FlagInfo:
        if batched:
            return cls(
                weights=d["weights"],
                reconstruction_ratios=d["reconstruction_ratios"],
                coefficients=d["coefficients"],
                objective=d["objective"],
                iterations=d["iterations"].astype(np.int64),
                last_step_rejected=d["last_step_rejected"],
                excluded=d["excluded"],
                rank=d["rank"].astype(np.int64),
            )
        it = int(d["iterations"][0])
        return cls(
            weights=d["weights"][0],
            reconstruction_ratios=d["reconstruction_ratios"][0],
            coefficients=d["coefficients"][0],
            objective=d["objective"][0, : it + 1].copy(),
            iterations=it,
            last_step_rejected=bool(d["last_step_rejected"][0]),
            excluded=d["excluded"][0],
            rank=int(d["rank"][0]),
        )


def _check_params(
    fn: str,
    p: int,
    r: Any,
    lam: Any,
    max_iter: Any,
    eps: Any,
    tol: Any,
    scale: Any,
    return_info: Any,
) -> Any:
    """Validated parameters as one native ``FlagParams`` (messages name fn and the argument)."""
    r = (p + 1) // 2 if r is None else check_int(r, fn, "r", low=1, high=p)
    lam = check_float(lam, fn, "lam", low=0.0)
    if lam > MAX_LAM:
        raise ValueError(
            f"{fn}: lam must be <= {MAX_LAM:g} (mu^2 = (lam / (p (p - 1)))^2 would overflow "
            f"float64), got {lam!r}"
        )
    max_iter = check_int(max_iter, fn, "max_iter", low=1, high=1_000_000)
    eps = check_float(eps, fn, "eps", low=0.0, strict_low=True)
    tol = check_float(tol, fn, "tol", low=0.0)
    scale = check_choice(scale, fn, "scale", SCALES)
    if not isinstance(return_info, bool):
        raise TypeError(f"{fn}: return_info must be a bool, got {return_info!r}")
    return core.FlagParams(r=r, lam=lam, max_iter=max_iter, eps=eps, tol=tol, scale=scale)


def _with_r(prm: Any, r: int) -> Any:
    """The same parameters with another r (per-layer defaults)."""
    return core.FlagParams(
        r=r, lam=prm.lam, max_iter=prm.max_iter, eps=prm.eps, tol=prm.tol, scale=prm.scale
    )


def flag_aggregate(
    gradients: Any,
    *,
    r: int | None = None,
    lam: float = 0.0,
    max_iter: int = 1,
    eps: float = 1e-7,
    tol: float = 1e-10,
    scale: str = "paper",
    return_info: bool = False,
) -> Any:
    """Aggregate p gradients with the Flag Aggregator.

    Parameters
    ----------
    gradients : numpy array or torch tensor of shape (p, n), one row per worker, or (b, p, n)
        for b independent problems (one per layer, say); or a list/tuple of p arrays/tensors of
        one shape (flattened inside; the result has that shape). float32 and float64 are
        computed natively; float16/bfloat16 are computed in float32.
    r : subspace dimension, 1 <= r <= p; default (p + 1) // 2 (the paper used about p/2).
    lam : weight of the pairwise term, 0 <= lam <= 1e150; mu = lam / (p (p - 1)) enters squared
        (docs/spec_fa.md).
    max_iter : IRLS steps; 1 reproduces the paper's runs (uncentred PCA of the normalised
        gradients). Iteration stops early when the objective decreases by at most ``tol``; a
        step that increases it is discarded. Memory does not grow with max_iter: the objective
        history holds the steps actually taken.
    eps : IRLS weight regulariser, weights (|1 - v_i| + eps)^(-1/2).
    scale : "paper": (1/r) sum_i Y Y^T x_i over the normalised gradients x_i (norm at most p/r,
        carries no gradient magnitude). "median_norm": the same direction rescaled to the median
        norm of the finite workers' gradients, comparable to a plain mean of honest gradients so
        learning rates transfer between rules.
    return_info : also return a FlagInfo.

    Returns
    -------
    The aggregate, in the caller's framework, dtype and device: (n,), (b, n), or the shape of
    one gradient for list input; with return_info, (aggregate, FlagInfo). It is computed in
    float32/float64 and rounded once to that dtype; a value beyond the dtype's range (float16:
    65504, reachable from finite float16 input with scale="median_norm", whose direction can
    put the whole median norm on one coordinate) raises a ValueError instead of becoming Inf.

    Workers with NaN or Inf get weight 0 and are reported in ``info.excluded``; when every
    worker of a problem is excluded its aggregate is zero. Zero gradients are valid (they add
    nothing); p = 1 returns g / (r ||g||) (paper) or g (median_norm).

    Cost (docs/scaling.md): one Gram pass (p(p+1)/2 * n multiply-adds; register-tiled SIMD
    kernels up to p = 32-48, above them packed AVX-512 kernels, AMX tiles or packed AVX2 kernels
    (to p = 2048) for float32 and OpenBLAS otherwise), O(p^3) per IRLS step (above p = 32 a
    Householder tridiagonalisation, divide and conquer or MRRR for the top r pairs only and a
    blocked back-transformation; a Jacobi solver below), one weighted-sum pass.
    The result does not depend on the thread count, and Ctrl-C interrupts a long call.
    """
    fn = "flag_aggregate"
    st = as_stack(gradients, fn)
    prm = _check_params(fn, st.p, r, lam, max_iter, eps, tol, scale, return_info)
    native_cuda = not st.on_cpu and _native_cuda_ok(st.torch_data)
    if not native_cuda:  # the native CUDA path works in GPU memory, not the host's
        _check_flag_memory(fn, [st.p] * st.b, "problems")
    if st.on_cpu:
        out, d = core.flag_aggregate(st.data, prm)
    elif native_cuda:
        out, d = _flag_aggregate_cuda(st.torch_data, prm, return_info)
    else:
        out, d = _flag_aggregate_torch(st, prm)
    agg = st.restore(out)
    if return_info:
        return agg, FlagInfo._from_native(d, st.batched)
    return agg


def _check_flag_memory(fn: str, sizes: list[int], unit: str) -> None:
    """The host memory check (flagcore._memory) for FA over problems (a batch) or layers of
    these sizes."""
    p = max(sizes)
    what = f"the Flag Aggregator at p = {p}" + (
        f" on {len(sizes)} {unit}" if len(sizes) > 1 else ""
    )
    advice = f"aggregate fewer workers (or {unit}) per call, or use a machine with more memory"
    check_memory(fn, what, flag_need(sizes, get_num_threads()), advice)


def _flag_aggregate_torch(st: Stack, prm: Any) -> tuple[Any, dict[str, Any]]:
    """p-space FA for tensors on a non-CPU torch device: Gram and weighted sum with torch
    matmuls on the device, IRLS in the native float64 code on the host."""
    import torch

    x = st.torch_data  # (b, p, n)
    gram = torch_gram(x)
    d = core.flag_irls(gram.cpu().numpy(), prm)
    coef = torch.from_numpy(d["coefficients"]).to(x.device)
    return torch_weighted_sum(x, coef), d


def torch_gram(x: Any, chunk: int = 1 << 22) -> Any:
    """(b, p, n) tensor -> (b, p, p) float64 Gram matrices, in column chunks converted to
    float64 so memory stays bounded and sums are exact to float64 rounding."""
    import torch

    b, p, n = x.shape
    g = torch.zeros((b, p, p), dtype=torch.float64, device=x.device)
    step = max(1, chunk // max(1, b * p))
    for k0 in range(0, n, step):
        xc = x[:, :, k0 : k0 + step].to(torch.float64)
        g += xc @ xc.transpose(1, 2)
    return g


def torch_weighted_sum(x: Any, coef: Any) -> Any:
    """sum_i coef[q, i] x[q, i, :] in float64 (chunked), skipping rows whose coefficient is 0 so
    that NaN/Inf rows of excluded workers never enter the sum. Returns float64 (b, n)."""
    import torch

    b, _p, n = x.shape
    out = torch.zeros((b, n), dtype=torch.float64, device=x.device)
    for q in range(b):
        keep = torch.nonzero(coef[q] != 0).flatten()
        if keep.numel() == 0:
            continue
        rows = x[q].index_select(0, keep)
        c = coef[q].index_select(0, keep)
        out[q] = (c[None, :] @ rows.to(torch.float64))[0]
    return out


# ---------------------------------------------------------------- CUDA path


def _cuda_dtype_code(dtype: Any) -> Any:
    """The CudaDtype of a torch dtype the FA's CUDA kernels take (float32/16, bfloat16), or None."""
    code = cuda_dtype(dtype)
    return code if code in _FA_CUDA_DTYPES else None


_FA_CUDA_DTYPES = (core.CudaDtype.float32, core.CudaDtype.float16, core.CudaDtype.bfloat16)


@functools.lru_cache(maxsize=1)
def _cuda_built_and_visible() -> bool:
    return cuda_available()  # the device count does not change within a process


def _native_cuda_ok(x: Any) -> bool:
    """flagcore's CUDA kernels take this tensor: on a CUDA device, float32/16/bfloat16, and the
    build has CUDA with a visible device."""
    return (
        x.device.type == "cuda"
        and _cuda_dtype_code(x.dtype) is not None
        and _cuda_built_and_visible()
    )


def _require_native_cuda(fn: str) -> None:
    if not core.build_info()["cuda_compiled"]:
        raise RuntimeError(
            f"{fn}: flagcore was not compiled with GPU support (FLAGCORE_CUDA=OFF or no nvcc "
            "at build time)"
        )
    if core.cuda_device_count() <= 0:
        raise RuntimeError(f"{fn}: no CUDA device is visible")


def _info_from_workspace(
    ws: Any, plan: dict[str, Any], per_worker: tuple[int, ...], per_problem: tuple[int, ...]
) -> dict[str, Any]:
    """Copies the IRLS outputs out of the workspace (one device-to-host copy, which waits for
    the kernels) into the dict layout of the native CPU functions."""
    base = plan["off_coef"]
    host = ws[base : plan["bytes"]].cpu().numpy()
    rows, b, steps = plan["rows"], plan["b"], plan["objective_steps"]

    def take(key: str, dtype: Any, count: int) -> np.ndarray:
        off = plan[key] - base
        return np.frombuffer(
            host[off : off + count * np.dtype(dtype).itemsize].tobytes(), dtype=dtype
        ).copy()

    iterations = take("off_iterations", np.int32, b)
    # The workspace holds room for every step the plan allows (NaN-padded); the CPU functions
    # return 1 + the most steps any problem took, and so does this.
    taken = min(steps, 1 + int(iterations.max(initial=0)))
    return {
        "coefficients": take("off_coef", np.float64, rows).reshape(per_worker),
        "weights": take("off_weights", np.float64, rows).reshape(per_worker),
        "reconstruction_ratios": take("off_ratios", np.float64, rows).reshape(per_worker),
        "objective": take("off_objective", np.float64, b * steps)
        .reshape(b, steps)[:, :taken]
        .copy(),
        "excluded": take("off_excluded", np.uint8, rows).astype(bool).reshape(per_worker),
        "iterations": iterations.reshape(per_problem),
        "last_step_rejected": take("off_rejected", np.uint8, b).astype(bool).reshape(per_problem),
        "rank": take("off_rank", np.int32, b).reshape(per_problem),
    }


def _flag_aggregate_cuda(
    x: Any, prm: Any, return_info: bool, kernel: Any = core.GramKernel.automatic
) -> tuple[Any, dict[str, Any] | None]:
    """(b, p, n) CUDA tensor -> ((b, n) tensor in x's dtype, info dict or None), on torch's
    current stream of x's device. kernel (tests): a core.GramKernel, automatic or one pinned."""
    import torch

    _require_native_cuda("flag_aggregate")
    if x.shape[2] > 1 and x.stride(2) != 1:
        x = x.contiguous()
    b, p, n = x.shape
    plan = core.flag_cuda_plan_uniform(b, p, n, prm.max_iter)
    dev = x.device
    out = torch.empty((b, n), dtype=x.dtype, device=dev)
    ws = torch.empty(plan["bytes"], dtype=torch.uint8, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        core.flag_aggregate_cuda_uniform(
            cuda_array(x), cuda_array(out), cuda_array(ws), prm, stream=stream, kernel=kernel
        )
    d = _info_from_workspace(ws, plan, (b, p), (b,)) if return_info else None
    return out, d


_LAYER_TABLES: collections.OrderedDict[tuple[Any, ...], tuple[Any, ...]] = collections.OrderedDict()
_LAYER_TABLES_LOCK = threading.Lock()  # calls from several Python threads share the cache


def _flag_aggregate_layers_cuda(
    xs: list[Any], prm: Any, return_info: bool, kernel: Any = core.GramKernel.automatic
) -> tuple[Any, dict[str, Any] | None]:
    """List of (p_q, n_q) CUDA tensors of one dtype -> (flat [sum n] tensor, info dict or None)."""
    import torch

    _require_native_cuda("flag_aggregate_layers")
    xs = [x if (x.shape[1] <= 1 or x.stride(1) == 1) else x.contiguous() for x in xs]
    ps = [int(x.shape[0]) for x in xs]
    ns = [int(x.shape[1]) for x in xs]
    dev = xs[0].device
    item = xs[0].element_size()
    # The device table depends only on the sizes and the row addresses: reuse it while the same
    # tensors come back (a training loop's gradient buffers), saving the host work and the copy.
    key = (
        str(dev),
        item,
        prm.max_iter,
        tuple((x.data_ptr(), x.stride(0), p, n) for x, p, n in zip(xs, ps, ns)),
    )
    with _LAYER_TABLES_LOCK:
        hit = _LAYER_TABLES.get(key)
        if hit is None:
            plan = core.flag_cuda_plan(ps, ns, prm.max_iter)
            addrs = np.concatenate(
                [
                    x.data_ptr() + np.arange(x.shape[0], dtype=np.int64) * (x.stride(0) * item)
                    for x in xs
                ]
            )
            aligned = bool(np.all(addrs % 16 == 0))
            table = np.concatenate([plan["meta"].reshape(-1), addrs.astype(np.int64)])
            with torch.cuda.device(dev):
                table_dev = torch.from_numpy(table).pin_memory().to(dev, non_blocking=True)
                event_cls: Any = torch.cuda.Event  # untyped constructor in torch's stubs
                ready = event_cls()
                ready.record()  # later calls on other streams wait for the copy
            hit = (plan, aligned, table_dev, ready)
            _LAYER_TABLES[key] = hit
            while len(_LAYER_TABLES) > 8:
                _LAYER_TABLES.popitem(last=False)
        else:
            _LAYER_TABLES.move_to_end(key)
    plan, aligned, table_dev, ready = hit
    out = torch.empty(sum(ns), dtype=xs[0].dtype, device=dev)
    ws = torch.empty(plan["bytes"], dtype=torch.uint8, device=dev)
    with torch.cuda.device(dev):
        current = torch.cuda.current_stream(dev)
        current.wait_event(ready)
        table_dev.record_stream(current)  # not reused by the allocator before this stream is done
        stream = current.cuda_stream
        core.flag_aggregate_cuda_ragged(
            cuda_array(table_dev),
            cuda_array(out),
            cuda_array(ws),
            prm,
            ps=ps,
            ns=ns,
            aligned16=aligned,
            stream=stream,
            kernel=kernel,
        )
    d = _info_from_workspace(ws, plan, (plan["rows"],), (plan["b"],)) if return_info else None
    return out, d


# ---------------------------------------------------------------- layers (ragged batches)


def flag_aggregate_layers(
    layers: Any,
    *,
    r: int | None = None,
    lam: float = 0.0,
    max_iter: int = 1,
    eps: float = 1e-7,
    tol: float = 1e-10,
    scale: str = "paper",
    return_info: bool = False,
) -> Any:
    """Aggregate each layer of a model as its own FA problem, all in one native call.

    Parameters
    ----------
    layers : list/tuple of L stacks, one per layer: each a (p, n_l) array/tensor (one row per
        worker; any further axes, (p, *shape_l), are flattened and restored), or a list of p
        arrays/tensors of one shape (that layer's gradient from each worker). All layers share
        the framework, dtype and device; their sizes n_l (and even p) may differ. On a CUDA
        device the L problems run in one launch sequence (no Python loop over layers); on the
        CPU in one native call.
    r, lam, max_iter, eps, tol, scale, return_info : as in ``flag_aggregate``, the same for
        every layer, except r: by default each layer gets (p_l + 1) // 2 from its own p_l (as
        ``flag_aggregate`` would choose for it); an explicit r applies to every layer and must be
        at most the smallest p.

    Returns
    -------
    A list of L aggregates, each with the shape of one worker's gradient of that layer
    (shape_l), in the caller's framework, dtype and device; with return_info, (list, list of
    L FlagInfo), one unbatched FlagInfo per layer.

    Equal, layer by layer, to ``flag_aggregate(layers[l], ...)``.
    """
    fn = "flag_aggregate_layers"
    if not isinstance(layers, (list, tuple)):
        raise TypeError(
            f"{fn}: layers must be a list or tuple of per-layer stacks, got {type(layers).__name__}"
        )
    if len(layers) == 0:
        raise ValueError(
            f"{fn}: layers must hold at least one layer, got an empty {type(layers).__name__}"
        )
    stacks = []
    for i, layer in enumerate(layers):
        arg = f"layers[{i}]"
        if isinstance(layer, np.ndarray) or _is_tensor(layer):
            if layer.ndim < 2:
                raise ValueError(
                    f"{fn}: {arg} must be (p, ...) with one row per worker, got shape "
                    f"{tuple(layer.shape)}"
                )
            if layer.shape[0] == 0:  # as flag_aggregate: p = 0 has no aggregate
                raise ValueError(
                    f"{fn}: {arg} must hold at least one worker (p >= 1), got shape "
                    f"{tuple(layer.shape)}"
                )
            if layer.ndim > 2:
                layer = layer.reshape(layer.shape[0], int(np.prod(layer.shape[1:], dtype=np.int64)))
            st = as_stack(layer, fn, arg=arg)
            st.item_shape = tuple(layers[i].shape[1:])
            st.from_list = True
        else:
            st = as_stack(layer, fn, arg=arg)
        stacks.append(st)
    first = stacks[0]
    for i, st in enumerate(stacks[1:], start=1):
        if st.framework != first.framework:
            raise TypeError(
                f"{fn}: layers[{i}] is a {st.framework} stack, but layers[0] is {first.framework}"
            )
        if st.dtype != first.dtype:
            raise TypeError(
                f"{fn}: layers[{i}] has dtype {st.dtype}, but layers[0] has dtype {first.dtype}"
            )
        if st.framework == "torch" and st.device != first.device:
            raise ValueError(
                f"{fn}: layers[{i}] is on {st.device}, but layers[0] is on {first.device}"
            )
    p_min = min(st.p for st in stacks)
    r_given = r
    prm = _check_params(fn, p_min, r, lam, max_iter, eps, tol, scale, return_info)
    rs = [(st.p + 1) // 2 for st in stacks] if r_given is None else [prm.r] * len(stacks)
    native_cuda = not first.on_cpu and _native_cuda_ok(first.torch_data)
    if not native_cuda:  # the native CUDA path works in GPU memory, not the host's
        _check_flag_memory(fn, [st.p for st in stacks], "layers")
    if first.on_cpu:
        out, d = core.flag_aggregate_layers([st.data for st in stacks], rs, prm)
    elif native_cuda and len(set(rs)) > 1:  # one r per launch: layer by layer
        outs, ds = [], []
        for st, rl in zip(stacks, rs):
            o, dd = _flag_aggregate_cuda(st.torch_data, _with_r(prm, rl), True)
            outs.append(o.reshape(-1))
            ds.append(dd)
        out, d = _concat_layers(outs, ds)
    elif native_cuda:
        out, d = _flag_aggregate_layers_cuda(
            [st.torch_data[0] for st in stacks], _with_r(prm, rs[0]), return_info
        )
    else:  # no CUDA kernels here: one problem at a time through the torch fallback
        outs, ds = [], []
        for st, rl in zip(stacks, rs):
            o, dd = _flag_aggregate_torch(st, _with_r(prm, rl))
            outs.append(o.reshape(-1))
            ds.append(dd)
        out, d = _concat_layers(outs, ds)
    results, infos = [], []
    col = row = 0
    for q, st in enumerate(stacks):
        results.append(st.restore(out[col : col + st.n].reshape(1, st.n)))
        if return_info:
            sub = {
                k: np.asarray(v[row : row + st.p])[None]
                for k, v in d.items()
                if k in ("coefficients", "weights", "reconstruction_ratios", "excluded")
            }
            sub.update(
                {
                    k: np.asarray(d[k][q : q + 1])
                    for k in ("objective", "iterations", "last_step_rejected", "rank")
                }
            )
            infos.append(FlagInfo._from_native(sub, False))
        col += st.n
        row += st.p
    return (results, infos) if return_info else results


def _concat_layers(outs: list[Any], ds: list[Any]) -> tuple[Any, dict[str, Any]]:
    """Per-layer (flat tensor, (1, ...) info dict) results -> one flat tensor and one ragged
    info dict (per-worker arrays over all rows; objective padded with NaN to the longest)."""
    import torch

    per_worker = ("coefficients", "weights", "reconstruction_ratios", "excluded")
    steps = max(np.asarray(dd["objective"]).shape[1] for dd in ds)
    d = {}
    for k in ds[0]:
        if k in per_worker:
            d[k] = np.concatenate([np.asarray(dd[k])[0] for dd in ds])
        elif k == "objective":
            rows = [np.asarray(dd[k]) for dd in ds]
            d[k] = np.concatenate(
                [np.pad(o, ((0, 0), (0, steps - o.shape[1])), constant_values=np.nan) for o in rows]
            )
        else:
            d[k] = np.concatenate([np.asarray(dd[k]).reshape(-1) for dd in ds])
    return torch.cat(outs), d


def _is_tensor(x: Any) -> bool:
    from ._backend import is_torch_tensor

    return is_torch_tensor(x)
