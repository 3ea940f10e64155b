"""Ctrl-C reaches a running simulation: a subprocess gets SIGINT while the native event loop
runs (without progress, with a progress callback, with replications on two threads) and must
raise KeyboardInterrupt within a second, leaving no thread running and no core busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

CHILD = textwrap.dedent("""
    import sys, threading, time
    from flagcore.energy import simulate
    mode = sys.argv[1]
    kw = dict(requests=10**11, warmup=0, seed=1)
    if mode == "progress":
        kw["progress"] = lambda done, total: None
    elif mode == "threads":
        kw.update(replications=4, threads=2)
    print("started", flush=True)
    try:
        simulate(4, 2, 1.5, [(1.0, 1.0, 1.0)], **kw)
    except KeyboardInterrupt:
        t_int = time.perf_counter()
        c0 = time.process_time()
        time.sleep(0.5)
        busy = time.process_time() - c0
        n = threading.active_count()
        print(f"interrupted {t_int:.6f} threads={n} busy={busy:.3f}", flush=True)
        sys.exit(0)
    print("finished without interrupt", flush=True)
    sys.exit(1)
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT delivery to a subprocess needs POSIX")
@pytest.mark.parametrize("mode", ["plain", "progress", "threads"])
def test_sigint_stops_simulation(mode):
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "started"
            time.sleep(0.5)  # inside the native loop by now
            assert proc.poll() is None, proc.stderr.read()
            t_sent = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, (out, err)
    fields = dict(f.split("=") for f in out.split()[2:])
    t_int = float(out.split()[1])
    # perf_counter is CLOCK_MONOTONIC on Linux: comparable across the two processes
    if sys.platform.startswith("linux"):
        assert t_int - t_sent < 1.0, (t_int - t_sent, out)
    assert int(fields["threads"]) == 1, out
    assert float(fields["busy"]) < 0.1, out  # no core kept busy after the interrupt
