"""Thread safety: concurrent calls from several Python threads give the same bits as serial
calls, the native code releases the GIL while it works, and results do not depend on
set_num_threads (so changing it while other threads compute is harmless; see the README's
Reliability section for what is and is not meant to be shared between threads)."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import flagcore
from flagcore import _core
from flagcore._reference_rules import make_gradients
from flagcore.energy import simulate

THREADS = 4


def _tasks():
    """(name, callable) pairs, each deterministic; inputs built once and shared read-only."""
    xs = [
        make_gradients(p, 30_000, seed=s, byzantine=2, dtype=dt)
        for s, (p, dt) in enumerate([(9, np.float32), (13, np.float64), (16, np.float32)])
    ]
    xs[1][3, 7] = np.nan  # one excluded worker
    layers = [make_gradients(7, n, seed=10 + n, dtype=np.float32) for n in (300, 5000, 20_000)]
    tasks = []
    for i, x in enumerate(xs):
        tasks.append(
            (f"flag[{i}]", lambda x=x: flagcore.flag_aggregate(x, r=4, max_iter=5, lam=0.5))
        )
        for rule, kw in [
            ("median", {}),
            ("trimmed_mean", {"f": 2}),
            ("phocas", {"f": 2}),
            ("krum", {"f": 2}),
            ("bulyan", {"f": 1}),
            ("geometric_median", {}),
            ("centered_clipping", {"tau": 5.0}),
            ("multi_krum", {"f": 1, "pre": "bucketing"}),
            ("mean", {"f": 2, "pre": "nnm"}),
        ]:
            tasks.append(
                (f"{rule}[{i}]", lambda x=x, rule=rule, kw=kw: flagcore.aggregate(x, rule, **kw))
            )
    tasks.append(
        ("layers", lambda: np.concatenate(flagcore.flag_aggregate_layers(layers, r=3, max_iter=3)))
    )
    tasks.append(("gram", lambda: _core.gram(xs[0][None])))
    for seed in (1, 2):
        tasks.append(
            (
                f"simulate[{seed}]",
                lambda seed=seed: np.array(
                    [
                        simulate(
                            4,
                            2,
                            1.0,
                            [(1.0, 1.0, 0.5), (2.0, 4.0, 0.5)],
                            requests=20_000,
                            seed=seed,
                            threads=1,
                        ).to_dict()[k]
                        for k in (
                            "mean_response_time",
                            "energy_per_request",
                            "average_power",
                            "mean_in_system",
                        )
                    ]
                ),
            )
        )
    return tasks


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_concurrent_calls_equal_serial_calls():
    tasks = _tasks()
    serial = {name: _bits(fn()) for name, fn in tasks}
    order = [t for t in tasks for _ in range(2)]
    np.random.default_rng(0).shuffle(order)  # interleave different work on the threads
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        got = list(pool.map(lambda t: (t[0], _bits(t[1]())), order))
    for name, bits in got:
        assert bits == serial[name], f"{name}: a concurrent call differs from the serial one"


def test_results_do_not_depend_on_num_threads_even_when_changed_concurrently():
    tasks = [t for t in _tasks() if not t[0].startswith("simulate")]
    try:
        flagcore.set_num_threads(1)
        one = {name: _bits(fn()) for name, fn in tasks}
        flagcore.set_num_threads(3)
        three = {name: _bits(fn()) for name, fn in tasks}
        assert one == three
        stop = threading.Event()

        def toggle():  # set_num_threads is a process-wide atomic: racing it is safe
            for n in itertools.cycle([1, 2, 3, 0]):
                if stop.is_set():
                    return
                flagcore.set_num_threads(n)
                time.sleep(0.0005)

        th = threading.Thread(target=toggle)
        th.start()
        try:
            with ThreadPoolExecutor(max_workers=THREADS) as pool:
                got = list(pool.map(lambda t: (t[0], _bits(t[1]())), tasks))
        finally:
            stop.set()
            th.join()
        for name, bits in got:
            assert bits == one[name], name
    finally:
        flagcore.set_num_threads(0)  # back to the default


@pytest.mark.parametrize("what", ["flag_aggregate", "simulate"])
def test_native_work_releases_the_gil(what):
    """While one thread is inside a long native call, another keeps running Python code."""
    if what == "flag_aggregate":
        x = make_gradients(12, 1_000_000, seed=1)  # float32, 48 MB

        def work():
            for _ in range(4):
                flagcore.flag_aggregate(x, r=6)
    else:
        work = lambda: simulate(8, 4, 1.0, [(1.0, 1.0, 1.0)], requests=400_000, threads=1)  # noqa: E731
    done = threading.Event()
    th = threading.Thread(target=lambda: (work(), done.set()))
    ticks = 0
    before = flagcore.get_num_threads()
    flagcore.set_num_threads(1)  # leave a core to the ticking thread
    try:
        th.start()
        t0 = time.perf_counter()
        while not done.is_set():
            ticks += 1
            time.sleep(0.0001)
        th.join()
        elapsed = time.perf_counter() - t0
    finally:
        flagcore.set_num_threads(0)
    # Released, the loop ticks thousands of times a second; held, it could only tick between
    # native calls (a handful in all). Only meaningful when the work lasts long enough.
    if elapsed > 0.05:
        assert ticks > 200 * elapsed, (ticks, elapsed)
    assert before >= 1
