"""Run the bad-input matrix (tests/reliability_cases.py) and write its results.

    python tools/reliability_table.py            # write bench/results/reliability_matrix.json and
                                                 # the generated part of docs/reliability.md
    python tools/reliability_table.py --check    # exit 1 when any of them is out of date

Run from the repository root with flagcore installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import reliability_cases as rc  # noqa: E402

PAGE = os.path.join(ROOT, "docs", "reliability.md")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--out", default=os.path.join(ROOT, "bench", "results", "reliability_matrix.json")
    )
    ap.add_argument(
        "--pages",
        "--readme",
        dest="pages",
        nargs="*",
        default=[PAGE],
        help="Markdown files whose marked section is replaced (default docs/reliability.md)",
    )
    ap.add_argument(
        "--check", action="store_true", help="only compare; exit 1 when something is out of date"
    )
    args = ap.parse_args(argv)

    results = rc.run_all()
    bugs = [r for r in results if r.bug]
    data = {"cases": [r.__dict__ for r in results]}
    section = rc.render(results, rc.property_tests())
    stale = []
    new_json = json.dumps(data, indent=1) + "\n"
    old_json = _read(args.out) if os.path.exists(args.out) else None
    if old_json != new_json:
        stale.append(args.out)
        if not args.check:
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as fh:
                fh.write(new_json)
    for path in args.pages:
        if os.path.exists(path):
            text = _read(path)
            if rc.BEGIN not in text:
                continue
            new = rc.splice(text, section)
        else:
            continue
        if new != text:
            stale.append(path)
            if not args.check:
                with open(path, "w") as fh:
                    fh.write(new)
    n_err = sum(
        r.outcome.split(":")[0].endswith("Error") or "Error (a" in r.outcome for r in results
    )
    print(
        f"{len(results)} cases: {n_err} refused with an error, "
        f"{len(results) - n_err - len(bugs)} returned, {len(bugs)} bugs"
    )
    for r in bugs:
        print(f"  BUG  {r.entry} | {r.input} | {r.outcome}")
    for path in stale:
        print(("out of date: " if args.check else "wrote ") + os.path.relpath(path, ROOT))
    return 1 if bugs or (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
