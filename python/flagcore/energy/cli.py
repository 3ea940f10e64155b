"""``flagcore energy simulate|approx|sweep|optimize``: the fork-join energy/latency tools on the
terminal (tables), in JSON (--json) and as PNG plots (sweep --out)."""

from __future__ import annotations

import argparse
import io
import math
import os
from typing import Any, Callable

import numpy as np

from .._table import print_table
from . import _json

#: Default --requests of the simulating commands.
_DEFAULT_REQUESTS = 1_000_000
#: Most points a sweep --values may ask for (like optimize's MAX_CANDIDATES).
MAX_SWEEP_POINTS = 100_000
#: Largest --n of every energy command (the simulator's limit; approximate() takes ~20 s there).
MAX_N = 1 << 20

_EPILOG = (
    "levels are rate:power[:probability] separated by commas, e.g. 1:1:0.5,3:9:0.5 "
    "(low level: rate 1, busy power 1; high level: rate 3, power 9; half the tasks each)"
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "energy",
        help="energy and latency of (n, k) fork-join services (simulate, approx, sweep, optimize)",
    )
    esub = p.add_subparsers(dest="energy_command", metavar="ACTION")
    esub.required = True

    def common(q: argparse.ArgumentParser, probs_needed: bool = True) -> None:
        q.add_argument(
            "--n", type=int, required=True, help=f"servers (tasks per request), at most {MAX_N:,}"
        )
        q.add_argument("--k", type=int, required=True, help="completions that finish a request")
        q.add_argument(
            "--arrival-rate",
            "--lam",
            dest="arrival_rate",
            type=float,
            required=True,
            help="Poisson arrival rate of requests",
        )
        q.add_argument(
            "--levels",
            required=True,
            help="rate:power:probability per level"
            if probs_needed
            else "rate:power per level (probabilities are swept/chosen)",
        )
        q.add_argument(
            "--idle-power", type=float, default=0.0, help="power of an idle core (default 0)"
        )
        q.add_argument(
            "--no-cancel",
            dest="cancel",
            action="store_false",
            help="let the n - k late tasks run to completion",
        )
        q.add_argument("--json", metavar="FILE", help="also write the results as JSON")

    def deadline_option(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--deadline",
            type=float,
            action="append",
            default=[],
            help="report P(T > D), D > 0 (repeatable; --json: under deadline_miss)",
        )

    def simopts(q: argparse.ArgumentParser) -> None:
        # simulation options default to None so that an option given where nothing is
        # simulated can be told from its default and refused (_sim_options)
        q.add_argument(
            "--service",
            default=None,
            help="exponential (default) | deterministic | erlang:M | gamma:SHAPE | "
            "lognormal:SIGMA | pareto:ALPHA | empirical:FILE (FILE: numbers separated by "
            "spaces or newlines, the same count on every line, # comments)",
        )
        q.add_argument(
            "--redraw-on-arrival",
            action="store_true",
            default=None,
            help="every core redraws its level at every arrival",
        )
        q.add_argument(
            "--requests",
            type=int,
            default=None,
            help=f"measured requests per replication (default {_DEFAULT_REQUESTS:,})",
        )
        q.add_argument(
            "--warmup", type=int, default=None, help="discarded requests (default requests/10)"
        )
        q.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
        q.add_argument(
            "--replications", type=int, default=None, help="independent runs (default 1)"
        )
        q.add_argument("--threads", type=int, default=None, help="threads for the replications")
        q.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no progress bar"
        )

    q = esub.add_parser("simulate", help="run the event-driven simulator", epilog=_EPILOG)
    common(q)
    simopts(q)
    deadline_option(q)
    pol = q.add_mutually_exclusive_group()
    pol.add_argument(
        "--threshold",
        metavar="T[,T2,...]",
        help="speed by queue length: level s while the server's queue exceeds s of these "
        "thresholds (m - 1 of them; levels as rate:power)",
    )
    pol.add_argument(
        "--deadline-policy",
        type=float,
        metavar="D",
        help="speed by deadline slack: the slowest level expected to finish within D of the "
        "request's arrival (levels as rate:power)",
    )
    q.add_argument(
        "--known-size",
        action="store_true",
        help="--deadline-policy uses the task's actual work (default: the mean work 1)",
    )
    q.add_argument("--switch-energy", type=float, default=0.0, help="energy per level change")
    q.add_argument(
        "--switch-time", type=float, default=0.0, help="stall per level change (no work meanwhile)"
    )
    q.add_argument("--switch-power", type=float, default=0.0, help="power during that stall")
    q.set_defaults(func=_cmd_simulate)

    q = esub.add_parser("approx", help="closed forms and approximations", epilog=_EPILOG)
    common(q)
    q.add_argument("--method", default="all", choices=["all", "race", "harmonic", "arithmetic"])
    deadline_option(q)
    q.set_defaults(func=_cmd_approx)

    q = esub.add_parser(
        "sweep",
        help="simulation beside the closed forms over p or the arrival rate; plots",
        epilog=_EPILOG,
    )
    common(q, probs_needed=False)
    simopts(q)
    q.add_argument(
        "--over",
        choices=["p", "arrival-rate"],
        default="p",
        help="p: probability of the last (high) level, the others share 1 - p in proportion "
        "to their given probabilities (none given: all to the first); arrival-rate: the load "
        "(levels need probabilities)",
    )
    q.add_argument(
        "--values",
        default="0:1:11",
        help="START:STOP:COUNT or comma-separated values (default 0:1:11; at most "
        f"{MAX_SWEEP_POINTS:,} points)",
    )
    q.add_argument(
        "--methods",
        default="race,harmonic,arithmetic",
        help="approximations to show beside the simulation",
    )
    q.add_argument("--no-sim", dest="simulate", action="store_false", help="closed forms only")
    q.add_argument(
        "--metric", default="mean", help="latency shown: mean | mean_in_system | p99 | 0.999 ..."
    )
    q.add_argument("--out", metavar="DIR", help="write PNG plots (and sweep.json) into DIR")
    q.set_defaults(func=_cmd_sweep)

    q = esub.add_parser(
        "optimize", help="least energy (or power) meeting a latency target", epilog=_EPILOG
    )
    common(q, probs_needed=False)
    simopts(q)
    q.add_argument(
        "--target", type=float, required=True, help="latency target (same unit as 1/rate)"
    )
    q.add_argument("--metric", default="mean", help="mean | mean_in_system | p99 | 0.999 ...")
    q.add_argument("--objective", choices=["energy", "power"], default="energy")
    q.add_argument("--evaluator", choices=["approx", "simulate"], default="approx")
    q.add_argument(
        "--method",
        choices=["race", "harmonic", "arithmetic"],
        default=None,
        help="approximation of --evaluator approx (default race)",
    )
    q.add_argument("--grid", type=int, default=11, help="grid points per probability axis")
    q.set_defaults(func=_cmd_optimize)


# ---------------------------------------------------------------- parsing helpers
def parse_levels(
    text: str, need_probs: bool = True, no_probs_because: str | None = None
) -> list[tuple[float, ...]]:
    """rate:power[:probability],... as tuples. ``no_probs_because``: the probabilities have no
    effect (the caller says why, e.g. "with --threshold"), so a level that gives one is refused.
    """
    out = []
    for part in text.split(","):
        f = [x.strip() for x in part.strip().split(":")]
        if "" in f:
            # an empty field was dropped, which shifted the others: 3::0.5 read as power 0.5
            raise ValueError(
                f"--levels: empty field in level {part.strip()!r} (of {text!r}); each level is "
                "rate:power[:probability]"
            )
        try:
            nums = [float(x) for x in f]
        except ValueError:
            raise ValueError(
                f"--levels: expected numbers rate:power[:probability], got {part!r}"
            ) from None
        if len(nums) == 3 and no_probs_because:
            raise ValueError(
                f"--levels: probabilities have no effect {no_probs_because}; give every level "
                f"as rate:power, got {part.strip()!r}"
            )
        if len(nums) == 2:
            nums.append(1.0 if (need_probs and len(text.split(",")) == 1) else math.nan)
        if len(nums) != 3:
            raise ValueError(f"--levels: each level is rate:power[:probability], got {part!r}")
        _check_level(nums, part.strip())
        out.append(tuple(nums))
    if need_probs and any(math.isnan(t[2]) for t in out):
        raise ValueError("--levels: give every level a probability (rate:power:probability)")
    if need_probs and abs(math.fsum(t[2] for t in out) - 1.0) > 1e-9:  # as_levels' tolerance
        raise ValueError(
            f"--levels: the probabilities must sum to 1, got {math.fsum(t[2] for t in out)!r} "
            f"from {text!r}"
        )
    if not need_probs:
        out = [t if not math.isnan(t[2]) else (t[0], t[1]) for t in out]
    return out


def _check_level(nums: list[float], part: str) -> None:
    """The ranges the models check (energy._model.as_levels), said in the option's words."""
    rate, power, prob = nums
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"--levels: the rate must be positive and finite, got {part!r}")
    if not (power >= 0 and math.isfinite(power)):
        raise ValueError(f"--levels: the power must be >= 0 and finite, got {part!r}")
    if not (math.isnan(prob) or 0.0 <= prob <= 1.0):
        raise ValueError(f"--levels: the probability must be in [0, 1], got {part!r}")


def parse_values(text: str) -> list[float]:
    """START:STOP:COUNT (COUNT an int in [1, MAX_SWEEP_POINTS]) or a comma-separated list of
    at most MAX_SWEEP_POINTS finite numbers."""
    form = "START:STOP:COUNT or a comma-separated list of numbers"
    if text.count(":") == 2:
        a, b, c = (x.strip() for x in text.split(":"))
        try:
            start, stop = float(a), float(b)
        except ValueError:
            raise ValueError(f"--values: START and STOP must be numbers, got {text!r}") from None
        if not (math.isfinite(start) and math.isfinite(stop)):
            raise ValueError(f"--values: START and STOP must be finite, got {text!r}")
        try:
            count = int(c)
        except ValueError:
            raise ValueError(
                f"--values: COUNT must be a whole number of points, got {c!r} in {text!r}"
            ) from None
        if not 1 <= count <= MAX_SWEEP_POINTS:
            raise ValueError(
                f"--values: COUNT must be in [1, {MAX_SWEEP_POINTS:,}] (at most "
                f"{MAX_SWEEP_POINTS:,} sweep points), got {count:,} in {text!r}"
            )
        values: list[float] = np.linspace(start, stop, count).tolist()
        return values
    parts = text.split(",")
    if len(parts) > MAX_SWEEP_POINTS:
        raise ValueError(
            f"--values: at most {MAX_SWEEP_POINTS:,} sweep points, got {len(parts):,} values"
        )
    out = []
    for i, x in enumerate(parts):
        if not x.strip():
            raise ValueError(f"--values: empty item {i + 1} in {text!r}; expected {form}")
        try:
            v = float(x)
        except ValueError:
            raise ValueError(f"--values: expected {form}, got {x.strip()!r} in {text!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"--values: values must be finite, got {x.strip()!r}")
        out.append(v)
    return out


_EMPIRICAL_FORM = "numbers separated by spaces or newlines, the same count on every line"


def _empirical_problem(text: str) -> str:
    """Why the text of an empirical service file is not a table of numbers (for the message)."""
    ncol = None
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        for x in fields:
            try:
                float(x)
            except ValueError:
                return f"line {lineno}: {x[:40]!r} is not a number"
        if ncol is None:
            ncol = len(fields)
        elif len(fields) != ncol:
            return f"line {lineno} has {len(fields)} number(s) where the first line had {ncol}"
    return "it could not be read as numbers"


def parse_service(text: str) -> Any:
    if text.startswith("empirical:"):
        path = text.split(":", 1)[1]
        where = f"--service: empirical file {path!r}"
        if not path:
            raise ValueError(f"--service: empirical needs a file, as empirical:FILE, got {text!r}")
        if not os.path.exists(path):
            raise ValueError(f"{where} does not exist")
        if os.path.isdir(path):
            raise ValueError(f"{where} is a directory, not a file of samples")
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise ValueError(f"{where} cannot be read: {exc.strerror or exc}") from None
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{where} is not a text file (byte {exc.start} is not UTF-8); "
                f"expected {_EMPIRICAL_FORM}"
            ) from None
        if "\x00" in body:
            raise ValueError(f"{where} is not a text file (it holds NUL bytes)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # loadtxt warns (only) on a file without data
            try:
                samples = np.loadtxt(io.StringIO(body), dtype=np.float64, ndmin=1).ravel()
            except (ValueError, UserWarning):
                samples = None
        if samples is None:
            if not any(ln.split("#", 1)[0].strip() for ln in body.splitlines()):
                raise ValueError(f"{where} holds no samples; expected {_EMPIRICAL_FORM}")
            raise ValueError(f"{where}: {_empirical_problem(body)}; expected {_EMPIRICAL_FORM}")
        if samples.size == 0:
            raise ValueError(f"{where} holds no samples; expected {_EMPIRICAL_FORM}")
        bad = ~np.isfinite(samples) | (samples < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}: samples must be finite and >= 0, got {samples[i]!r} (sample {i + 1})"
            )
        if not (samples > 0).any():
            raise ValueError(f"{where}: the samples are all 0 (the work must have a mean > 0)")
        return ("empirical", samples)
    return text


def _progress_bar(label: str) -> tuple[Any, Callable[[int, int], None]]:
    """A rich progress bar when rich is installed, else the plain stderr bar."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    except ImportError:
        from .simulate import _stderr_bar

        return None, _stderr_bar()
    prog = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = prog.add_task(label, total=None)

    def report(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, report


#: The simulation options (simopts) as (attribute, option); all default to None.
_SIM_OPTIONS = (
    ("service", "--service"),
    ("redraw_on_arrival", "--redraw-on-arrival"),
    ("requests", "--requests"),
    ("warmup", "--warmup"),
    ("seed", "--seed"),
    ("replications", "--replications"),
    ("threads", "--threads"),
)


def _int_option(v: int | None, option: str, lo: int, hi: int) -> None:
    if v is not None and not lo <= v <= hi:
        raise ValueError(f"{option} must be an integer in [{lo:,}, {hi:,}], got {v}")


def _sim_kwargs(a: argparse.Namespace, no_sim_because: str | None = None) -> dict[str, Any]:
    """The simulator's keyword arguments from the simulation options, checked whether or not
    anything is simulated. ``no_sim_because`` (e.g. "with --no-sim"): nothing is simulated, so
    an option given explicitly has no effect and is refused; returns {}."""
    from .simulate import MAX_REPLICATIONS, MAX_REQUESTS, MAX_THREADS

    service = parse_service(a.service) if a.service is not None else "exponential"
    if a.service is not None:
        from ._model import as_service

        try:
            as_service(service, "--service")
        except (ValueError, TypeError) as exc:
            raise ValueError(str(exc).replace("--service: service ", "--service: ", 1)) from None
    _int_option(a.requests, "--requests", 1, MAX_REQUESTS)
    _int_option(a.warmup, "--warmup", 0, MAX_REQUESTS)
    _int_option(a.seed, "--seed", 0, 2**64 - 1)
    _int_option(a.replications, "--replications", 1, MAX_REPLICATIONS)
    _int_option(a.threads, "--threads", 1, MAX_THREADS)
    requests = _DEFAULT_REQUESTS if a.requests is None else a.requests
    warmup = requests // 10 if a.warmup is None else a.warmup
    if requests + warmup > MAX_REQUESTS:
        raise ValueError(f"--requests + --warmup must be <= 2^53, got {requests:,} + {warmup:,}")
    if no_sim_because:
        given = [opt for attr, opt in _SIM_OPTIONS if getattr(a, attr) is not None]
        if given:
            raise ValueError(
                f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect "
                f"{no_sim_because} (nothing is simulated)"
            )
        return {}
    return dict(
        requests=requests,
        warmup=warmup,  # requests // 10 unless given: the simulator's own default
        seed=0 if a.seed is None else a.seed,
        replications=1 if a.replications is None else a.replications,
        threads=a.threads,
        service=service,
        redraw_on_arrival=bool(a.redraw_on_arrival),
    )


def _check_n(a: argparse.Namespace) -> None:
    """--n within the simulator's limit for every command (approximate() takes ~20 s at
    n = 2^20 and grows with n, without progress)."""
    if a.n > MAX_N:
        raise ValueError(f"--n must be <= {MAX_N:,} (2^20), got {a.n:,}")


def _check_deadlines(deadlines: list[float]) -> None:
    for d in deadlines:
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"--deadline must be a finite number > 0, got {d!r}")


def _deadline_key(d: float) -> str:
    """The JSON key of deadline d: 2.0 -> "2", 0.5 -> "0.5" (round-trips, unlike :g)."""
    s = repr(float(d))
    return s[:-2] if s.endswith(".0") else s


def _by_deadline(f: Callable[[float], Any], deadlines: list[float]) -> dict[str, Any]:
    """{deadline key: f(deadline)} for the --json output."""
    return {_deadline_key(d): f(d) for d in deadlines}


def _dump(path: str | None, obj: Any) -> None:
    if not path:
        return
    from .._paths import atomic_open  # a failed write keeps the previous file and names the path

    with atomic_open(path) as f:  # creates the folder
        _json.dump(obj, f, indent=2)
    print(f"wrote {path}")


def _level_rows(res: Any, levels: list[tuple[float, ...]]) -> list[list[Any]]:
    rows = []
    for i, lv in enumerate(levels):
        rows.append(
            [
                i,
                lv[0],
                lv[1],
                lv[2] if len(lv) > 2 else "",
                float(res.utilisation[i]),
                float(res.busy_time_per_request[i]),
            ]
        )
    return rows


# ---------------------------------------------------------------- commands
def _policy_of(a: argparse.Namespace) -> Any:
    from ._model import DeadlinePolicy, ThresholdPolicy

    if a.threshold is not None:
        if a.known_size:
            raise ValueError(
                "--known-size has no effect with --threshold (only --deadline-policy uses the "
                "task's size)"
            )
        try:
            th = [int(x) for x in a.threshold.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"--threshold: expected integers T[,T2,...], got {a.threshold!r}"
            ) from None
        return ThresholdPolicy(th)
    if a.deadline_policy is not None:
        return DeadlinePolicy(a.deadline_policy, a.known_size)
    if a.known_size:
        raise ValueError(
            "--known-size has no effect without --deadline-policy (only that policy uses the "
            "task's size)"
        )
    return None


def _cmd_simulate(a: argparse.Namespace) -> int:
    from .simulate import simulate

    _check_n(a)
    _check_deadlines(a.deadline)
    policy = _policy_of(a)
    why = None
    if policy is not None:
        why = "with --threshold" if a.threshold is not None else "with --deadline-policy"
        why += " (the policy picks the level)"
    levels = parse_levels(a.levels, need_probs=policy is None, no_probs_because=why)
    kw = _sim_kwargs(a)
    kw.update(
        policy=policy,
        switch_energy=a.switch_energy,
        switch_time=a.switch_time,
        switch_power=a.switch_power,
    )
    prog, report = (None, None)
    if a.progress and (kw["requests"] + kw["warmup"]) * kw["replications"] >= 2_000_000:
        prog, report = _progress_bar("simulating")
    if prog is not None:
        with prog:
            r = simulate(
                a.n,
                a.k,
                a.arrival_rate,
                levels,
                idle_power=a.idle_power,
                cancel=a.cancel,
                progress=report,
                **kw,
            )
    else:
        r = simulate(
            a.n,
            a.k,
            a.arrival_rate,
            levels,
            idle_power=a.idle_power,
            cancel=a.cancel,
            progress=report,
            **kw,
        )
    rows = [
        ["mean response time E[T]", r.mean_response_time, r.mean_response_time_ci],
        ["mean number in system E[N]", r.mean_in_system, r.mean_in_system_ci],
        ["p50", r.p50, r.percentile_ci(0.5)],
        ["p95", r.p95, r.percentile_ci(0.95)],
        ["p99", r.p99, r.percentile_ci(0.99)],
        ["p99.9", r.p999, r.percentile_ci(0.999)],
        *[[f"P(T > {d:g})", r.deadline_miss(d), r.deadline_miss_ci(d)] for d in a.deadline],
        ["energy per request", r.energy_per_request, r.energy_per_request_ci],
        ["average power", r.average_power, r.average_power_ci],
        ["wasted busy time per request", r.wasted_time_per_request, r.wasted_time_per_request_ci],
        ["idle fraction of core-time", r.idle_fraction, ""],
    ]
    out = r.to_dict()
    if a.deadline:
        out["deadline_miss"] = _by_deadline(r.deadline_miss, a.deadline)
        out["deadline_miss_ci"] = _by_deadline(r.deadline_miss_ci, a.deadline)
    print_table(
        f"simulation: ({a.n}, {a.k}) fork-join, arrival rate {a.arrival_rate:g}, "
        f"{r.requests:,} requests{'' if a.cancel else ', no cancellation'}",
        ["metric", "estimate", "± 95%"],
        rows,
    )
    print_table(
        "speed levels",
        ["level", "rate", "power", "prob", "utilisation", "busy time / request"],
        _level_rows(r, levels),
    )
    print(
        f"stable: {r.stable} ({r.stability_note}); {r.events_per_second / 1e6:.2f} M events/s, "
        f"{r.requests_per_second / 1e6:.2f} M requests/s per thread, wall {r.wall_seconds:.2f}s"
    )
    _dump(a.json, out)
    return 0


def _cmd_approx(a: argparse.Namespace) -> int:
    from .approx import METHODS, approximate

    _check_n(a)
    _check_deadlines(a.deadline)
    levels = parse_levels(a.levels)
    methods = METHODS if a.method == "all" else (a.method,)
    res = {
        m: approximate(
            a.n, a.k, a.arrival_rate, levels, idle_power=a.idle_power, method=m, cancel=a.cancel
        )
        for m in methods
    }
    names: list[tuple[str, Callable[[Any], Any]]] = [
        ("mean response time E[T]", lambda r: r.mean_response_time),
        ("mean number in system E[N]", lambda r: r.mean_in_system),
        ("p50", lambda r: r.p50),
        ("p99", lambda r: r.p99),
        ("p99.9", lambda r: r.p999),
        *[(f"P(T > {d:g})", lambda r, d=d: r.deadline_miss(d)) for d in a.deadline],
        ("energy per request", lambda r: r.energy_per_request),
        ("average power", lambda r: r.average_power),
        ("effective rate", lambda r: r.effective_rate),
        ("stability limit (arrival rate)", lambda r: r.stability_limit),
        ("lower bound E[T]", lambda r: "n/a" if math.isnan(r.lower_bound) else r.lower_bound),
        ("upper bound E[T]", lambda r: "n/a" if math.isnan(r.upper_bound) else r.upper_bound),
        ("light-traffic E[T]", lambda r: r.light_traffic_response_time),
    ]
    rows = [[nm, *[f(res[m]) for m in methods]] for nm, f in names]
    print_table(
        f"closed forms: ({a.n}, {a.k}) fork-join, arrival rate {a.arrival_rate:g}",
        ["metric", *methods],
        rows,
    )
    for m in methods:
        print(
            f"{m}: mean from {res[m].mean_method}; percentiles from {res[m].percentile_method}; "
            f"stable={res[m].stable}"
        )
    out = {m: r.to_dict() for m, r in res.items()}
    if a.deadline:
        for m, r in res.items():
            out[m]["deadline_miss"] = _by_deadline(r.deadline_miss, a.deadline)
    _dump(a.json, out)
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    from .approx import METHODS
    from .design import _metric_name, latency_ci, latency_of, pareto_front, sweep

    _check_n(a)
    over = "p" if a.over == "p" else "arrival_rate"
    levels = parse_levels(a.levels, need_probs=(over == "arrival_rate"))
    if over == "p":
        # p replaces the last (high) level's probability, and the others share 1 - p in
        # proportion to theirs: a probability on the last level, or on the one other level of
        # two, had no effect (it was replaced without a word)
        given = [i for i, lv in enumerate(levels) if len(lv) == 3]
        idle = [i for i in given if i == len(levels) - 1 or len(levels) == 2]
        if idle:
            raise ValueError(
                f"--levels: with --over p the probability of level {idle[0] + 1} has no effect "
                "(p is the last level's, the others share 1 - p in proportion to their given "
                "probabilities); give it as rate:power"
            )
    values = parse_values(a.values)
    for v in values:
        if over == "p" and not 0.0 <= v <= 1.0:
            raise ValueError(
                f"--values: with --over p the values are probabilities in [0, 1], got {v:g}"
            )
        if over == "arrival_rate" and not v > 0.0:
            raise ValueError(
                f"--values: with --over arrival-rate the values must be > 0, got {v:g}"
            )
    methods = tuple(m.strip() for m in a.methods.split(","))
    if not all(methods):
        raise ValueError(
            f"--methods: expected a comma-separated list of {', '.join(METHODS)} without empty "
            f"items, got {a.methods!r}"
        )
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods: unknown method {m!r}; choose among {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods: a method is listed twice in {a.methods!r}")
    _metric_name(a.metric, "--metric")  # a bad --metric fails now, not after the sweep
    kw = _sim_kwargs(a, None if a.simulate else "with --no-sim")
    prog, report = _progress_bar("sweep") if a.progress else (None, None)
    args = (a.n, a.k, a.arrival_rate, levels)
    skw = dict(
        over=over,
        values=values,
        idle_power=a.idle_power,
        cancel=a.cancel,
        run_simulation=a.simulate,
        methods=methods,
        progress=report,
        **kw,
    )
    if prog is not None:
        with prog:
            res = sweep(*args, **skw)
    else:
        res = sweep(*args, **skw)
    metric = a.metric
    name = _metric_name(metric)
    cols = ["p (high level)" if over == "p" else "arrival rate"]
    if a.simulate:
        cols += [f"sim {name}", "±", "sim energy", "±"]
    for m in methods:
        cols += [f"{m} {name}", f"{m} energy"]
    rows = []
    for pt in res.points:
        row: list[Any] = [pt.x]
        if a.simulate:
            if pt.sim is None:
                row += ["unstable", "", "", ""]
            else:
                flag = "" if pt.sim.stable else " (unstable?)"
                row += [
                    f"{latency_of(pt.sim, metric):.4g}{flag}",
                    latency_ci(pt.sim, metric),
                    pt.sim.energy_per_request,
                    pt.sim.energy_per_request_ci,
                ]
        for m in methods:
            row += [latency_of(pt.approx[m], metric), pt.approx[m].energy_per_request]
        rows.append(row)
    print_table(
        f"sweep over {'p' if over == 'p' else 'the arrival rate'}: ({a.n}, {a.k}) fork-join",
        cols,
        rows,
    )
    front = pareto_front(res, metric=metric, source="sim" if a.simulate else methods[0])
    print(
        "energy-latency Pareto front ("
        + ("simulation" if a.simulate else methods[0])
        + "): "
        + ", ".join(f"x={res.points[i].x:g}: E={e:.4g}, {name}={lat:.4g}" for i, e, lat in front)
    )
    out = res.to_dict(metric)
    _dump(a.json, out)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        _dump(os.path.join(a.out, "sweep.json"), out)
        for f in plot_sweep(res, metric, a.out, methods):
            print(f"wrote {f}")
    return 0


def plot_sweep(res: Any, metric: Any, out_dir: str, methods: tuple[str, ...]) -> list[str]:
    """Latency vs x, energy vs x, and the energy-latency trade-off, simulation (with 95% CI)
    beside the approximations. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from .._paths import atomic_savefig
    from .design import _metric_name, latency_ci, latency_of

    short = FuncFormatter(lambda v, _: f"{v:g}")  # log-axis labels without 3x10^-1 clutter

    name = _metric_name(metric)
    xlabel = "probability of the high level p" if res.over == "p" else "arrival rate"
    xs = np.array([float(pt.x) for pt in res.points])
    sim_pts = [
        (
            float(pt.x),
            latency_of(pt.sim, metric),
            latency_ci(pt.sim, metric),
            pt.sim.energy_per_request,
            pt.sim.energy_per_request_ci,
        )
        for pt in res.points
        if pt.sim is not None and pt.sim.stable
    ]
    files = []
    ylabel = {
        "mean": "mean response time E[T]",
        "mean_in_system": "mean number in system E[N]",
    }.get(name, f"{name} response time")
    for what, fname, lab in (
        ("latency", "latency_vs_x.png", ylabel),
        ("energy", "energy_vs_x.png", "energy per request"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        if sim_pts:
            s = np.array(sim_pts)
            y, e = (s[:, 1], s[:, 2]) if what == "latency" else (s[:, 3], s[:, 4])
            ax.errorbar(
                s[:, 0], y, yerr=e, fmt="o", color="k", capsize=3, label="simulation (95% CI)"
            )
        for m in methods:
            ys = [
                latency_of(pt.approx[m], metric)
                if what == "latency"
                else pt.approx[m].energy_per_request
                for pt in res.points
            ]
            ys_arr = np.array([v if math.isfinite(v) else np.nan for v in ys])
            ax.plot(xs, ys_arr, "-", label=f"approximation ({m})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(lab)
        if what == "latency":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(short)
            ax.yaxis.set_minor_formatter(short)
        ax.set_title(f"({res.n}, {res.k}) fork-join")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        atomic_savefig(fig, path, dpi=120)  # a failed write keeps the previous plot
        plt.close(fig)
        files.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    if sim_pts:
        s = np.array(sim_pts)
        ax.errorbar(
            s[:, 1],
            s[:, 3],
            xerr=s[:, 2],
            yerr=s[:, 4],
            fmt="o-",
            color="k",
            capsize=3,
            label="simulation",
        )
    for m in methods:
        lat = np.array([latency_of(pt.approx[m], metric) for pt in res.points])
        en = np.array([pt.approx[m].energy_per_request for pt in res.points])
        ok = np.isfinite(lat)
        ax.plot(lat[ok], en[ok], "--", label=f"approximation ({m})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(short)
    ax.xaxis.set_minor_formatter(short)
    ax.set_xlabel(ylabel)
    ax.set_ylabel("energy per request")
    ax.set_title("energy-latency trade-off")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "tradeoff.png")
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    files.append(path)
    return files


def _cmd_optimize(a: argparse.Namespace) -> int:
    from .design import optimize

    _check_n(a)
    levels = parse_levels(
        a.levels, need_probs=False, no_probs_because="in optimize (it chooses the probabilities)"
    )
    kw = _sim_kwargs(a, None if a.evaluator == "simulate" else "with --evaluator approx")
    if a.evaluator == "simulate" and a.method is not None:
        raise ValueError(
            "--method has no effect with --evaluator simulate (it picks the approximation)"
        )
    metric: Any = a.metric
    prog, report = _progress_bar("optimize") if a.progress else (None, None)
    okw: dict[str, Any] = dict(
        target=a.target,
        metric=metric,
        objective=a.objective,
        idle_power=a.idle_power,
        cancel=a.cancel,
        evaluator=a.evaluator,
        method=a.method or "race",
        grid=a.grid,
        progress=report,
        **kw,
    )
    if prog is not None:
        with prog:
            r = optimize(a.n, a.k, a.arrival_rate, levels, **okw)
    else:
        r = optimize(a.n, a.k, a.arrival_rate, levels, **okw)
    if not r.feasible:
        print(
            f"no probability vector meets {r.metric} <= {a.target:g} ({len(r.evaluations)} "
            "evaluated)"
        )
    else:
        assert r.probs is not None  # a feasible result carries its probabilities
        rows = [[i, lv[0], lv[1], p] for i, (lv, p) in enumerate(zip(levels, r.probs))]
        print_table(
            f"least {a.objective} with {r.metric} <= {a.target:g} ({a.evaluator})",
            ["level", "rate", "power", "probability"],
            rows,
        )
        print(
            f"{a.objective}: {r.value:.6g}   {r.metric}: {r.latency:.6g}"
            + (f" ± {r.latency_ci:.3g}" if a.evaluator == "simulate" else "")
            + f"   ({len(r.evaluations)} evaluations)"
        )
    _dump(a.json, r.to_dict())
    return 0 if r.feasible else 1
