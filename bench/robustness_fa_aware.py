"""What the FA-aware attack chooses against the Flag Aggregator on real gradients.

Takes the 15-worker digits/MLP setting of bench/robustness_grid_paper.json, trains the model
without attack (mean rule) and, at a few checkpoints, takes the 12 honest workers' gradients and
reports, for each FA configuration: the candidate fa_aware keeps, its deviation D next to those of
plain sign_flip / ipm / alie at the same step, and FA's reconstruction ratios (attackers' minimum
vs the honest median); and what optimal_alie sends (z, norms of the attack and of FA's aggregate
with and without it). Writes bench/results/robustness_grid/fa_aware_probe.json.

    python bench/robustness_fa_aware.py [--steps 60] [--every 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "robustness_grid"))
    args = ap.parse_args(argv)

    import torch

    import flagcore
    from flagcore.attacks import attack
    from flagcore.experiments import data as xdata
    from flagcore.experiments import models
    from flagcore.experiments.grid import check_out_dir
    from flagcore.experiments.harness import _Gradients

    check_out_dir(args.out, "robustness_fa_aware")
    torch.set_num_threads(1)
    p, f, B = 15, 3, 16
    h = p - f
    task = xdata.load_digits(args.seed)
    xs, ys = xdata.shard(task, p, args.seed)
    torch.manual_seed(args.seed)
    net = models.make_model("mlp", task.input_shape, task.n_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    grads = _Gradients(net)
    gen = torch.Generator().manual_seed(args.seed)
    configs = {
        "flag": {},
        "flag[max_iter=20]": {"max_iter": 20},
        "flag[scale=median_norm]": {"scale": "median_norm"},
    }
    rows = []
    for step in range(args.steps + 1):
        idx = torch.rand(p, xs.shape[1], generator=gen).argsort(dim=1)[:, :B]
        stack, _ = grads(xs[torch.arange(p)[:, None], idx], ys[torch.arange(p)[:, None], idx])
        honest = stack[:h].detach().double().numpy()
        if step % args.every == 0:
            for label, fa in configs.items():
                _, info = attack(
                    "fa_aware", honest, f, rule="flag", rule_params=fa, return_info=True
                )
                mu = honest.mean(axis=0)
                ref = flagcore.flag_aggregate(np.vstack([honest, np.tile(mu, (f, 1))]), **fa)
                row = {
                    "step": step,
                    "fa": label,
                    "chosen": info.parameter
                    if isinstance(info.parameter, str)
                    else f"theta={np.degrees(info.parameter):.0f}deg",
                    "deviation": info.deviation,
                    "byzantine_min_ratio": info.byzantine_ratio,
                    "honest_median_ratio": info.honest_ratio,
                    "feasible": info.feasible,
                }
                oa, oi = attack(
                    "optimal_alie", honest, f, rule="flag", rule_params=fa, return_info=True
                )
                agg, ai = flagcore.flag_aggregate(np.vstack([honest, oa]), return_info=True, **fa)
                va = np.asarray(ai.reconstruction_ratios)
                row["optimal_alie"] = {
                    "z": oi.parameter,
                    "deviation": oi.deviation,
                    "attacker_norm": float(np.linalg.norm(oa[0])),
                    "aggregate_norm": float(np.linalg.norm(agg)),
                    "aggregate_norm_without_attack": float(np.linalg.norm(ref)),
                    "byzantine_min_ratio": float(va[h:].min()),
                    "honest_median_ratio": float(np.median(va[:h])),
                }
                for base in ("sign_flip", "ipm", "alie"):
                    b = attack(base, honest, f)
                    agg, bi = flagcore.flag_aggregate(
                        np.vstack([honest, b]), return_info=True, **fa
                    )
                    v = np.asarray(bi.reconstruction_ratios)
                    row[base] = {
                        "deviation": float(np.linalg.norm(agg - ref)),
                        "byzantine_min_ratio": float(v[h:].min()),
                        "honest_median_ratio": float(np.median(v[:h])),
                    }
                rows.append(row)
                print(json.dumps(row), flush=True)
        agg = stack.detach().mean(dim=0)
        off = 0
        for prm in net.parameters():
            k = prm.numel()
            prm.grad = agg[off : off + k].view_as(prm).clone()
            off += k
        opt.step()
    path = os.path.join(args.out, "fa_aware_probe.json")
    with open(path, "w") as fh:
        json.dump(
            {
                "command": "python bench/robustness_fa_aware.py " + " ".join(argv or sys.argv[1:]),
                "rows": rows,
            },
            fh,
            indent=1,
            allow_nan=False,
        )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
