"""Worst-case robustness of the aggregation rules under adaptive attacks (flagcore's grid).

Runs a grid config (default: bench/robustness_grid_paper.json, the FA paper's scenario: 15
workers, f = 3, digits MLP, adaptive attacks, iid and Dirichlet(0.5) data), then the same grid
without attack (the clean reference), and writes into --out:

    results.json          every cell and the worst case per rule (strict JSON)
    clean_results.json    the same grid with attack "none"
    heatmap_*.png         rule x attack per heterogeneity, rule x heterogeneity
    worst_case.md         the table docs/evaluation.md quotes

    python bench/robustness_grid.py               # the committed run (~12 min on 2 shared cores)
    python bench/robustness_grid.py --quick               # 30 steps, 1 seed: a smoke run
    python bench/robustness_grid.py --grid my.json --out /tmp/g
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

from flagcore.experiments.grid import (
    check_out_dir,
    load_grid,
    make_quick,
    print_grid_summary,
    run_grid,
    write_grid_outputs,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--grid",
        default=os.path.join(HERE, "robustness_grid_paper.json"),
        help="grid config (JSON)",
    )
    ap.add_argument("--quick", action="store_true", help="cap the grid at 30 steps and 1 seed")
    ap.add_argument(
        "--out", default=os.path.join(HERE, "results", "robustness_grid"), help="output folder"
    )
    ap.add_argument("--no-clean", action="store_true", help="skip the no-attack reference run")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def _fmt(v) -> str:
    return "n/a (diverged)" if v is None else f"{v:.3f}"


def markdown(res: dict, clean: dict | None, command: str) -> str:
    g = res["grid"]
    b = g["base"]
    hets = g["heterogeneity"]
    worst = {(w["rule"], w["byzantine"], w["heterogeneity"]): w for w in res["worst_case"]}
    cw = (
        {}
        if clean is None
        else {(w["rule"], w["byzantine"], w["heterogeneity"]): w for w in clean["worst_case"]}
    )
    lines = [
        f"Command: `{command}` ({res['elapsed_s'] / 60:.1f} min"
        + ("" if clean is None else f" + {clean['elapsed_s'] / 60:.1f} min without attack")
        + ").",
        "",
        f"{res['dataset']['name']} / {res['model']['name']} "
        f"({res['model']['parameters']} parameters), {b.get('workers')} workers, "
        f"{b.get('steps')} steps, batch {b.get('batch_size')} per worker, "
        f"lr {', '.join(map(str, g['lr']))}, seeds {res['seeds']}; "
        f"attacks: {', '.join(g['attacks'])}.",
        "",
    ]
    for f in g["byzantine"]:
        head = (
            "| rule | "
            + " | ".join(
                f"{h}: worst case (attack)" + ("" if clean is None else f" | {h}: no attack")
                for h in hets
            )
            + " |"
        )
        lines += [
            f"f = {f}:",
            "",
            head,
            "|" + "---|" * (1 + len(hets) * (1 if clean is None else 2)),
        ]
        for r in res["rules"]:
            cells = []
            for h in hets:
                w = worst[(r, f, h)]
                cells.append(f"{_fmt(w['accuracy'])} ({w['worst_attack']})")
                if clean is not None:
                    cells.append(_fmt(cw[(r, f, h)]["accuracy"]))
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Accuracy per attack (rows: rules; at each rule's chosen lr):", ""]
    cell = {
        (c["rule"], c["byzantine"], c["heterogeneity"], c["lr"], c["attack"]): c["accuracy_mean"]
        for c in res["cells"]
    }
    for f in g["byzantine"]:
        for h in hets:
            lines += [
                f"f = {f}, {h}:",
                "",
                "| rule | " + " | ".join(g["attacks"]) + " |",
                "|" + "---|" * (1 + len(g["attacks"])),
            ]
            for r in res["rules"]:
                lr = worst[(r, f, h)]["lr"]
                lines.append(
                    f"| {r} | "
                    + " | ".join(_fmt(cell[(r, f, h, lr, a)]) for a in g["attacks"])
                    + " |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    grid = load_grid(args.grid)
    if args.quick:
        grid = make_quick(grid)
    check_out_dir(args.out, "robustness_grid")
    command = (
        "python bench/robustness_grid.py"
        + (" --quick" if args.quick else "")
        + ("" if args.grid == parse_args([]).grid else f" --grid {args.grid}")
    )
    print(
        f"{len(grid.combinations())} runs of {len(grid.rules)} rules; writing to {args.out}",
        flush=True,
    )
    res = run_grid(grid, progress=not args.no_progress, log=lambda s: print(s, flush=True))
    print_grid_summary(res)
    written = write_grid_outputs(res, args.out)
    clean = None
    if not args.no_clean:
        cg = copy.deepcopy(grid)
        cg.attacks, cg.attack_params = ["none"], {}
        clean = run_grid(cg, progress=not args.no_progress, log=lambda s: print(s, flush=True))
        written += write_grid_outputs(clean, args.out, plots=False, prefix="clean_")
    md = markdown(res, clean, command)
    path = os.path.join(args.out, "worst_case.md")
    with open(path, "w") as fh:
        fh.write(md + "\n")
    written.append(path)
    print(md)
    print("wrote " + ", ".join(os.path.relpath(w) for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
