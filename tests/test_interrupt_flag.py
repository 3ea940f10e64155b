"""Ctrl-C stops a long FA call: a subprocess that gets SIGINT about a second into the call must
raise KeyboardInterrupt within a few seconds and leave no native thread busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

CHILD = textwrap.dedent("""
    import os, sys, time, threading
    import numpy as np
    import flagcore
    case = sys.argv[1]
    rng = np.random.default_rng(0)
    if case == "irls":      # 2000 problems of p = 256: the IRLS (LAPACK) dominates
        x = rng.standard_normal((2000, 256, 300)).astype(np.float32)
        call = lambda: flagcore.flag_aggregate(x, max_iter=5)
    elif case == "eigh":    # one p = 3000 eigenproblem: the tridiagonalisation checks per panel
        from flagcore._backend import core
        g = rng.standard_normal((3000, 3000))
        g = g + g.T
        call = lambda: core.eigh_top(g, 1500)
    elif case == "gram_mid":  # p = 320: the AMX tile Gram where the CPU has it (else packed)
        a = rng.standard_normal(16_000_000).astype(np.float32)
        call = lambda: flagcore.flag_aggregate([a] * 320)
    else:                   # 2048 references to one 1e6-element array: the packed BLAS Gram
        a = rng.standard_normal(1_000_000).astype(np.float32)
        call = lambda: flagcore.flag_aggregate([a] * 2048)
    print("started", flush=True)
    t0 = time.monotonic()
    try:
        call()
        print("finished", time.monotonic() - t0, flush=True)
    except KeyboardInterrupt:
        t1 = time.monotonic()
        c0 = time.process_time()
        time.sleep(0.5)
        busy = time.process_time() - c0   # CPU used by every thread of the process meanwhile
        n_threads = threading.active_count()
        print(f"interrupted after {t1 - t0:.2f} s; cpu while idle {busy:.3f} s; "
              f"threads {n_threads}",
              flush=True)
        sys.exit(3)
""")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery is POSIX")
@pytest.mark.parametrize(
    "case,bound", [("irls", 5.0), ("gram", 5.0), ("gram_mid", 5.0), ("eigh", 1.5)]
)
def test_sigint_interrupts_long_flag_call(case, bound):
    # eigh: LAPACK's dsytrd was one call of seconds that Ctrl-C could not stop; flagcore's own
    # blocked tridiagonalisation checks between panels of 32 columns.
    env = dict(os.environ, FLAGCORE_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, case],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, (out, err)
    assert "interrupted" in out
    assert elapsed < bound, f"took {elapsed:.1f} s after SIGINT"
    busy = float(out.split("cpu while idle ")[1].split(" s")[0])
    assert busy < 0.2, out  # no native thread still computing
    assert out.strip().endswith("threads 1"), out
