"""Small runs through every CUDA path of the Flag Aggregator, for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 9 \
        python bench/sanitize_flag_cuda.py [--rules]
    compute-sanitizer --tool racecheck --error-exitcode 9 python bench/sanitize_flag_cuda.py --small
    compute-sanitizer --tool synccheck --error-exitcode 9 python bench/sanitize_flag_cuda.py --small

Paths: register, staged, tile-pair and blocked Gram kernels (blocked at every p, aligned and
unaligned), float32/float16/bfloat16, aligned and unaligned
rows, the float64 refinement of overflowing rows, NaN workers, the IRLS with its scratch in
shared memory (p <= 44) and in global memory (p > 44), pairwise terms, both scalings, and a
ragged per-layer batch. Each result is checked against the CPU path. Exits 0 with a message
without a GPU.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import flagcore
from flagcore._backend import core
from flagcore._reference import make_gradients


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--small", action="store_true", help="fewer, smaller cases (racecheck is slow)")
    ap.add_argument(
        "--rules", action="store_true", help="also the coordinate-wise rules' CUDA kernel"
    )
    args = ap.parse_args(argv)
    import torch

    if not flagcore.cuda_available() or not torch.cuda.is_available():
        print("sanitize_flag_cuda: no GPU (or flagcore built without CUDA); nothing to run")
        return 0
    from flagcore.flag import _flag_aggregate_cuda

    n = 20_003 if args.small else 70_001
    ps = [3, 15, 50, 70] if args.small else [3, 7, 15, 64, 130]
    tol = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
    bad = 0

    def compare(name, got, x64, **kw):
        nonlocal bad
        exp = flagcore.flag_aggregate(x64, **kw)
        err = float(
            np.max(np.abs(got.double().cpu().numpy() - exp)) / max(np.max(np.abs(exp)), 1e-300)
        )
        ok = err < tol[got.dtype]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: rel err {err:.1e}", flush=True)

    for dt in (torch.float32, torch.float16, torch.bfloat16):
        for p in ps:
            x = make_gradients(p, n, byzantine=max(1, p // 5), seed=p)
            if p >= 7:
                x[p - 1, 11] = np.nan
            xt = torch.from_numpy(x).to(dt).cuda()
            for view, label in ((xt, "aligned"), (xt[:, 1:], "unaligned")):
                kw = dict(
                    r=max(1, p // 2),
                    lam=0.5 if p <= 15 else 0.0,
                    max_iter=3,
                    scale="median_norm" if p == 7 else "paper",
                )
                got = flagcore.flag_aggregate(view, **kw)
                compare(f"{dt} p={p} {label}", got, view.double().cpu().numpy(), **kw)
            # every pinned kernel that takes p, on 16-byte aligned rows (the staged kernel
            # takes no other); the blocked one (any p) on the unaligned view as well
            kernels = [core.GramKernel.blocked]
            if p <= 16:
                kernels += [core.GramKernel.tile_pairs, core.GramKernel.staged]
            if p <= 8:
                kernels.append(core.GramKernel.registers)
            xa = xt[:, : n - n % 8].contiguous()
            # the blocked kernel on 4104 / 4101 columns (129 slabs, a partial last one): its
            # shared-memory traffic is what racecheck instruments, and the step has a time limit
            runs = [(k, xa, "aligned") for k in kernels if k != core.GramKernel.blocked]
            runs.append((core.GramKernel.blocked, xa[:, :4104], "aligned"))
            runs.append((core.GramKernel.blocked, xt[:, 1:4102], "unaligned"))
            for kernel, view, label in runs:
                prm = core.FlagParams(r=max(1, p // 2), max_iter=2)
                got, _ = _flag_aggregate_cuda(view[None], prm, False, kernel)
                compare(
                    f"{dt} p={p} kernel {kernel.name} {label}",
                    got[0],
                    view.double().cpu().numpy(),
                    r=max(1, p // 2),
                    max_iter=2,
                )
    huge = make_gradients(5, n, seed=1).astype(np.float32)
    huge[0] *= np.float32(1e25)
    compare(
        "float32 overflowing row",
        flagcore.flag_aggregate(torch.from_numpy(huge).cuda(), r=2),
        huge.astype(np.float64),
        r=2,
    )
    flat = torch.from_numpy(
        make_gradients(15, 3 * n + 40, byzantine=3, seed=2).astype(np.float32)
    ).cuda()
    sizes = [1, 5, n, 16, n + 3, n - 7]
    sizes.append(flat.shape[1] - sum(sizes))
    layers = list(torch.split(flat, sizes, dim=1))
    outs = flagcore.flag_aggregate_layers(layers, r=8, max_iter=3)
    for q, (layer, out) in enumerate(zip(layers, outs)):
        compare(
            f"layers[{q}] n={layer.shape[1]}", out, layer.double().cpu().numpy(), r=8, max_iter=3
        )
    if (
        args.rules
    ):  # the coordinate kernel: every rule, a NaN worker, even and odd p, an unaligned view
        for p in [5, 16, 40] if args.small else [3, 5, 16, 31, 64]:
            x = make_gradients(p, n, byzantine=1, seed=100 + p).astype(np.float32)
            x[0, 3] = np.nan
            xt = torch.from_numpy(x).cuda()
            for rule, kw in (
                ("median", {}),
                ("trimmed_mean", {"f": 1}),
                ("meamed", {"f": 1}),
                ("phocas", {"f": 1}),
                ("mean", {}),
            ):
                for view, label in ((xt, "aligned"), (xt[:, 1:], "unaligned")):
                    got = flagcore.aggregate(view, rule, **kw).double().cpu().numpy()
                    exp = flagcore.aggregate(view.cpu().numpy(), rule, **kw).astype(np.float64)
                    err = float(np.nanmax(np.abs(got - exp)) / max(np.nanmax(np.abs(exp)), 1e-300))
                    ok = err < 1e-5 and bool(np.array_equal(np.isnan(got), np.isnan(exp)))
                    bad += not ok
                    print(
                        f"{'ok ' if ok else 'BAD'} {rule} p={p} {label}: rel err {err:.1e}",
                        flush=True,
                    )
    torch.cuda.synchronize()
    print("all ok" if bad == 0 else f"{bad} BAD", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
