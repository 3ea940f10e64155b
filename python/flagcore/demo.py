"""``flagcore demo``: the main job on built-in defaults (about two minutes on two cores).

Part 1: a short robustness comparison on scikit-learn's bundled digits: 15 workers of which 3
are Byzantine and send uniform random vectors (the FA paper's attack); the Flag Aggregator
against a plain mean and the coordinate-wise median, 3 seeds. Tables on the terminal;
results.json, accuracy.png, flag_workers.png (which workers FA trusted) and agg_time.png in the
output folder.

Part 2 (when flagcore.energy is installed): a short energy/latency trade-off of a (4, 2)
fork-join service as the probability of the high-speed level varies.

Without matplotlib both parts write their JSON and say how to get the plots; the output folder
and the options are checked before part 1 starts, and the folder is created when the first file
is written (an interrupted or failed demo leaves none behind). A folder that already holds an
earlier run's results (a second plain ``flagcore demo``, say) is refused unless ``--force`` is
given: results are never replaced unasked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import _paths

_WHERE = "flagcore demo"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the built-in demonstration (tables on the terminal, plots in --out)",
    )
    p.add_argument(
        "--out",
        default="flagcore_demo",
        help="folder for plots and JSON (default: ./flagcore_demo; refused if it holds an "
        "earlier run's results, unless --force)",
    )
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--quick", action="store_true", help="a few steps only (for tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def robustness_config(seed: int = 0, quick: bool = False) -> Any:
    """The demo's RobustnessConfig; ``run`` validates it before any work (e.g. --seed)."""
    from .experiments import RobustnessConfig

    return RobustnessConfig(
        rules=["flag", "median", "mean"],
        attack="random",
        workers=15,
        byzantine=3,
        dataset="digits",
        model="mlp",
        steps=20 if quick else 300,
        batch_size=32,
        lr=0.05,
        seeds=1 if quick else 3,
        seed=seed,
        eval_every=5 if quick else 15,
    )


def robustness_part(
    out: str, seed: int = 0, quick: bool = False, progress: bool = True
) -> list[str]:
    """FA vs mean vs median under the random attack on digits; returns the files written."""
    from .experiments import print_summary, run_robustness, write_outputs

    cfg = robustness_config(seed, quick)
    print(
        f"Part 1: robustness. {cfg.workers} workers on scikit-learn's digits (MLP), "
        f"the last {cfg.byzantine} send uniform [0, 1) vectors; SGD lr {cfg.lr}, "
        f"momentum {cfg.momentum}, {cfg.steps} steps, {cfg.seeds} seed(s); "
        f"FA with r = {(cfg.workers + 1) // 2}, 1 IRLS step (the paper's setting)."
    )
    res = run_robustness(cfg, progress=progress)
    print_summary(res, title="Final test accuracy under the random attack (higher is better)")
    fa = res["rules"]["flag"]
    mr = fa["flag"]["mean_ratio"]
    h = sum(x["honest"] for x in mr) / len(mr)
    b = sum(x["byzantine"] for x in mr) / len(mr)
    print(
        f"FA's mean reconstruction ratio: honest workers {h:.3f}, attackers {b:.3f} "
        f"(1 = inside FA's subspace); the heat map shows it per step."
    )
    plots = _paths.have_matplotlib()
    if not plots:
        print(
            f"{_WHERE}: matplotlib is not installed, so part 1 writes results.json without plots; "
            f"{_paths.PLOTS_HINT}",
            file=sys.stderr,
        )
    return list(write_outputs(res, out, plots=plots))


def _energy_sweep(energy: Any, quick: bool) -> list[list[float]]:
    """(4, 2) fork-join with cancellation, two speed levels (rate 1 at power 1, rate 2 at power
    4), arrival rate 1; sweep of the probability q of the high-speed level: closed-form
    approximation (race rate) beside the simulator."""
    rows = []
    qs = [0.0, 0.5, 1.0] if quick else [0.0, 0.25, 0.5, 0.75, 1.0]
    for q in qs:
        levels = [(1.0, 1.0, 1.0 - q), (2.0, 4.0, q)]
        a = energy.approximate(4, 2, 1.0, levels)
        s = energy.simulate(4, 2, 1.0, levels, requests=20_000 if quick else 200_000, seed=0)
        rows.append(
            [
                q,
                a.mean_response_time,
                s.mean_response_time,
                s.p99,
                a.energy_per_request,
                s.energy_per_request,
            ]
        )
    return rows


def energy_part(out: str, quick: bool = False) -> list[str]:
    from ._table import print_table

    try:
        from . import energy
    except ImportError:
        print("Part 2: energy module not available (flagcore.energy); skipped.")
        return []
    print(
        "Part 2: energy/latency trade-off of a (4, 2) fork-join service "
        "as the high-speed probability varies."
    )
    rows = _energy_sweep(energy, quick)
    print_table(
        "Energy vs latency, (4, 2) with cancellation, arrival rate 1",
        [
            "p(high speed)",
            "E[T] approx",
            "E[T] sim",
            "p99 sim",
            "energy/req approx",
            "energy/req sim",
        ],
        rows,
    )
    path = os.path.join(out, "energy_tradeoff.json")
    with _paths.atomic_open(path) as fh:  # a failed write keeps a previous file
        json.dump(
            {
                "columns": [
                    "p_high",
                    "ET_approx",
                    "ET_sim",
                    "p99_sim",
                    "energy_approx",
                    "energy_sim",
                ],
                "rows": rows,
            },
            fh,
            indent=2,
        )
    written = [path]
    plt = _paths.pyplot_or_none(f"{_WHERE} (part 2)")
    if plt is None:
        return written
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r[2] for r in rows], [r[5] for r in rows], "o-", label="simulation")
    ax.plot([r[1] for r in rows], [r[4] for r in rows], "s--", label="approximation")
    for r in rows:
        ax.annotate(f"q={r[0]:g}", (r[2], r[5]), fontsize=7)
    ax.set_xlabel("mean response time")
    ax.set_ylabel("energy per request")
    ax.set_title("(4, 2) fork-join: energy vs latency", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out, "energy_tradeoff.png")
    try:
        _paths.atomic_savefig(fig, png, dpi=120)
    finally:
        plt.close(fig)
    written.append(png)
    return written


def run(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            "demo: needs torch (install the torch build for your machine first)"
        ) from exc
    t0 = time.perf_counter()
    # Before minutes of training, not after: the options, then the output folder (created by
    # the first write, so a demo that stops early leaves no empty folder).
    robustness_config(args.seed, args.quick).validate(options=True, where="demo")
    _paths.check_output_dir(args.out, _WHERE, refuse_existing=not getattr(args, "force", False))
    written = robustness_part(
        args.out, seed=args.seed, quick=args.quick, progress=not args.no_progress
    )
    written += energy_part(args.out, quick=args.quick)
    where = os.path.abspath(args.out)
    print(
        f"Done in {time.perf_counter() - t0:.0f} s. Wrote to {where}: "
        + ", ".join(os.path.basename(w) for w in written)
    )
    return 0
