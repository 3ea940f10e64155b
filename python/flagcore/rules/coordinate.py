"""Coordinate-wise rules: mean, median, trimmed mean, MeaMed, Phocas.

Each reduces, independently per coordinate, the p values of the workers to one number
(csrc/rules/coordinate.hpp states the contract):

- median: midpoint of the two middle values for even p (numpy's convention; note that
  ``torch.median(dim=0)`` returns the lower one);
- trimmed_mean(f): drop the f largest and f smallest, mean of the p - 2f others (p > 2f);
- meamed(f): mean of the p - f values closest to the median (p > 2f);
- phocas(f): mean of the p - f values closest to the f-trimmed mean (p > 2f);
- mean: the plain mean (with the same handling of non-finite workers).

"Closest" ties keep the smaller value. Means and midpoints are formed in float64 and rounded
once to the output dtype; every mean adds its values in order and then divides by their count
(numpy's and torch's convention: for float64 input ``mean`` and ``trimmed_mean`` equal numpy's
``x.mean(axis=0)`` and ``np.sort(x, axis=0)[f:p - f].mean(axis=0)`` bit for bit, and the mean
of 1, 4 and 7 is exactly 4).

Non-finite workers: a worker with any NaN/Inf value is excluded from its problem (reported in
``RuleInfo.excluded``) and the rule runs on the remaining p - e workers with
f_eff = max(f - e, 0): an excluded worker counts as one of the f Byzantine ones, and the
preconditions still hold for the survivors. A problem whose workers are all excluded gives 0.

Backends: the native CPU kernel (vectorised sorting networks at every p up to 65536: Batcher's
odd-even merge sort over blocks of 8-16 columns, pruned to the positions the rule reads, so the
cost per value grows like log^2 p with no step at any p; the mean streams the rows through
float64 accumulators, at any p: above 65536 workers it is formed from native weighted sums with
the same conventions; finiteness is checked in the same read), the CUDA kernel for CUDA tensors
when flagcore was built with CUDA (p <= 64), and plain torch (sort along the worker axis)
otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import core
from ._source import Source

CoordRule = core.CoordRule

#: Most workers per problem of the sorting-based coordinate-wise rules (the sorting networks'
#: bound, kMaxNetwork in csrc/rules/coordinate.hpp); the mean takes any p.
MAX_WORKERS = 65536

RULE_IDS: dict[str, CoordRule] = {
    "median": CoordRule.median,
    "trimmed_mean": CoordRule.trimmed_mean,
    "meamed": CoordRule.meamed,
    "phocas": CoordRule.phocas,
    "mean": CoordRule.mean,
}


def run_coordinate(src: Source, rule: str, f: int, keep: int = -1) -> tuple[Any, np.ndarray]:
    """Apply a coordinate-wise rule to the rows ``src`` exposes. Returns ((b, n) result as numpy
    in the compute dtype or torch on the caller's device, excluded (b, p') bool)."""
    rid = RULE_IDS[rule]
    if src.p > MAX_WORKERS and rid != CoordRule.mean:
        raise ValueError(
            f"{src.st.fn or 'aggregate'}: rule {rule!r}: gradients may hold at most "
            f"{MAX_WORKERS} workers per problem for the sorting-based coordinate-wise rules "
            f"(median, trimmed_mean, meamed, phocas), got p = {src.p}"
        )
    rows = src.rows()
    if src.st.on_cpu:
        if src.p > MAX_WORKERS:  # the mean needs no sorting network
            return _mean_many(rows, src.b, src.p, src.excluded)
        out, excl = core.coordinate(rows, rid, int(f), int(keep), src.excluded_u8())
        return out, excl.astype(bool)
    return _coordinate_device(rows, rid, f, keep, src.excluded)


def _mean_many(rows: Any, b: int, p: int, excluded: np.ndarray | None) -> tuple[Any, np.ndarray]:
    """The mean of more workers than the native coordinate kernel takes (p > MAX_WORKERS), with
    its conventions, from native weighted sums (float64 accumulation, rows added in order,
    independent of the thread count; rows with coefficient 0 are not read).

    float64: the sum, then divided by the count (numpy's ``mean(axis=0)`` bit for bit); where
    that overflows, the sum of the pre-divided rows x_i / count (finite inputs give finite
    means), as the native kernel does. float32: the float64 sum of the pre-divided rows, rounded
    once (the weighted sum's float32 output would round a plain sum before the division). A
    worker with a NaN/Inf value makes its coordinates' sums non-finite: those coordinates are
    then read for every worker, the workers with a non-finite value there are excluded, and the
    mean is taken again without them. A problem whose workers are all excluded gives 0."""
    excl = np.zeros((b, p), bool) if excluded is None else excluded.copy()
    is64 = (rows[0] if isinstance(rows, list) else rows).dtype == np.float64
    while True:
        keep = ~excl
        count = keep.sum(axis=1).astype(np.float64)[:, None]
        scaled = np.divide(keep, count, out=np.zeros((b, p)), where=count > 0)
        if is64:
            total = core.weighted_sum(rows, keep.astype(np.float64))
            with np.errstate(over="ignore", invalid="ignore"):
                out = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
            if not np.isfinite(out).all():
                out = np.where(np.isfinite(out), out, core.weighted_sum(rows, scaled))
        else:
            out = core.weighted_sum(rows, scaled)
        bad = ~np.isfinite(out)
        if not bad.any():
            return out, excl
        found = False
        for q in np.flatnonzero(bad.any(axis=1)):
            cols = np.flatnonzero(bad[q])
            for i in np.flatnonzero(keep[q]):
                row = rows[i] if isinstance(rows, list) else rows[q, i]
                if not np.isfinite(row[cols]).all():
                    excl[q, i] = found = True
        if not found:  # an overflow of finite values (sums within rounding of the largest)
            return out, excl


def _coordinate_device(
    x: Any, rid: CoordRule, f: int, keep: int, excluded: np.ndarray | None
) -> tuple[Any, np.ndarray]:
    import torch

    b, p, _n = x.shape
    excl = np.zeros((b, p), bool) if excluded is None else excluded.copy()
    if (
        x.device.type == "cuda"
        and core.build_info()["cuda_compiled"]
        and p <= core.coordinate_cuda_max_p
    ):
        return _coordinate_cuda(x, rid, f, keep, excl)
    bad = (~torch.isfinite(x).all(dim=2)).cpu().numpy()
    excl |= bad
    return _coordinate_torch(x, rid, f, keep, excl), excl


def _coordinate_cuda(
    x: Any, rid: CoordRule, f: int, keep: int, excl: np.ndarray
) -> tuple[Any, np.ndarray]:
    import torch

    from .._backend import cuda_array

    b, p, n = x.shape
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    if n > 1 and work.stride(2) != 1:
        work = work.contiguous()
    out = torch.empty((b, n), dtype=work.dtype, device=x.device)
    flags = torch.zeros((b, p), dtype=torch.int32, device=x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    with torch.cuda.device(x.device):
        for _ in range(2):  # the second launch only when a non-finite worker turned up
            bits = (~excl).astype(np.uint64) << np.arange(p, dtype=np.uint64)
            # bit i of problem q's uint64 = worker i takes part (p <= 64), passed as int64
            mask = torch.from_numpy(bits.sum(axis=1).view(np.int64)).to(x.device)
            core.coordinate_cuda(
                cuda_array(work),
                cuda_array(out),
                cuda_array(mask),
                cuda_array(flags),
                rule=rid,
                f=int(f),
                keep=int(keep),
                stream=stream,
            )
            bad = flags.cpu().numpy().astype(bool) & ~excl
            if not bad.any():
                break
            excl |= bad
    return out, excl


def _coordinate_torch(x: Any, rid: CoordRule, f: int, keep: int, excl: np.ndarray) -> Any:
    """Plain torch: sort along the worker axis, reduce in float64."""
    import torch

    b, p, n = x.shape
    out = torch.zeros((b, n), dtype=torch.float64, device=x.device)
    for q in range(b):
        idx = torch.from_numpy(np.flatnonzero(~excl[q])).to(x.device)
        pe = int(idx.numel())
        if pe == 0:
            continue
        s = torch.sort(x[q].index_select(0, idx).to(torch.float64), dim=0).values
        e = p - pe
        t = max(f - e, 0)
        k = min(keep, pe) if keep >= 0 else pe - t
        k = max(k, 1)
        if 2 * t >= pe:
            t = (pe - 1) // 2
        if rid == CoordRule.mean:
            out[q] = s.mean(dim=0)
            continue
        if rid in (CoordRule.median, CoordRule.meamed):
            centre = 0.5 * (s[(pe - 1) // 2] + s[pe // 2])
        else:
            centre = s[t : pe - t].mean(dim=0)
        if rid in (CoordRule.median, CoordRule.trimmed_mean):
            out[q] = centre
            continue
        lo = torch.zeros(n, dtype=torch.long, device=x.device)
        hi = torch.full((n,), pe - 1, dtype=torch.long, device=x.device)
        for _ in range(pe - k):
            vl = s.gather(0, lo[None])[0]
            vh = s.gather(0, hi[None])[0]
            left = (centre - vl) > (vh - centre)
            lo = lo + left.long()
            hi = hi - (~left).long()
        pos = torch.arange(pe, device=x.device)[:, None]
        inside = (pos >= lo[None]) & (pos <= hi[None])
        out[q] = (s * inside).sum(dim=0) / k
    return out
