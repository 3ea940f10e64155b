"""The bad-input matrix: every public entry point against every kind of bad input.

``run_all()`` calls each case and records its outcome as a short, machine-independent string:
"finite" (plus how many workers were excluded, where the entry point reports it),
"stable=False, E[T]=inf" for a closed form of an unstable load, or "<Error>: <message>". A
case whose outcome is anything else (another exception, a non-finite result from finite
input, a changed input) is marked "BUG: ..." and fails tests/test_reliability_matrix.py.

``render(results)`` turns the outcomes into the README's Reliability section;
tools/reliability_table.py writes it (and bench/results/reliability_matrix.json), and the test
checks that the committed section is what the cases produce today.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

BEGIN = "<!-- reliability:begin -->"
END = "<!-- reliability:end -->"
REGENERATE = "python tools/reliability_table.py"


def _g(p: int = 9, n: int = 16, dtype=np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) + rng.standard_normal((p, n))).astype(dtype)


def _with(x: np.ndarray, fn: Callable[[np.ndarray], None]) -> np.ndarray:
    x = x.copy()
    fn(x)
    return x


def _set(rows, value):
    def f(x):
        x[rows] = value

    return f


def _readonly(x):
    x.setflags(write=False)
    return x


# ---------------------------------------------------------------- data inputs (the matrix)
F64 = np.float64
DATA = [
    ("valid float32 (p=9, n=16)", lambda: _g()),
    ("float64", lambda: _g(dtype=F64)),
    ("float16 (computed in float32)", lambda: _g(dtype=np.float16)),
    ("one worker all NaN", lambda: _with(_g(), _set(3, np.nan))),
    ("one worker all +Inf", lambda: _with(_g(), _set(3, np.inf))),
    ("one NaN value in one worker", lambda: _with(_g(), _set((3, 5), np.nan))),
    ("one -Inf value in two workers", lambda: _with(_g(), _set(([1, 6], [0, 9]), -np.inf))),
    ("4 of 9 workers NaN (more than f)", lambda: _with(_g(), _set([0, 2, 4, 6], np.nan))),
    ("every worker NaN", lambda: np.full((9, 16), np.nan, np.float32)),
    ("one zero worker", lambda: _with(_g(), _set(2, 0.0))),
    ("every worker zero", lambda: np.zeros((9, 16), np.float32)),
    ("every worker identical", lambda: np.repeat(_g()[:1], 9, axis=0)),
    (
        "x and -x only (cancelling)",
        lambda: np.concatenate([np.repeat(_g()[:1], 5, 0), -np.repeat(_g()[:1], 4, 0)]),
    ),
    (
        "huge float64 rows (1e200: squared norm overflows)",
        lambda: _with(_g(dtype=F64), _set([1, 5], 1e200)),
    ),
    (
        "float64 near DBL_MAX everywhere (0.9 max)",
        lambda: np.full((9, 16), 0.9 * np.finfo(F64).max),
    ),
    (
        "float32 near FLT_MAX everywhere (0.9 max)",
        lambda: np.full((9, 16), 0.9 * np.finfo(np.float32).max, np.float32),
    ),
    ("subnormal float64 (1e-310)", lambda: _g(dtype=F64) * 1e-310),
    ("rows of scales 1e-30 .. 1e30", lambda: _g(dtype=F64) * np.logspace(-30, 30, 9)[:, None]),
    ("p = 1", lambda: _g(p=1)),
    ("p = 128", lambda: _g(p=128)),
    ("n = 1", lambda: _g(n=1)),
    ("n = 0 (empty gradients)", lambda: np.zeros((9, 0), np.float32)),
    ("p = 0 (no workers)", lambda: np.zeros((0, 16), np.float32)),
    (
        "batched (3, 9, 16), NaN worker in problem 1",
        lambda: _with(np.stack([_g(seed=s) for s in range(3)]), _set((1, 4), np.nan)),
    ),
    ("Fortran order", lambda: np.asfortranarray(_g())),
    ("strided view (every other column)", lambda: _g(n=32)[:, ::2]),
    ("read-only array", lambda: _readonly(_g())),
    ("list of 9 (4, 4) arrays", lambda: [r.reshape(4, 4) for r in _g()]),
    (
        "list with mismatched shapes",
        lambda: [np.zeros(16, np.float32)] * 8 + [np.zeros(15, np.float32)],
    ),
    ("list with mixed dtypes", lambda: [np.zeros(16, np.float32)] * 8 + [np.zeros(16)]),
    ("list of Python lists", lambda: [[0.0] * 16] * 9),
    ("1-D array", lambda: _g()[0]),
    ("4-D array", lambda: _g().reshape(1, 1, 9, 16)),
    ("int64 array", lambda: np.arange(9 * 16).reshape(9, 16)),
    ("bool array", lambda: np.ones((9, 16), bool)),
    ("complex array", lambda: _g().astype(np.complex64)),
    ("object array", lambda: _g().astype(object)),
    ("None", lambda: None),
    ("a string", lambda: "gradients"),
]


def _entry_points() -> list:
    import flagcore
    from flagcore.attacks import attack

    def layers(x):  # layer 0: a valid stack of x's dtype, so that only layer 1 is under test
        dt = x.dtype if isinstance(x, np.ndarray) and x.dtype.kind == "f" else np.float32
        return flagcore.flag_aggregate_layers([_g(p=9, n=5, seed=7, dtype=dt), x], return_info=True)

    def rule(name, **kw):
        return lambda x: flagcore.aggregate(x, name, return_info=True, **kw)

    return [
        ("flag_aggregate", lambda x: flagcore.flag_aggregate(x, return_info=True)),
        ("flag_aggregate_layers (as layer 1)", layers),
        ("aggregate mean", rule("mean")),
        ("aggregate median", rule("median")),
        ("aggregate trimmed_mean f=1", rule("trimmed_mean", f=1)),
        ("aggregate phocas f=1", rule("phocas", f=1)),
        ("aggregate krum f=1", rule("krum", f=1)),
        ("aggregate bulyan f=1", rule("bulyan", f=1)),
        ("aggregate geometric_median", rule("geometric_median")),
        ("aggregate centered_clipping", rule("centered_clipping")),
        ("aggregate flag pre=nnm f=1", rule("flag", f=1, pre="nnm")),
        ("attacks.attack alie f=2", lambda x: attack("alie", x, 2)),
    ]


# ---------------------------------------------------------------- parameter inputs
def _param_cases() -> list:
    import flagcore
    from flagcore import energy
    from flagcore.attacks import attack
    from flagcore.rules import CenteredClipping

    x = _g()
    two = [(1.0, 1.0, 0.5), (2.0, 4.0, 0.5)]

    def sim(**kw):
        return energy.simulate(4, 2, kw.pop("lam", 1.0), kw.pop("levels", two), requests=2000, **kw)

    apx = lambda **kw: energy.approximate(4, 2, kw.pop("lam", 1.0), kw.pop("levels", two), **kw)  # noqa: E731
    fa = lambda **kw: flagcore.flag_aggregate(x, **kw)  # noqa: E731
    ag = lambda rule, **kw: flagcore.aggregate(x, rule, **kw)  # noqa: E731
    return [
        ("flag_aggregate", "r = 0", lambda: fa(r=0)),
        ("flag_aggregate", "r > p", lambda: fa(r=10)),
        ("flag_aggregate", "r = 2.0 (float)", lambda: fa(r=2.0)),
        ("flag_aggregate", "lam = -1", lambda: fa(lam=-1.0)),
        ("flag_aggregate", "lam = NaN", lambda: fa(lam=math.nan)),
        ("flag_aggregate", "max_iter = 0", lambda: fa(max_iter=0)),
        ("flag_aggregate", "eps = 0", lambda: fa(eps=0.0)),
        ("flag_aggregate", "tol = -1", lambda: fa(tol=-1.0)),
        ("flag_aggregate", "scale = 'max'", lambda: fa(scale="max")),
        ("flag_aggregate", "return_info = 1", lambda: fa(return_info=1)),
        ("flag_aggregate_layers", "not a list", lambda: flagcore.flag_aggregate_layers(x)),
        ("flag_aggregate_layers", "empty list", lambda: flagcore.flag_aggregate_layers([])),
        (
            "flag_aggregate_layers",
            "float32 and float64 layers",
            lambda: flagcore.flag_aggregate_layers([x, x.astype(F64)]),
        ),
        (
            "flag_aggregate_layers",
            "r > smallest p",
            lambda: flagcore.flag_aggregate_layers([x, x[:3]], r=4),
        ),
        ("aggregate", "unknown rule", lambda: ag("average")),
        ("aggregate", "trimmed_mean without f", lambda: ag("trimmed_mean")),
        ("aggregate", "f = -1", lambda: ag("median", f=-1)),
        ("aggregate", "krum f = 4 with p = 9", lambda: ag("krum", f=4)),
        ("aggregate", "bulyan f = 2 with p = 9", lambda: ag("bulyan", f=2)),
        ("aggregate", "multi_krum m > p - f", lambda: ag("multi_krum", f=1, m=9)),
        ("aggregate", "pre = 'sort'", lambda: ag("median", pre="sort")),
        (
            "aggregate",
            "bucketing leaves too few rows",
            lambda: ag("trimmed_mean", f=3, pre="bucketing"),
        ),
        ("aggregate", "bucket_size = 0", lambda: ag("median", pre="bucketing", bucket_size=0)),
        ("aggregate", "unknown parameter", lambda: ag("median", tau=1.0)),
        ("aggregate", "geometric_median nu = 0", lambda: ag("geometric_median", nu=0.0)),
        ("aggregate", "centered_clipping tau = -1", lambda: ag("centered_clipping", tau=-1.0)),
        (
            "aggregate",
            "centered_clipping reference of wrong shape",
            lambda: ag("centered_clipping", reference=np.zeros(3)),
        ),
        (
            "aggregate",
            "centered_clipping reference with NaN",
            lambda: ag("centered_clipping", reference=np.full(16, np.nan)),
        ),
        (
            "aggregate",
            "reference = 'previous'",
            lambda: ag("centered_clipping", reference="previous"),
        ),
        ("CenteredClipping", "reference = 'last'", lambda: CenteredClipping(reference="last")),
        ("attacks.attack", "unknown attack", lambda: attack("flip", x, 2)),
        ("attacks.attack", "f = -1", lambda: attack("random", x, -1)),
        ("attacks.attack", "alie with one honest worker", lambda: attack("alie", x[:1], 2)),
        ("attacks.attack", "zero fraction = 2", lambda: attack("zero", x, 2, fraction=2.0)),
        ("attacks.attack", "mimic target out of range", lambda: attack("mimic", x, 2, target=9)),
        ("attacks.attack", "unknown parameter", lambda: attack("ipm", x, 2, scale=2.0)),
        ("set_num_threads", "n = -1", lambda: flagcore.set_num_threads(-1)),
        ("energy.simulate", "k > n", lambda: energy.simulate(2, 3, 0.5, two)),
        ("energy.simulate", "n = 2.5", lambda: energy.simulate(2.5, 1, 0.5, two)),
        ("energy.simulate", "arrival_rate = NaN", lambda: sim(lam=math.nan)),
        ("energy.simulate", "arrival_rate = 0", lambda: sim(lam=0.0)),
        (
            "energy.simulate",
            "probabilities sum to 0.9",
            lambda: sim(levels=[(1.0, 1.0, 0.5), (2.0, 4.0, 0.4)]),
        ),
        ("energy.simulate", "negative rate", lambda: sim(levels=[(-1.0, 1.0, 1.0)])),
        ("energy.simulate", "negative power", lambda: sim(levels=[(1.0, -1.0, 1.0)])),
        (
            "energy.simulate",
            "level (rate, power) without probability",
            lambda: sim(levels=[(1.0, 1.0)]),
        ),
        ("energy.simulate", "empty levels", lambda: sim(levels=[])),
        ("energy.simulate", "unknown service", lambda: sim(service="weibull")),
        (
            "energy.simulate",
            "Pareto alpha = 1 (infinite mean)",
            lambda: sim(service=("pareto", 1.0)),
        ),
        (
            "energy.simulate",
            "empirical samples with a negative",
            lambda: sim(service=("empirical", [1.0, -1.0])),
        ),
        ("energy.simulate", "requests = 0", lambda: energy.simulate(4, 2, 1.0, two, requests=0)),
        ("energy.simulate", "seed = -1", lambda: sim(seed=-1)),
        ("energy.simulate", "threads = 0", lambda: sim(threads=0)),
        ("energy.simulate", "k * rate >= n * fastest rate", lambda: sim(lam=5.0)),
        (
            "energy.simulate",
            "k = n, load >= 1 per server",
            lambda: energy.simulate(3, 3, 1.7, two, requests=2000),
        ),
        (
            "energy.simulate",
            "unstable run (grows), on_unstable='raise'",
            lambda: energy.simulate(4, 2, 3.3, two, requests=50_000, seed=1),
        ),
        ("energy.simulate", "on_unstable = 'ignore'", lambda: sim(on_unstable="ignore")),
        ("energy.approximate", "unstable load", lambda: apx(lam=5.0)),
        ("energy.approximate", "method = 'geometric'", lambda: apx(method="geometric")),
        ("energy.approximate", "idle_power = NaN", lambda: apx(idle_power=math.nan)),
        ("energy.sweep", "empty values", lambda: energy.sweep(4, 2, 1.0, two, values=[])),
        ("energy.sweep", "over = 'n'", lambda: energy.sweep(4, 2, 1.0, two, over="n", values=[1])),
        (
            "energy.sweep",
            "p value 1.5",
            lambda: energy.sweep(4, 2, 1.0, two, values=[1.5], run_simulation=False),
        ),
        ("energy.optimize", "target = -1", lambda: energy.optimize(4, 2, 1.0, two, target=-1.0)),
        (
            "energy.optimize",
            "grid = 1",
            lambda: energy.optimize(4, 2, 1.0, two, target=5.0, grid=1),
        ),
        (
            "energy.optimize",
            "evaluator = 'guess'",
            lambda: energy.optimize(4, 2, 1.0, two, target=5.0, evaluator="guess"),
        ),
        (
            "energy.optimize",
            "unreachable target",
            lambda: energy.optimize(4, 2, 1.0, two, target=1e-6),
        ),
    ]


# ---------------------------------------------------------------- running and describing
@dataclass
class Outcome:
    group: str  # "data" (the matrix) or "parameters"
    entry: str
    input: str
    outcome: str

    @property
    def bug(self) -> bool:
        return self.outcome.startswith("BUG")


def _snapshot(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, list):
        return [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in x]
    return x


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    return True


def _excluded(info: Any) -> str:
    excl = getattr(info, "excluded", None)
    if excl is None:
        return ""
    e = np.asarray(excl)
    return f", {int(e.sum())} of {e.size} excluded" if e.any() else ""


def _describe(res: Any, finite_input: bool, entry: str) -> str:
    from flagcore.energy import ApproxResult, OptimizeResult, SimResult, SweepResult

    if res is None:
        return "returns None"
    if isinstance(res, SimResult):
        return (
            f"finite result, stable={res.stable}"
            if math.isfinite(res.mean_response_time)
            else "BUG: non-finite"
        )
    if isinstance(res, ApproxResult):
        return (
            f"stable={res.stable}, E[T]={'inf' if math.isinf(res.mean_response_time) else 'finite'}"
        )
    if isinstance(res, OptimizeResult):
        return f"feasible={res.feasible}"
    if isinstance(res, SweepResult):
        return f"{len(res.points)} points"
    info = None
    if isinstance(res, tuple) and len(res) == 2:
        res, info = res
    if isinstance(res, list):  # flag_aggregate_layers: the layer under test is the second
        res, info = res[-1], (info[-1] if info else None)
    if not isinstance(res, np.ndarray):
        return f"BUG: returned {type(res).__name__}"
    if entry.startswith("attacks") and res.size and not np.isfinite(res).all():
        return f"non-finite {res.shape} (from non-finite honest input)"
    if not np.isfinite(res).all():
        return (
            "BUG: non-finite result from finite input" if finite_input else "BUG: non-finite result"
        )
    shape = "x".join(str(s) for s in res.shape)
    return f"finite ({shape}){_excluded(info)}"


def _finite(x: Any) -> bool:
    try:
        arrs = x if isinstance(x, list) else [x]
        return all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrs)
    except Exception:
        return True


def _call(entry: str, fn: Callable[[], Any], x: Any = None) -> str:
    snap = _snapshot(x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = fn()
    except (ValueError, TypeError) as exc:
        msg = str(exc).split("\n")[0]
        if type(exc) not in (
            ValueError,
            TypeError,
        ):  # UnstableError: its statistics stay out of the table
            return f"{type(exc).__name__} (a {type(exc).__mro__[1].__name__}): {msg.split(' (')[0]}"
        return f"{type(exc).__name__}: {msg}"
    except Exception as exc:
        return f"BUG: {type(exc).__name__}: {exc}"
    if x is not None and not _same(x, snap):
        return "BUG: the input was changed"
    return _describe(res, _finite(x), entry)


def prefix(entry: str) -> str:
    """The function name an error message of this entry point must start with."""
    return entry.split(" ")[0].split(".")[-1]


def run_all() -> list[Outcome]:
    out = []
    for entry, fn in _entry_points():
        for kind, make in DATA:
            x = make()
            out.append(Outcome("data", entry, kind, _call(entry, lambda fn=fn, x=x: fn(x), x)))
    for entry, kind, fn in _param_cases():
        out.append(Outcome("parameters", entry, kind, _call(entry, fn)))
    return out


# ---------------------------------------------------------------- rendering
def _short(outcome: str, messages: dict) -> str:
    if outcome.startswith(("ValueError", "TypeError")):
        kind, msg = outcome.split(": ", 1)
        if msg not in messages:
            messages[msg] = len(messages) + 1
        return f"{kind} [{messages[msg]}]"
    return outcome


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def property_tests() -> list:
    """(test, examples, first docstring line) of the hypothesis tests, read from the modules."""
    import importlib

    rows = []
    for mod in ("test_properties_flag", "test_properties_rules", "test_properties_energy"):
        m = importlib.import_module(mod)
        for name in sorted(n for n in dir(m) if n.startswith("test_")):
            fn = getattr(m, name)
            st = getattr(fn, "_hypothesis_internal_use_settings", None)
            if st is None or not hasattr(fn, "hypothesis"):
                continue
            doc = " ".join(
                line.strip() for line in (fn.__doc__ or "").strip().split("\n\n")[0].split("\n")
            )
            rows.append((f"{mod}.py::{name}", st.max_examples, doc))
    return rows


def render(results: list[Outcome], props: list) -> str:
    entries = [e for e, _ in _entry_points()]
    kinds = [k for k, _ in DATA]
    cell = {(r.entry, r.input): r.outcome for r in results if r.group == "data"}
    messages: dict = {}
    lines = [
        BEGIN,
        f"<!-- generated by `{REGENERATE}` from tests/reliability_cases.py; do not edit by hand "
        "-->",
        "## Reliability",
        "",
        "What CI does beyond the functional tests (`.ci/run`):",
        "",
        "- **Sanitizers** (`.ci/sanitize`, the second step of `.ci/run`): the native core is built "
        "with",
        "  AddressSanitizer and UndefinedBehaviorSanitizer (`-DFLAGCORE_SANITIZE=ON`, CUDA off, "
        "into",
        "  `build/asan`) and the tests that drive it with numpy inputs (FA, rules, attacks, energy",
        "  simulator, the property and thread tests, this matrix) run against it with `libasan`",
        "  preloaded; torch tests are skipped there (`FLAGCORE_TEST_NO_TORCH=1`). Any report "
        "aborts the run.",
        "- **Property-based tests** (hypothesis, derandomized, no example database: every run sees "
        "the",
        "  same examples) over random shapes, dtypes (float16/32/64), memory layouts (C, Fortran,",
        "  strided rows, strided columns, lists) and values (zeros, duplicates, huge, tiny, NaN, "
        "+/-Inf,",
        "  magnitudes 1e-30..1e30), p from 1 to 128: each call returns a finite, correctly shaped",
        "  result consistent with the float64 reference (or the rule's defining property where the",
        "  reference is not unique), leaves its input unchanged, or raises ValueError/TypeError",
        "  naming the argument.",
        "- **Threads** (`tests/test_threads.py`): concurrent calls from 4 Python threads give the "
        "same",
        "  bits as serial calls; the native code releases the GIL while it works.",
        "",
        "| property test | examples | checks |",
        "|---|---|---|",
    ]
    for name, n, doc in props:
        lines.append(f"| `{name}` | {n} | {_cell(doc)} |")
    lines += [
        "",
        "Thread-safety notes: every function of the API may be called from several threads at "
        "once.",
        "`set_num_threads` is a process-wide setting; changing it while other threads compute is "
        "safe",
        "and does not change any result (results never depend on the thread count), only the "
        "speed.",
        'A rule *object* with state (`CenteredClipping(reference="previous")`, any rule with',
        '`pre="bucketing"`, whose shuffle advances on every call) should not be shared between',
        "threads: its result would depend on the order of the calls. `aggregate()` builds a fresh",
        "rule on every call and is unaffected.",
        "",
        "### Bad input: data",
        "",
        "Each entry point against each kind of gradient stack (p = 9 workers of n = 16 values "
        "unless",
        'the row says otherwise). "finite (shape), k of p excluded": a finite result, with the',
        "workers it left out (NaN/Inf; for FA and the distance rules also a squared norm that",
        "overflows float64). Errors are numbered; their messages follow the table.",
        "",
        "| input | " + " | ".join(entries) + " |",
        "|---|" + "---|" * len(entries),
    ]
    for k in kinds:
        lines.append(
            f"| {_cell(k)} | "
            + " | ".join(_cell(_short(cell[(e, k)], messages)) for e in entries)
            + " |"
        )
    lines += [
        "",
        "### Bad input: parameters",
        "",
        "Each entry point with valid data and one parameter out of its domain.",
        "",
        "| entry point | input | outcome |",
        "|---|---|---|",
    ]
    for r in results:
        if r.group == "data":
            continue
        lines.append(f"| {_cell(r.entry)} | {_cell(r.input)} | {_cell(r.outcome)} |")
    lines += ["", "### Error messages of the data table", ""]
    for msg, i in messages.items():
        lines.append(f"{i}. `{msg}`")
    lines += [
        "",
        f"Regenerate with `{REGENERATE}` (writes this section into docs/reliability.md between the",
        "markers, and bench/results/reliability_matrix.json);",
        "`tests/test_reliability_matrix.py` fails when the committed section is out of date.",
        END,
    ]
    return "\n".join(lines) + "\n"


def splice(text: str, section: str) -> str:
    """text with the part between the markers (inclusive) replaced by section."""
    i, j = text.index(BEGIN), text.index(END) + len(END)
    return text[:i] + section.rstrip("\n") + text[j:]
