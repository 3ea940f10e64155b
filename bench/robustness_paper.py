"""Reproduce the FA paper's robustness comparisons at laptop scale (digits, small MLP).

Scenarios (docs/spec_fa.md, "The paper's experimental setup"; 15 workers, r = 8 unless stated):
  a   3 of 15 workers send uniform [0, 1) vectors (the paper's "random" attack)
  b   3 of 15 workers are honest but train on distorted data (warp / heavy noise / shuffled labels)
  c   scalability: 15, 30, 60 workers with 20 % distorted workers, r = 8, 16, 32
  fa  FA variants under a and b: 1 IRLS step (the paper) vs converged IRLS (max_iter 50), and the
      two output scales ("paper" and "median_norm")

Rules default to the paper's list (flag, multi_krum, bulyan, median, trimmed_mean, meamed, phocas,
mean); rules this build does not have are skipped and listed. Writes
bench/results/robustness_<scenario>.json, PNG plots and robustness_summary.md.

    python bench/robustness_paper.py                      # everything, 3 seeds
    python bench/robustness_paper.py --scenarios a,b --rules flag,median,mean --steps 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from flagcore.experiments import RobustnessConfig, print_summary, run_robustness, write_outputs
from flagcore.experiments.grid import check_out_dir, have_matplotlib
from flagcore.experiments.harness import available_rules, split_rule_list

PAPER_RULES = ["flag", "multi_krum", "bulyan", "median", "trimmed_mean", "meamed", "phocas", "mean"]
FA_VARIANTS = [
    "flag",
    "flag[max_iter=50]",
    "flag[scale=median_norm]",
    "flag[max_iter=50,scale=median_norm]",
]
SCENARIOS = ("a", "b", "c", "fa")
PAPER_R = {7: 4, 15: 8, 30: 16, 60: 32}  # the paper's subspace dimension per worker count


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scenarios", default="a,b,c,fa", help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--rules", default=",".join(PAPER_RULES), help="comma list of rule specs")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument(
        "--batch-size", type=int, default=16, help="per worker (60 workers leave 23 samples each)"
    )
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers-c", default="15,30,60", help="worker counts of scenario c")
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    )
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def pick_rules(text: str) -> tuple:
    have = set(available_rules())
    rules = split_rule_list(text)
    kept = [r for r in rules if r.split("[")[0] in have]
    skipped = [r for r in rules if r.split("[")[0] not in have]
    return kept, skipped


def run_one(
    name: str, cfg: RobustnessConfig, out: str, progress: bool, md: list, note: str = ""
) -> dict:
    t0 = time.perf_counter()
    res = run_robustness(cfg, progress=progress)
    elapsed = time.perf_counter() - t0
    res["scenario"] = {"name": name, "note": note, "elapsed_s": elapsed}
    print_summary(res, title=f"[{name}] {note} ({elapsed:.0f} s)")
    write_outputs(res, out, plots=False)
    os.replace(os.path.join(out, "results.json"), os.path.join(out, f"robustness_{name}.json"))
    if have_matplotlib():
        from flagcore.experiments.plots import write_plots

        write_plots(res, out, prefix=f"robustness_{name}_")
    md.append(markdown_table(name, note, res, elapsed))
    return res


def markdown_table(name: str, note: str, res: dict, elapsed: float) -> str:
    c = res["config"]
    lines = [
        f"### {name}: {note}",
        "",
        f"{res['dataset']['name']} / {res['model']['name']} ({res['model']['parameters']} "
        "parameters), "
        f"p = {c['workers']}, f = {c['byzantine']} ({c['attack']}), {c['steps']} steps, batch "
        f"{c['batch_size']} "
        f"per worker, lr {c['lr']}, momentum {c['momentum']}, weight decay {c['weight_decay']}, "
        f"seeds {res['seeds']}, FA r = {c['r'] or (c['workers'] + 1) // 2}; {elapsed:.0f} s in "
        "all.",
        "",
        "| rule | final test accuracy (mean ± std) | per seed | agg ms/step | FA ratio honest / "
        "bad |",
        "|---|---|---|---|---|",
    ]
    order = sorted(res["rules"].items(), key=lambda kv: -kv[1]["final_accuracy_mean"])
    for label, e in order:
        trust = ""
        fl = e.get("flag")
        if fl and fl["mean_ratio"][0]["byzantine"] is not None:
            trust = (
                f"{np.mean([x['honest'] for x in fl['mean_ratio']]):.3f} / "
                f"{np.mean([x['byzantine'] for x in fl['mean_ratio']]):.3f}"
            )
        lines.append(
            f"| {label} | {e['final_accuracy_mean']:.4f} ± {e['final_accuracy_std']:.4f} | "
            + " ".join(f"{a:.3f}" for a in e["final_accuracy"])
            + f" | {e['agg_time_ms_mean']:.2f} | {trust} |"
        )
    lines.append("")
    return "\n".join(lines)


def scaling_plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ps = sorted(results)
    labels = list(results[ps[0]]["rules"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for lab in labels:
        acc = [results[p]["rules"][lab]["final_accuracy_mean"] for p in ps]
        sd = [results[p]["rules"][lab]["final_accuracy_std"] for p in ps]
        t = [results[p]["rules"][lab]["agg_time_ms_mean"] for p in ps]
        axes[0].errorbar(ps, acc, yerr=sd, marker="o", capsize=3, label=lab)
        axes[1].plot(ps, t, marker="o", label=lab)
    axes[0].set_xlabel("workers p (20 % distorted)")
    axes[0].set_ylabel("final test accuracy")
    axes[1].set_xlabel("workers p")
    axes[1].set_ylabel("ms per aggregation")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xticks(ps)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Scalability (scenario c)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    a = parse_args(argv)
    scen = split_rule_list(a.scenarios)
    bad = [s for s in scen if s not in SCENARIOS]
    if bad:
        print(
            f"robustness_paper: unknown scenario(s) {bad}; choose from {SCENARIOS}", file=sys.stderr
        )
        return 2
    rules, skipped = pick_rules(a.rules)
    if skipped:
        print(
            f"note: this build has no rule(s) {', '.join(skipped)} (available: "
            f"{', '.join(available_rules())}); skipped"
        )
    try:
        check_out_dir(a.out, "robustness_paper")  # before hours of work, not after
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not have_matplotlib():
        print(
            "note: matplotlib is not installed: writing the JSON and the summary only "
            "(pip install 'flagcore[cli]' for the plots)"
        )
    base = dict(
        dataset=a.dataset,
        model=a.model,
        steps=a.steps,
        seeds=a.seeds,
        lr=a.lr,
        batch_size=a.batch_size,
        device=a.device,
        eval_every=max(1, a.steps // 30),
        flag_history="first_seed",
    )
    md = [
        "# Robustness comparisons (flagcore bench/robustness_paper.py)",
        "",
        "Command: `python bench/robustness_paper.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Rules skipped (not in this build): {', '.join(skipped) or 'none'}.",
        "",
    ]
    prog = not a.no_progress
    if "a" in scen:
        run_one(
            "a",
            RobustnessConfig(rules=rules, attack="random", workers=15, byzantine=3, r=8, **base),
            a.out,
            prog,
            md,
            "3 of 15 workers send uniform [0, 1) vectors",
        )
    if "b" in scen:
        run_one(
            "b",
            RobustnessConfig(rules=rules, attack="distorted", workers=15, byzantine=3, r=8, **base),
            a.out,
            prog,
            md,
            "3 of 15 honest workers on distorted data (warp, noise, shuffled labels)",
        )
    if "c" in scen:
        res_c = {}
        for p in (int(x) for x in a.workers_c.split(",")):
            f = p // 5
            res_c[p] = run_one(
                f"c{p}",
                RobustnessConfig(
                    rules=rules,
                    attack="distorted",
                    workers=p,
                    byzantine=f,
                    r=PAPER_R.get(p, (p + 1) // 2),
                    **base,
                ),
                a.out,
                prog,
                md,
                f"scalability: {f} of {p} workers on distorted data",
            )
        if len(res_c) > 1 and have_matplotlib():
            scaling_plot(res_c, os.path.join(a.out, "robustness_c_scaling.png"))
    if "fa" in scen:
        for s, attack, note in (
            ("fa_a", "random", "FA variants, 3 of 15 send uniform random vectors"),
            ("fa_b", "distorted", "FA variants, 3 of 15 on distorted data"),
        ):
            run_one(
                s,
                RobustnessConfig(
                    rules=FA_VARIANTS + ["median", "mean"],
                    attack=attack,
                    workers=15,
                    byzantine=3,
                    r=8,
                    **base,
                ),
                a.out,
                prog,
                md,
                note,
            )
    path = os.path.join(a.out, "robustness_summary.md")
    with open(path, "w") as fh:
        fh.write("\n".join(md))
    print(f"wrote {path} and robustness_*.json / *.png in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
