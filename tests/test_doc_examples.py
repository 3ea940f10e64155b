"""The Python examples of the documentation run as written.

Every ```python block of a page in PAGES runs, in the page's order, in one fresh interpreter
per page (one namespace per page, seeded, under PAGE_TIMEOUT_S), then the page's CHECKS
compare what the examples computed with what the page says they give. A block whose fence is
preceded by the line ``<!-- doc-test: skip (reason) -->`` is not run (mark only blocks that
cannot run in a test: torchrun, your own data sets, long training). Every block on the other
pages must carry that mark, so a new example cannot escape the test. A block that imports an
optional dependency that is not installed (torch, flwr, matplotlib, scikit-learn) is left out;
a page left with no block is skipped.

Run one page by hand: ``python tests/test_doc_examples.py docs/energy.md`` (every block that is
not marked; a failure's traceback points at the page's own line).
"""

from __future__ import annotations

import ast
import importlib.util
import linecache
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Pages whose examples run here, each in its own process, blocks in order.
PAGES = [
    "README.md",
    "docs/getting-started.md",
    "docs/flag.md",
    "docs/aggregation.md",
    "docs/rules.md",
    "docs/energy-usage.md",
    "docs/energy.md",
    "docs/energy-power.md",
    "docs/flower.md",
]

#: Pages this test does not read at all.
UNCHECKED: set[str] = set()

PAGE_TIMEOUT_S = 180

SKIP_MARK = re.compile(r"^\s*<!--\s*doc-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)")

#: Optional dependencies, by the module a block imports (first matching prefix wins).
OPTIONAL = {
    "flagcore.flower": "flwr",
    "flagcore.distributed": "torch",
    "flagcore.experiments": "torch",
    "flwr": "flwr",
    "torch": "torch",
    "matplotlib": "matplotlib",
    "sklearn": "sklearn",
}

#: Names a page leaves to the reader ("your gradients", "your trace"), defined in a namespace of
#: their own; only the listed names reach the page, so an import a block forgets still fails.
PRELUDES: dict[str, tuple[str, tuple[str, ...]]] = {
    "docs/rules.md": (
        "import numpy as np\n"
        "steps = 2\n"
        "stack_of_gradients = np.random.default_rng(0).standard_normal((15, 1000), np.float32)\n"
        "x = stack_of_gradients\n",
        ("steps", "stack_of_gradients", "x"),
    ),
    "docs/energy-usage.md": (
        "import numpy as np\n"
        "rng = np.random.default_rng(0)\n"
        "times = np.cumsum(rng.exponential(1 / 1.5, 50_000))\n"
        "work = rng.exponential(1.0, 50_000)\n",
        ("times", "work"),
    ),
}

#: After a page's blocks, in their namespace: the values the page states for its examples.
CHECKS = {
    "README.md": """
import numpy as np
n = grads.shape[1]
assert agg.shape == (n,) and agg.dtype == np.float32      # "(n,), float32"
assert byz.shape == (3, n) and byz.dtype == np.float32   # "(3, n), same framework as honest"
assert info.rule == "bulyan"
assert best.feasible and best.latency <= 0.8
""",
    "docs/getting-started.md": """
assert agg.shape == med.shape == krum.shape == (100_000,)
assert info.reconstruction_ratios.shape == (15,)
""",
    "docs/flag.md": """
import numpy as np
assert agg.shape == (1_000_000,) and agg.dtype == np.float32   # "(n,), float32"
assert info.weights.shape == info.reconstruction_ratios.shape == (15,)
assert 1 <= int(info.iterations) <= 5
""",
    "docs/aggregation.md": """
assert byz.shape == (3, 10_000)                           # "(3, n)"
assert agg.shape == (10_000,) and info.rule == "bulyan"
""",
    "docs/rules.md": """
assert g.shape == (1000,) and info.rule == "krum"
""",
    "docs/energy-usage.md": """
assert best.feasible and best.latency <= 0.8               # "least energy ... with E[T] <= 0.8"
assert a.stable and r.stable
""",
    "docs/energy-power.md": """
# "PowerModel(static=2.24, coeff=1.82, alpha=1.96)"
assert (round(model.static, 2), round(model.coeff, 2), round(model.alpha, 2)) == (2.24, 1.82, 1.96)
# the page's table, m = 0.3 at 1.8 GHz: 21.51 W, p99 5.04 +- 0.05 ms
assert abs(r.average_power - 21.51) < 0.1 and abs(r.p99 - 5.04) < 0.1
# the mix of 1.4 and 1.6 GHz beats 1.6 GHz alone (20.10 W) within the target
assert best.feasible and best.latency + best.latency_ci <= 6.0 and best.value < 20.10
""",
    "docs/energy.md": """
import math
import numpy as np
def total(split):
    return sum(float(np.sum(v)) for v in split.values())
# "sums to r.average_power", "sums to r.total_energy_per_request"
assert math.isclose(total(r.power_split), r.average_power, rel_tol=1e-9)
assert math.isclose(total(r.energy_split), r.total_energy_per_request, rel_tol=1e-9)
assert best.feasible and tuple(best.policy.thresholds) == (3,)
# the validation tables: threshold T = 2, lam 0.7 (tagged chain)
for got, want in [(ex.mean_response_time, 1.5216), (ex.p50, 1.2980),
                  (ex.percentile(0.9), 3.0798), (ex.p99, 5.0390)]:
    assert abs(got - want) < 1e-4, (got, want)
assert ex.error_bound <= 2e-12
# heterogeneous (4, 2) cancel, mixed servers, lam 1
for got, want in [(a.mean_response_time, 0.5680), (a.p99, 1.8898),
                  (a.energy_per_request, 2.8212)]:
    assert abs(got - want) < 1e-4, (got, want)
# the C-state example, full table: 14.25 +- 0.05 W, p99 4.40 +- 0.05 ms
assert abs(r.average_power - 14.25) < 0.1 and abs(r.p99 - 4.40) < 0.1
""",
}

OK = "doc-example-ok"


@dataclass
class Block:
    line: int  # the fence's line, 1-based
    code: str
    skip: str | None  # the reason of a skip mark


def extract(page: str) -> list[Block]:
    """The ```python blocks of ``page`` (relative to the repository root)."""
    lines = (ROOT / page).read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks = len(m["indent"]), m["ticks"]
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            j += 1
        if m["lang"] in ("python", "py"):
            body = [ln[indent:] if ln[:indent].strip() == "" else ln for ln in lines[i + 1 : j]]
            mark = SKIP_MARK.match(lines[i - 1]) if i > 0 else None
            out.append(Block(i + 1, "\n".join(body) + "\n", mark["reason"] if mark else None))
        i = j + 1
    return out


def needs(block: Block) -> set[str]:
    """The optional distributions ``block`` imports."""
    mods = set()
    for node in ast.walk(ast.parse(block.code)):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    out = set()
    for mod in mods:
        for prefix, dist in OPTIONAL.items():
            if mod == prefix or mod.startswith(prefix + "."):
                out.add(dist)
                break
    return out


def _installed(dist: str) -> bool:
    if dist == "torch" and os.environ.get("FLAGCORE_TEST_NO_TORCH") == "1":
        return False
    try:
        return importlib.util.find_spec(dist) is not None
    except (ImportError, ValueError):
        return False


def _markdown_pages() -> list[str]:
    return ["README.md"] + sorted(
        str(p.relative_to(ROOT)).replace(os.sep, "/") for p in (ROOT / "docs").glob("*.md")
    )


def _seed() -> None:
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)  # noqa: NPY002 (an example may use the legacy global generator)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)


def run_page(page: str, lines: list[int] | None = None) -> None:
    """Run the blocks of ``page`` (those at ``lines``, default every unmarked one) in one
    namespace, then its CHECKS; print OK and the fence's line after each block."""
    if os.environ.get("FLAGCORE_TEST_NO_TORCH") == "1":
        sys.modules["torch"] = None  # type: ignore[assignment]
    blocks = {b.line: b for b in extract(page)}
    if lines is None:
        lines = [b.line for b in blocks.values() if b.skip is None]
    ns: dict = {"__name__": "__doc_example__"}
    if page in PRELUDES:
        code, names = PRELUDES[page]
        pre: dict = {}
        exec(code, pre)
        ns.update({n: pre[n] for n in names})
    path = str(ROOT / page)
    for line in lines:
        _seed()
        # padded so that a traceback names the page's own line
        exec(compile("\n" * line + blocks[line].code, path, "exec"), ns)
        print(f"{OK} {line}", flush=True)
    if page in CHECKS:
        src, name = CHECKS[page], f"<CHECKS[{page!r}] of tests/test_doc_examples.py>"
        linecache.cache[name] = (len(src), None, src.splitlines(True), name)  # for the traceback
        exec(compile(src, name, "exec"), ns)
        print(f"{OK} checks", flush=True)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path):
    blocks = [b for b in extract(page) if b.skip is None]
    assert blocks, f"{page}: no runnable ```python block: take it out of PAGES"
    missing = {b.line: sorted(d for d in needs(b) if not _installed(d)) for b in blocks}
    run = [b.line for b in blocks if not missing[b.line]]
    if not run:
        pytest.skip(f"{page}: needs {sorted({d for m in missing.values() for d in m})}")
    import flagcore

    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    # the child imports the flagcore this process tests
    here = str(Path(flagcore.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [sys.executable, str(Path(__file__).resolve()), page, ",".join(map(str, run))]
    try:
        proc = subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{page}: the examples took more than {PAGE_TIMEOUT_S} s\n{e.stdout or ''}")
    done = [ln.split()[1] for ln in proc.stdout.splitlines() if ln.startswith(OK + " ")]
    assert proc.returncode == 0, (
        f"{page}: an example failed (ran: lines {done})\n{proc.stderr[-6000:]}"
    )
    want = [str(n) for n in run] + (["checks"] if page in CHECKS else [])
    assert done == want, f"{page}: ran {done}, expected {want}\n{proc.stderr[-3000:]}"


def test_every_other_block_is_marked():
    """A ```python block outside PAGES must say why it does not run, and none is a >>> session."""
    bad = []
    for page in _markdown_pages():
        if page in UNCHECKED:
            continue
        text = (ROOT / page).read_text()
        if re.search(r"^\s*>>> ", text, flags=re.M) or re.search(r"^\s*```pycon", text, re.M):
            bad.append(f"{page}: a >>> example (write it as a ```python block)")
        if page in PAGES:
            continue
        bad += [
            f"{page}:{b.line}: not run (add the page to PAGES, or mark the block)"
            for b in extract(page)
            if b.skip is None
        ]
    assert not bad, "\n".join(bad)


def test_marks_sit_on_a_fence():
    """A skip mark is on the line right before a ```python fence (elsewhere it marks nothing)."""
    bad = []
    for page in _markdown_pages():
        if page in UNCHECKED:
            continue
        lines = (ROOT / page).read_text().splitlines()
        for i, ln in enumerate(lines):
            if "doc-test:" in ln and not (
                SKIP_MARK.match(ln)
                and i + 1 < len(lines)
                and re.match(r"^\s*```(python|py)\s*$", lines[i + 1])
            ):
                bad.append(f"{page}:{i + 1}: {ln.strip()}")
    assert not bad, "\n".join(bad)


if __name__ == "__main__":
    try:
        run_page(
            sys.argv[1], [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else None
        )
    except BaseException:
        import traceback

        traceback.print_exc()  # through linecache: shows the CHECKS line too
        sys.exit(1)
