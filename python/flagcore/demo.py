"""``flagcore demo``: the main job on built-in defaults.

Part 1 (always): the Flag Aggregator on generated gradients, 15 workers of which 3 are
Byzantine and send uniform random vectors (the FA paper's attack): how close each rule gets to
the true gradient, which workers FA trusted, and how long FA takes next to a plain mean.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._table import print_table
from .flag import flag_aggregate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the built-in demonstration (tables on the terminal, plots in --out)")
    p.add_argument("--out", default="flagcore_demo", help="folder for plots and JSON (default: ./flagcore_demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller sizes (for tests)")
    p.set_defaults(func=run)


def fa_byzantine_demo(seed: int = 0, p: int = 15, f: int = 3, n: int = 200_000) -> dict:
    """Honest gradients g* + noise, f attackers sending U[0, 1)^n. Returns per-rule errors."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal(n).astype(np.float32)
    honest = true + 1.5 * rng.standard_normal((p - f, n)).astype(np.float32)
    byz = rng.random((f, n), dtype=np.float32)
    x = np.concatenate([honest, byz])
    agg_fa, info = flag_aggregate(x, r=(p + 1) // 2, scale="median_norm", return_info=True)
    rules = {
        "mean": x.mean(axis=0),
        "median": np.median(x, axis=0),
        "flag (median_norm)": agg_fa,
        "mean of honest (oracle)": honest.mean(axis=0),
    }

    def cos(a: np.ndarray) -> float:
        return float(a @ true / (np.linalg.norm(a) * np.linalg.norm(true)))

    table = {k: {"cosine_to_true": cos(v), "rel_error": float(np.linalg.norm(v - true) / np.linalg.norm(true))}
             for k, v in rules.items()}
    return dict(table=table, ratios=info.reconstruction_ratios.tolist(), weights=info.weights.tolist(),
                byzantine=list(range(p - f, p)), p=p, f=f, n=n)


def fa_timing(n: int = 1_000_000, p: int = 15, repeat: int = 5, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, n), dtype=np.float32)
    flag_aggregate(x)
    x.mean(axis=0)

    def best(fn) -> float:
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    return {"p": p, "n": n, "mean_s": best(lambda: x.mean(axis=0)), "flag_s": best(lambda: flag_aggregate(x)),
            "flag_5iter_s": best(lambda: flag_aggregate(x, max_iter=5))}


def run(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    n = 20_000 if args.quick else 200_000
    res = fa_byzantine_demo(seed=args.seed, n=n)
    print_table(
        f"Flag Aggregator vs mean and median: {res['p']} workers, {res['f']} send U[0,1) vectors, n = {n}",
        ["rule", "cosine to true gradient", "relative error"],
        [[k, v["cosine_to_true"], v["rel_error"]] for k, v in res["table"].items()],
    )
    print_table(
        "Which workers FA trusted (reconstruction ratio v_i; attackers marked)",
        ["worker", "ratio", "IRLS weight", "byzantine"],
        [[i, v, w, "yes" if i in res["byzantine"] else ""] for i, (v, w) in enumerate(zip(res["ratios"], res["weights"]))],
    )
    t = fa_timing(n=200_000 if args.quick else 1_000_000)
    print_table(
        f"Time on this machine, p = {t['p']}, n = {t['n']}, float32 (best of 5)",
        ["method", "ms", "x mean"],
        [["numpy mean", t["mean_s"] * 1e3, 1.0],
         ["flag_aggregate (1 iteration)", t["flag_s"] * 1e3, t["flag_s"] / t["mean_s"]],
         ["flag_aggregate (5 iterations)", t["flag_5iter_s"] * 1e3, t["flag_5iter_s"] / t["mean_s"]]],
    )
    import json

    path = os.path.join(args.out, "fa_demo.json")
    with open(path, "w") as fh:
        json.dump({"byzantine_demo": res, "timing": t}, fh, indent=2)
    written = [path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        colors = ["tab:red" if i in res["byzantine"] else "tab:blue" for i in range(res["p"])]
        ax.bar(range(res["p"]), res["ratios"], color=colors)
        ax.set_xlabel("worker (red: Byzantine)")
        ax.set_ylabel("reconstruction ratio")
        ax.set_title("Flag Aggregator: per-worker reconstruction ratios")
        fig.tight_layout()
        png = os.path.join(args.out, "fa_ratios.png")
        fig.savefig(png, dpi=120)
        plt.close(fig)
        written.append(png)
    except ImportError:
        print("(matplotlib not installed: no plots; pip install 'flagcore[demo]')")
    print("wrote " + ", ".join(os.path.abspath(w) for w in written))
    return 0
