"""Ctrl-C reaches the long native loops of the rules (and of the team IRLS and the service
sampler): a subprocess starts a call that would run
for many seconds, gets SIGINT about 1 s later, and must raise KeyboardInterrupt within a few
seconds (the natives poll for signals at a bounded interval: csrc/common/cancel.hpp)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# Each case prints "ready" just before a call that takes far more than 1 s on 2 threads.
CASES = {
    # 2048 references to one 4e6-element float32 array (16 MB): a median over p = 2048 per
    # column, the sorting-network path at large p (tens of seconds).
    "median": """
        v = np.random.default_rng(0).standard_normal(4_000_000).astype(np.float32)
        x = [v] * 2048
        print("ready", flush=True)
        flagcore.aggregate(x, "median")
    """,
    # NNM's mixing product: 600 mixed rows of 20000 workers over 1e5 coordinates (2.4e12 flops:
    # tens of seconds, so the call is still running when the signal comes).
    "nnm_product": """
        v = np.random.default_rng(0).standard_normal(100_000).astype(np.float32)
        a = np.ones((1, 600, 20000))
        d = np.full((1, 600), 20000.0)
        print("ready", flush=True)
        core.mix_rows([v] * 20000, a, d)
    """,
    # Weiszfeld iterations in p-space that never stop (tol = -1: no step counts as converged).
    "geometric_median": """
        x = np.random.default_rng(0).standard_normal((1500, 64))
        g = core.gram(x[None])
        print("ready", flush=True)
        core.geometric_median(g, np.array([1e-6]), -1.0, 10**9)
    """,
    # The IRLS run by a team of threads with a barrier (the CUDA block's code on the CPU), many
    # steps: the team used to run to the end (a 4.4 s call ignored Ctrl-C for all of it).
    "team_irls": """
        # 16 problems: one stops at a rejected step after 62-219 steps (0.9 s for 89 on an
        # AMD Zen 4, shorter than the test's 1 s wait), all 16 in one call take ~20 s there
        g = core.gram(np.random.default_rng(0).standard_normal((16, 32, 64)))
        print("ready", flush=True)
        core.flag_irls(g, core.FlagParams(r=16, max_iter=1_000_000, tol=0.0), 4)
    """,
    # 2e8 unit-mean service draws (the simulator's sampler): one loop without a poll before.
    "sim_sample": """
        print("ready", flush=True)
        core.sim_sample(0, 0.0, [], 1, 0, 200_000_000)
    """,
    # Centered clipping with a huge iteration count.
    "centered_clipping": """
        x = np.random.default_rng(0).standard_normal((1501, 64))
        g = core.gram(x[None])
        print("ready", flush=True)
        core.centered_clipping(g, 0.1, 10**9)
    """,
}

CHILD = """
import time
import numpy as np
import flagcore
from flagcore._backend import core
try:
{body}
    print("finished", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("case", list(CASES))
def test_sigint_stops_a_long_rule_call(case):
    body = textwrap.indent(textwrap.dedent(CASES[case]).strip(), "    ")
    env = dict(os.environ, FLAGCORE_NUM_THREADS="2")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(body=body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", (
            f"child failed before the call: {line!r} {proc.stderr.read()}"
        )
        time.sleep(1.0)
        assert proc.poll() is None, "the call finished before the signal: make the case longer"
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        waited = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert out.strip() == "interrupted", f"stdout {out!r}, stderr {err[-2000:]!r}"
    assert proc.returncode == 0
    assert waited < 5.0, f"took {waited:.1f} s to stop after SIGINT"
