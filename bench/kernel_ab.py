"""A/B of compile-time variants of flagcore's CPU kernels, the way the Gram kernels' numbers in
docs/scaling_history.md were measured: each variant is a build of the same sources with its own
preprocessor defines, the variants run in alternating processes on the same data (the machine's
memory speed and clock drift between runs, so only variants measured side by side compare), and
every variant's Gram bits are checked against the first one's.

    python bench/kernel_ab.py --variant base= --variant f256=-DFLAGCORE_FLUSH_STEPS=256
    python bench/kernel_ab.py --variant base= \\
        --variant r64=-DFLAGCORE_REGISTER_MAX_P_AVX512=64 --sizes 52:1000000,64:1000000

A variant is NAME=DEFINES or NAME@REV=DEFINES (DEFINES: compiler flags, usually -D knobs, empty
for the sources as they are; REV: the git revision of that variant's sources, default --rev, so
that two commits compare: ``--variant base@321ee5b= --variant new@HEAD=``). The knobs:
FLAGCORE_FLUSH_STEPS (float32 register kernels: vector steps per float32 partial sum, 128),
FLAGCORE_PREFETCH_ROWS (8), FLAGCORE_VF32 / FLAGCORE_TILE32 (float32 lanes and tile rows),
FLAGCORE_REGISTER_MAX_P_AVX512 / _AVX2 (the largest p of the float32 register kernel, 64 / 36).
The sources are ``git archive REV`` of this repository (--rev, default HEAD; ``--rev WORKTREE``
takes the working tree as it is, uncommitted changes included). Builds need the build
requirements in this Python (scikit-build-core, pybind11, cmake, ninja): they run ``pip install
--no-build-isolation --no-deps --target`` with FLAGCORE_CUDA=OFF, one folder per variant under
--workdir (about a minute each on 2 cores; kept, and reused with --reuse).

``--kernel rowsum`` times the row sums instead: ``_core.weighted_sum`` of a (1, p, n) float32
stack with coefficients in (0, 1) ("wsum") and ``flagcore.aggregate(x, "mean")`` ("mean"), the
kernels of csrc/rules/coordinate_kernel_impl.hpp driven by csrc/flag/weighted_sum_cpu.cpp and
csrc/rules/coordinate_cpu.cpp, at each of the --threads counts; its bits are a sha256 per SIMD
level over mean, weighted sums (zero and signed coefficients), trimmed mean, Multi-Krum and FA
(p 1-100, n 1-70001, three row offsets, NaN and Inf rows, float32 and float64):

    python bench/kernel_ab.py --kernel rowsum --variant base@321ee5b= --variant new@HEAD= \\
        --sizes 8:131072,64:16384,1000:1000,4096:2048 --threads 1,2 --repeat 100 --rounds 3

Timed with ``--kernel gram`` (the default): ``_core.gram`` of a (p, n) float32 stack, for each
--sizes pair, each --levels SIMD level and each layout ("numpy": the array numpy allocates, whose
large rows start 16 bytes past a cache line; "line": rows on a cache line), best of --repeat in
each process; --rounds rounds, the variants' order rotating from one round to the next. Bits: a
sha256 over float32 and float64 Grams (p 1-80, n around the chunk widths, three alignments) at
every SIMD level the CPU runs. A variant whose bits differ from the first is marked (a knob may
change bits on purpose: then the table says so, it does not fail). Writes JSON (raw times of
every round, the digests, the commands, the CPU) and prints a table of each variant's fastest
round and its ratio to the first variant.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile

from _common import check_out_dir, parse_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in each variant's process (PYTHONPATH = its build, then bench/ for _common): prints one
# JSON line. `warm` starts each thread count with ~0.3 s of two-thread work, so that the pool's
# workers are up and spread over the cores before anything is timed (a worker just created shares
# its parent's core for a while, and a short parallel call then runs on one core).
_PRELUDE = r"""
import hashlib, json, sys, time
import numpy as np
import flagcore
from flagcore import _core
from _common import best_time


def warm(threads):
    flagcore.set_num_threads(threads)
    xw = np.ones((8, 1 << 18), dtype=np.float32)
    ww = np.ones((1, 8))
    t_end = time.perf_counter() + 0.3
    while time.perf_counter() < t_end:
        _core.weighted_sum(xw[None], ww)


def stack(p, n, layout):
    if layout == "numpy":
        return np.random.default_rng(p).standard_normal((p, n), dtype=np.float32)
    # rows on a cache line (n a multiple of 16 keeps every row there)
    buf = np.empty(p * n + 16, dtype=np.float32)
    s = ((-buf.ctypes.data) % 64) // 4
    x = buf[s : s + p * n].reshape(p, n)
    x[...] = np.random.default_rng(p).standard_normal((p, n), dtype=np.float32)
    return x


def digests(feed):  # {level: sha256 of what feed(h) adds} for every SIMD level the CPU runs
    supported = flagcore.build_info()["simd_supported"]
    out = {}
    for level in {"generic": ["generic"], "avx2": ["generic", "avx2"],
                  "avx512": ["generic", "avx2", "avx512"]}.get(supported, ["generic"]):
        _core.set_simd_level(level)
        h = hashlib.sha256()
        feed(h)
        out[level] = h.hexdigest()
    _core.set_simd_level("auto")
    return out
"""

# sys.argv[1]: [kernel, sizes, levels, layouts, thread counts, repeat]. Keys: p:n:layout:level
# (gram), p:n:layout:level:<threads>t:wsum|mean (rowsum).
TIMING = (
    _PRELUDE
    + r"""
kernel, sizes, levels, layouts, thread_counts, repeat = json.loads(sys.argv[1])
out = {}
for threads in thread_counts:
    warm(threads)
    for p, n in sizes:
        for layout in layouts:
            x = stack(p, n, layout)
            if kernel == "gram":
                calls = {"": lambda: _core.gram(x[None])}
            else:
                w = np.random.default_rng(p + 1).random((1, p))
                calls = {f":{threads}t:wsum": lambda: _core.weighted_sum(x[None], w),
                         f":{threads}t:mean": lambda: flagcore.aggregate(x, "mean")}
            for level in levels:
                _core.set_simd_level(level)
                for suffix, fn in calls.items():
                    out[f"{p}:{n}:{layout}:{level}{suffix}"] = best_time(fn, repeat) * 1e3
        _core.set_simd_level("auto")
print(json.dumps(out))
"""
)

BITS_ROWSUM = (
    _PRELUDE
    + r"""
def feed(h):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for p in list(range(1, 26)) + [31, 33, 64, 100]:
            ns = [1, 7, 15, 16, 17, 31, 33, 2047, 2048, 2049, 4100, 70001]
            for n in ns if p <= 25 else [17, 2049, 40003]:
                for off in (0, 1, 4):
                    scale = rng.choice([1e-3, 1.0, 1e30], size=p * n + off)
                    buf = rng.standard_normal(p * n + off) * scale
                    x = buf.astype(dtype)[off:].reshape(p, n)
                    if p > 3 and n > 5 and off == 1:
                        x[1, 3] = np.nan
                    if p > 3 and n > 40 and off == 4:
                        x[2, n // 2] = np.inf
                        x[p - 1, n - 20] = np.nan
                    outs = [flagcore.aggregate(x, "mean")]
                    w = rng.standard_normal((1, p))
                    w[0, 0] = 0.0
                    outs.append(_core.weighted_sum(x[None], w))
                    outs.append(_core.weighted_sum(x[None], np.abs(w)))
                    if p >= 5 and n >= 2:
                        outs.append(flagcore.aggregate(x, "trimmed_mean", f=1))
                        outs.append(flagcore.aggregate(x, "multi_krum", f=1))
                    if p >= 2 and off == 0 and np.all(np.isfinite(x)):
                        outs.append(flagcore.flag_aggregate(x, max_iter=2))
                    for o in outs:
                        h.update(np.ascontiguousarray(np.asarray(o)).tobytes())


print(json.dumps(digests(feed)))
"""
)

BITS = (
    _PRELUDE
    + r"""
def feed(h):
    for dtype in (np.float32, np.float64):
        for p in (1, 2, 3, 5, 7, 11, 15, 16, 20, 30, 33, 40, 48, 49, 64, 80):
            for n in (1, 17, 1023, 1025, 2047, 2049, 8193, 70001):
                for off in (0, 1, 4):
                    rng = np.random.default_rng(p * n + off)
                    buf = rng.standard_normal(p * n + 64).astype(dtype)
                    x = buf[off : off + p * n].reshape(p, n)
                    h.update(np.ascontiguousarray(_core.gram(x[None])).tobytes())


print(json.dumps(digests(feed)))
"""
)


def parse_variant(ap: argparse.ArgumentParser, text: str) -> tuple[str, str, str | None]:
    """NAME[@REV]=DEFINES -> (NAME, DEFINES, REV or None)."""
    head, sep, flags = text.partition("=")
    name, at, rev = head.partition("@")
    if (
        not sep
        or not name
        or not name.replace("_", "").replace("-", "").isalnum()
        or (at and not rev)
    ):
        ap.error(
            "--variant: expected NAME=DEFINES or NAME@REV=DEFINES (NAME letters, digits, - or _), "
            f"got {text!r}"
        )
    return name, flags.strip(), rev or None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def export_sources(rev: str, dest: str) -> str:
    """The sources of rev (or the working tree, rev == "WORKTREE") under dest/src_<rev>."""
    src = os.path.join(dest, f"src_{rev}")
    if os.path.isdir(src):
        subprocess.run(["rm", "-rf", src], check=True)
    os.makedirs(src)
    if rev == "WORKTREE":
        files = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .split("\0")
        )
        for f in filter(None, files):
            if os.path.isfile(os.path.join(ROOT, f)):
                os.makedirs(os.path.dirname(os.path.join(src, f)) or src, exist_ok=True)
                subprocess.run(
                    ["cp", "-p", os.path.join(ROOT, f), os.path.join(src, f)], check=True
                )
        return src
    with tempfile.TemporaryFile() as tmp:
        subprocess.run(["git", "archive", rev], cwd=ROOT, stdout=tmp, check=True)
        tmp.seek(0)
        with tarfile.open(fileobj=tmp) as tar:
            try:
                tar.extractall(src, filter="data")
            except TypeError:  # Python without extraction filters: a git archive of this repo
                tar.extractall(src)
    return src


def build(src: str, workdir: str, name: str, flags: str) -> tuple[str, list[str]]:
    target = os.path.join(workdir, f"v_{name}")
    cmd = [
        sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q",
        "--target", target, "--upgrade",
        "-C", f"build-dir={os.path.join(workdir, f'b_{name}')}",
        "-C", f"cmake.define.CMAKE_CXX_FLAGS={flags}",
        src,
    ]  # fmt: skip
    env = dict(os.environ, FLAGCORE_CUDA="OFF", CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(
            f"kernel_ab: building variant {name!r} failed:\n"
            f"{res.stdout[-3000:]}{res.stderr[-3000:]}"
        )
    return target, cmd


def run_in(target: str, code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([target, os.path.join(ROOT, "bench")]))
    res = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if res.returncode != 0:
        sys.exit(f"kernel_ab: a run in {target} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--variant", action="append", required=True, help="NAME[@REV]=DEFINES (repeat)")
    ap.add_argument(
        "--kernel", choices=("gram", "rowsum"), default="gram", help="what to time (default gram)"
    )
    ap.add_argument("--rev", default="HEAD", help="git revision of the sources, or WORKTREE")
    ap.add_argument("--sizes", default="15:4000000,30:2000000,48:1250000")
    ap.add_argument("--levels", default="auto", help="SIMD levels to time, comma-separated")
    ap.add_argument("--layouts", default="numpy,line")
    ap.add_argument(
        "--threads", default="2", help="thread count (rowsum: comma-separated counts, e.g. 1,2)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "flagcore_kernel_ab"))
    ap.add_argument("--reuse", action="store_true", help="reuse the variants' builds in --workdir")
    ap.add_argument(
        "--out", default=None, help="JSON path (default bench/results/kernel_ab_<date>.json)"
    )
    args = ap.parse_args(argv)
    variants = [parse_variant(ap, v) for v in args.variant]
    if len({n for n, _, _ in variants}) != len(variants):
        ap.error("--variant: names must differ")
    sizes = parse_sizes(ap, args.sizes)
    levels = [v for v in args.levels.split(",") if v]
    layouts = [v for v in args.layouts.split(",") if v]
    bad = [v for v in layouts if v not in ("numpy", "line")]
    if bad:
        ap.error(f"--layouts: numpy and/or line, got {bad[0]!r}")
    for opt in ("repeat", "rounds"):
        if getattr(args, opt) < 1:
            ap.error(f"--{opt}: must be >= 1, got {getattr(args, opt)}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads: expected a count or counts like 1,2, got {args.threads!r}")
    if not threads or min(threads) < 1 or (args.kernel == "gram" and len(threads) != 1):
        ap.error(f"--threads: counts >= 1 (one count for --kernel gram), got {args.threads!r}")
    date = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or os.path.join(ROOT, "bench", "results", f"kernel_ab_{date:%Y-%m-%d_%H%M}.json")
    check_out_dir(ap, out)
    os.makedirs(args.workdir, exist_ok=True)

    def resolve(rev: str, opt: str) -> str:
        if rev == "WORKTREE":
            return rev
        res = subprocess.run(
            ["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True
        )
        if res.returncode != 0:
            ap.error(f"{opt}: git does not know {rev!r} here ({res.stderr.strip()})")
        return res.stdout.strip()

    rev = resolve(args.rev, "--rev")
    revs = {name: resolve(v_rev, "--variant") if v_rev else rev for name, _, v_rev in variants}

    targets, commands = {}, {}
    srcs: dict[str, str] = {}
    for name, flags, _ in variants:
        target = os.path.join(args.workdir, f"v_{name}")
        if args.reuse and os.path.isdir(os.path.join(target, "flagcore")):
            targets[name], commands[name] = target, "(reused)"
            continue
        if revs[name] not in srcs:
            srcs[revs[name]] = export_sources(revs[name], args.workdir)
        print(f"building {name} ({revs[name]}, {flags or 'no defines'}) ...", flush=True)
        targets[name], cmd = build(srcs[revs[name]], args.workdir, name, flags)
        commands[name] = "FLAGCORE_CUDA=OFF " + shlex.join(cmd)

    bits_code = BITS_ROWSUM if args.kernel == "rowsum" else BITS
    digests = {name: run_in(targets[name], bits_code) for name, _, _ in variants}
    first = variants[0][0]
    same_bits = {name: digests[name] == digests[first] for name, _, _ in variants}

    rounds: list[dict] = []
    payload = json.dumps([args.kernel, sizes, levels, layouts, threads, args.repeat])
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for name, _, _ in order:
            times = run_in(targets[name], TIMING, payload)
            rounds.append({"round": r, "variant": name, "times_ms": times})
            print(f"round {r + 1}/{args.rounds} {name} done", flush=True)

    best: dict[str, dict[str, float]] = {}
    for rec in rounds:
        b = best.setdefault(rec["variant"], {})
        for k, v in rec["times_ms"].items():
            b[k] = min(v, b.get(k, float("inf")))
    record = {
        "meta": {
            "date": date.isoformat(timespec="seconds"),
            "rev": rev,
            "kernel": args.kernel,
            "revs": revs,
            "command": "python bench/kernel_ab.py "
            + shlex.join(argv if argv is not None else sys.argv[1:]),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "threads": threads,
            "variants": {name: flags for name, flags, _ in variants},
            "builds": commands,
            "method": "alternating processes, best of --repeat per process; rounds rotate the "
            "order",
        },
        "bits": {"digests": digests, "same_as_first": same_bits},
        "rounds": rounds,
        "best_ms": best,
    }
    with open(out, "w") as fh:
        json.dump(record, fh, indent=1)
    print(f"wrote {out}")
    print(table(best, [n for n, _, _ in variants], same_bits, args.rounds))


def table(
    best: dict[str, dict[str, float]], names: list[str], same_bits: dict[str, bool], rounds: int
) -> str:
    """Plain-text table: each variant's fastest round (ms) and its ratio to the first."""
    first = names[0]
    cols = ["case", *names, *(f"{n}/{first}" for n in names[1:])]
    rows = [
        [
            k,
            *(f"{best[n][k]:.3f}" for n in names),
            *(f"{best[n][k] / best[first][k]:.3f}" for n in names[1:]),
        ]
        for k in best[first]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    notes = ", ".join(f"{n}: {'same bits' if same_bits[n] else 'OTHER BITS'}" for n in names[1:])
    lines = [f"kernel A/B, ms, fastest of {rounds} rounds ({notes or 'one variant'})"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [cols, *rows]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
