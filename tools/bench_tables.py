"""Write the benchmark tables of docs/benchmarks.md from bench/results/*.json.

    python tools/bench_tables.py            # rewrite every generated section of the page
    python tools/bench_tables.py --check    # exit 1 when a section is out of date (CI, tests)

The page is hand-written prose with generated sections between markers
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->``; each NAME has a renderer below that
reads one results file. A results file whose layout a renderer does not recognise gives a
one-line note in its section instead of a crash, and every results file no renderer reads is
listed in the ``other`` section, so a new benchmark shows up on the page the next time this
runs. Only the standard library is used: no flagcore build is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
PAGE = os.path.join(ROOT, "docs", "benchmarks.md")
REGENERATE = "python tools/bench_tables.py"


def _load(name: str) -> Any:
    with open(os.path.join(RESULTS, name)) as fh:
        return json.load(fh)


def _ms(seconds: float) -> str:
    return _num(seconds * 1e3)


def _num(v: Any, digits: int = 3) -> str:
    """A short, stable decimal rendering (3 significant digits, no exponent below 1e6)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    return f"{v:.{decimals}f}"


def _sci(n: float) -> str:
    """1e+06 -> 1e6."""
    return f"{n:.0e}".replace("e+0", "e").replace("e+", "e")


def _rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k"
    return f"{v:.0f}"


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _machine(build: dict | None) -> str:
    if not build:
        return ""
    return (
        f"flagcore {build.get('version', '?')}, SIMD {build.get('simd_level', '?')}, "
        f"{build.get('num_threads', '?')} native threads, {build.get('compiler', '?')}, "
        f"torch {build.get('torch', '-')}"
    )


# ---------------------------------------------------------------- one renderer per results file
def flag_cpu() -> list[str]:
    d = _load("flag_cpu.json")
    m = d.get("meta", {})
    lines = [
        f"Recorded {m.get('date', '?')} at commit `{m.get('commit', '?')}` "
        f"on {m.get('cpu_count', '?')} CPUs ({m.get('threads', '?')} threads; "
        f"{_machine(m.get('build'))}).",
        "",
    ]
    rows = []
    for r in sorted(d["results"], key=lambda r: (r["n"], r["p"])):
        svd = r.get("svd_torch_s")
        ok_svd = svd is not None and math.isfinite(float(svd))
        rows.append(
            [
                str(r["p"]),
                _sci(r["n"]),
                r["config"],
                _ms(r["mean_numpy_s"]),
                _ms(r["flag_s"]),
                f"{r['flag_over_mean']:.2f}",
                _ms(svd) if ok_svd else "skipped (matrix too large)",
                f"{r['svd_over_flag']:.0f}x" if ok_svd else "-",
                f"{r['rel_err_vs_svd64']:.1e}" if r.get("rel_err_vs_svd64") is not None else "-",
            ]
        )
    lines += _table(
        [
            "p",
            "n",
            "FA",
            "numpy mean (ms)",
            "flagcore FA (ms)",
            "FA / mean",
            "SVD method, torch (ms)",
            "SVD / FA",
            "rel. error vs float64 SVD",
        ],
        rows,
    )
    goals = d.get("goals")
    if goals:
        lines += [
            "",
            "Goals recorded with the run: "
            + ", ".join(f"`{k}`: {'met' if v else 'missed'}" for k, v in goals.items())
            + ".",
        ]
    return lines


def rules() -> list[str]:
    d = _load("bench_rules.json")
    rows = d["rows"]
    meta = d.get("meta", {})
    r0 = rows[0]
    lines = [
        f"p = {r0['p']}, f = {r0['f']}, n = {_sci(r0['n'])}, float32 "
        f"({meta.get('cpu_count', '?')} CPUs; {_machine(meta.get('build'))}).",
        "",
    ]
    body = []
    for r in rows:
        peer = r.get("peer", "-")
        has_peer = peer not in ("-", "", None)
        body.append(
            [
                r["rule"],
                _num(r["flagcore_ms"]),
                peer if has_peer else "-",
                _num(r["peer_ms"]) if has_peer else "",
                f"{r['speedup']:.1f}x" if has_peer else "",
                r.get("note", ""),
            ]
        )
    return lines + _table(["rule", "flagcore (ms)", "peer", "peer (ms)", "speed-up", "note"], body)


def energy() -> list[str]:
    d = _load("energy.json")
    lines = [
        f"{d['requests']:,} requests per flagcore run, {d['simpy_requests']:,} per SimPy run, "
        f"one thread, {d.get('cpus', '?')} CPUs.",
        "",
    ]
    rows = [
        [
            c["name"],
            f"{c['flagcore_mean']:.3f} ± {c['flagcore_ci']:.3f}",
            f"{c['simpy_mean']:.3f} ± {c['simpy_ci']:.3f}",
            _rate(c["flagcore_requests_per_s_wall"]),
            _rate(c["simpy_requests_per_s_wall"]),
            f"{c['speedup_wall']:.0f}x",
        ]
        for c in d["cases"]
    ]
    lines += _table(
        ["case", "flagcore E[T]", "SimPy E[T]", "flagcore req/s", "SimPy req/s", "speed-up"], rows
    )
    reps = d.get("replication_scaling") or []
    if reps:
        lines += ["", "Replications of (4, 2), one per thread:", ""]
        lines += _table(
            ["threads", "wall (s)", "requests/s", "busy cores"],
            [
                [
                    str(r["threads"]),
                    f"{r['wall_s']:.2f}",
                    _rate(r["requests_per_s"]),
                    f"{r['busy_cores']:.2f}",
                ]
                for r in reps
            ],
        )
    return lines


def energy_accuracy() -> list[str]:
    d = _load("energy_accuracy.json")
    rows = [
        [
            f"({r['n']},{r['k']})",
            f"{r['rho']:g}",
            _num(r["sim"]),
            _num(r["tandem"]),
            _pct(r["rel_err"]),
            _num(r["sim_p99"]),
            _num(r["approx_p99"]),
            _pct(r["p99_rel_err"]),
        ]
        for r in d["tandem"]
    ]
    lines = ["One speed: the tandem approximation against simulation.", ""]
    lines += _table(
        ["(n,k)", "rho", "sim E[T]", "tandem", "error", "sim p99", "hypoexp. p99", "error"], rows
    )
    lv = d.get("levels") or []
    if lv:
        lines += [
            "",
            "Two speed levels, (4, 2), rates 1 and 3, powers 1 and 9, p = 0.5: "
            "the three effective rates against simulation.",
            "",
        ]
        lines += _table(
            [
                "arrival rate",
                "sim E[T]",
                "race",
                "harmonic",
                "arithmetic",
                "sim energy/request",
                "race energy/request",
            ],
            [
                [
                    f"{r['lam']:g}",
                    f"{_num(r['sim'])} ± {_num(r['ci'], 2)}",
                    _num(r["race"]),
                    _num(r["harmonic"]),
                    _num(r["arithmetic"]),
                    f"{_num(r['sim_energy'])} ± {_num(r['sim_energy_ci'], 2)}",
                    _num(r["race_energy"]),
                ]
                for r in lv
            ],
        )
    return lines


def distributed() -> list[str]:
    d = _load("distributed.json")
    c = d["config"]
    ddp = d["ddp"]
    la = d.get("loadavg_before")
    lines = [
        f"{c['world']} processes, {c['threads']} thread each, median ms per step over "
        f"{c['repeat']} steps after {c['warmup']} warm-up, rank 0"
        + (f"; load average before the run {la[0]:.1f}" if la else "")
        + (f"; {_machine(d.get('build'))}" if d.get("build") else "")
        + ". x DDP: the step time over plain DDP's in the same run; MiB: sent by all ranks per "
        "step; gather / agg: the hook's all_gather (launch to completion, overlapping the "
        "backward) and aggregation ms per step.",
        "",
    ]
    rows = []
    for n in c["sizes"]:
        at = [r for r in ddp if r["target"] == n and "kind" in r]
        base = next((r for r in at if r["kind"] == "ddp"), None)
        for r in at:
            rows.append(
                [
                    f"{r['n']:,}",
                    r["kind"],
                    r["rule"],
                    _num(r["step_ms"], 3),
                    _num(r["step_ms"] / base["step_ms"], 3) if base else "-",
                    _num(r["bytes_per_step"] / 2**20, 3),
                    _num(r.get("comm_ms"), 3),
                    _num(r.get("aggregate_ms"), 3),
                    str(r.get("buckets", "")),
                ]
            )
    lines += _table(
        ["params", "config", "rule", "step ms", "x DDP", "MiB", "gather", "agg", "buckets"], rows
    )
    coll = [r for r in ddp if r.get("rule") == "collectives"]
    if coll:
        lines += ["", "One collective of the whole gradient alone (float32, median ms):", ""]
        lines += _table(
            ["n", "allreduce", "all_gather", "ratio"],
            [
                [
                    _sci(r["n"]),
                    _num(r["allreduce_ms"], 3),
                    _num(r["all_gather_ms"], 3),
                    _num(r["all_gather_ms"] / r["allreduce_ms"], 3),
                ]
                for r in coll
            ],
        )
    gpu = d.get("gpu_aggregation") or []
    lines += [
        "",
        f"GPU aggregation rows in this file: {len(gpu)}"
        + (" (no GPU run recorded)." if not gpu else "."),
    ]
    return lines


# Scenario (c) with 15 workers is the same run as (b), so robustness_c15.json is read but not shown.
_SCENARIOS = [
    ("a", "(a) 3/15 random"),
    ("b", "(b) 3/15 distorted"),
    ("c30", "(c) 6/30 distorted"),
    ("c60", "(c) 12/60 distorted"),
]


def _acc(e: dict) -> str:
    return f"{e['final_accuracy_mean']:.3f} ± {e['final_accuracy_std']:.3f}"


def robustness() -> list[str]:
    runs = [
        (lab, _load(f"robustness_{key}.json"))
        for key, lab in _SCENARIOS
        if os.path.exists(os.path.join(RESULTS, f"robustness_{key}.json"))
    ]
    if not runs:
        return ["No robustness results recorded."]
    rules_order: list[str] = []
    for _, d in runs:
        rules_order += [r for r in d["rules"] if r not in rules_order]
    rows = []
    for lab, d in runs:
        best = max(e["final_accuracy_mean"] for e in d["rules"].values())
        cells = []
        for r in rules_order:
            e = d["rules"].get(r)
            if e is None:
                cells.append("-")
            else:
                s = _acc(e)
                cells.append(f"**{s}**" if e["final_accuracy_mean"] == best else s)
        rows.append([lab, *cells])
    lines = ["Final test accuracy, mean ± std over the seeds (best per row in bold).", ""]
    lines += _table(["scenario", *rules_order], rows)
    fa = [
        (lab, _load(f"robustness_fa_{key}.json"))
        for key, lab in (("a", "(a) random"), ("b", "(b) distorted"))
        if os.path.exists(os.path.join(RESULTS, f"robustness_fa_{key}.json"))
    ]
    if fa:
        variants = [r for r in fa[0][1]["rules"] if r.startswith("flag")]
        lines += ["", "FA variants (`flag[...]` sets FA's parameters):", ""]
        lines += _table(
            ["scenario", *[f"`{v}`" for v in variants]],
            [
                [lab, *[_acc(d["rules"][v]) if v in d["rules"] else "-" for v in variants]]
                for lab, d in fa
            ],
        )
    return lines


RENDERERS: dict[str, tuple[Callable[[], list[str]], tuple[str, ...]]] = {
    "flag_cpu": (flag_cpu, ("flag_cpu.json",)),
    "rules": (rules, ("bench_rules.json",)),
    "energy": (energy, ("energy.json",)),
    "energy_accuracy": (energy_accuracy, ("energy_accuracy.json",)),
    "distributed": (distributed, ("distributed.json",)),
    "robustness": (
        robustness,
        tuple(f"robustness_{k}.json" for k, _ in _SCENARIOS)
        + ("robustness_c15.json", "robustness_fa_a.json", "robustness_fa_b.json"),
    ),
}
# Results files that have their own generated page or are read elsewhere.
ELSEWHERE = {"reliability_matrix.json": "the Reliability page (tools/reliability_table.py)"}


def other() -> list[str]:
    read = {f for _, files in RENDERERS.values() for f in files} | set(ELSEWHERE)
    rest = sorted(f for f in os.listdir(RESULTS) if f.endswith(".json") and f not in read)
    if not rest:
        return ["Every results file is rendered above."]
    return ["Results files without a table on this page yet (open them for the numbers):", ""] + [
        f"- `bench/results/{f}`" for f in rest
    ]


def render(name: str) -> str:
    fn, files = RENDERERS.get(name, (other, ()))
    try:
        body = fn()
    except FileNotFoundError:
        body = (
            [f"No results recorded yet (`bench/results/{files[0]}` is missing)."]
            if files
            else ["-"]
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        body = [
            f"`{', '.join(files)}`: layout not recognised by `{REGENERATE}` "
            f"({type(exc).__name__}: {exc}); update its renderer."
        ]
    head = f"<!-- generated by `{REGENERATE}` from bench/results; do not edit by hand -->"
    return "\n".join([head, "", *body, ""])


_SECTION = re.compile(r"(<!-- bench:([a-z_]+):begin -->\n)(.*?)(<!-- bench:\2:end -->)", re.S)


def regenerate(text: str) -> str:
    """text with every generated section replaced by what the results files say today."""
    return _SECTION.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument(
        "--page",
        default=PAGE,
        help="the Markdown page with the markers (default docs/benchmarks.md)",
    )
    ap.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when the page is out of date"
    )
    args = ap.parse_args(argv)
    with open(args.page) as fh:
        text = fh.read()
    missing = sorted((set(RENDERERS) | {"other"}) - {m.group(2) for m in _SECTION.finditer(text)})
    if missing:
        print(
            f"{os.path.relpath(args.page, ROOT)}: no section for {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    new = regenerate(text)
    if new == text:
        print(f"{os.path.relpath(args.page, ROOT)} is up to date")
        return 0
    if args.check:
        print(f"out of date: {os.path.relpath(args.page, ROOT)}; regenerate it with `{REGENERATE}`")
        return 1
    with open(args.page, "w") as fh:
        fh.write(new)
    print(f"wrote {os.path.relpath(args.page, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
