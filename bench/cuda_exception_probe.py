"""Does a C++ exception raised inside flagcore's module reach Python as an exception on this
machine? (On the H200, 2026-12-04, every one ended the process with SIGSEGV: the build there had
linked a static libstdc++ into the module, and its first formatted error message crashed; see
docs/gpu.md.) Each case runs in its own subprocess; a crashing case is re-run under
cuda-gdb for a native backtrace where cuda-gdb exists. Part of bench/gpu_check.sh.

    python bench/cuda_exception_probe.py            # all cases, a summary line each
    python bench/cuda_exception_probe.py CASE       # one case in this process
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CASES = {
    # thrown in bindings.cpp (a CPU translation unit), no torch imported
    "cpu_tu": "from flagcore import _core\n_core.flag_cuda_plan_uniform(1, 6145, 10, 1)",
    # the same with torch (and its CUDA context) loaded first
    "cpu_tu_torch": (
        "import torch\ntorch.zeros(1, device='cuda')\n"
        "from flagcore import _core\n_core.flag_cuda_plan_uniform(1, 6145, 10, 1)"
    ),
    # a CUDA entry point's refusal with device arrays and a CUDA context: b > 65535 problems
    # (thrown in bindings.cpp since the fourth run; inside coordinate_cuda.cu before)
    "cuda_call": (
        "import torch\nfrom flagcore import _core\nfrom flagcore._backend import cuda_array\n"
        "b = 65536\nx = torch.zeros((b, 1, 1), device='cuda')\n"
        "out = torch.zeros((b, 1), device='cuda')\n"
        "mask = torch.ones(b, dtype=torch.int64, device='cuda')\n"
        "flags = torch.zeros((b, 1), dtype=torch.int32, device='cuda')\n"
        "_core.coordinate_cuda(cuda_array(x), cuda_array(out), cuda_array(mask), cuda_array(flags),"
        " rule=_core.CoordRule.median, f=0, keep=-1,"
        " stream=torch.cuda.current_stream().cuda_stream)"
    ),
}


def run_one(name: str) -> int:
    try:
        exec(CASES[name], {})
    except Exception as exc:  # the expected outcome: a Python exception
        print(f"{name}: raised {type(exc).__name__}: {str(exc)[:160]}")
        return 0
    print(f"{name}: raised nothing")
    return 1


def main(argv: list[str]) -> int:
    if argv:
        return run_one(argv[0])
    bad = 0
    for name in CASES:
        r = subprocess.run(
            [sys.executable, "-X", "faulthandler", __file__, name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        line = (r.stdout.strip().splitlines() or [""])[-1]
        print(f"{name}: exit {r.returncode} | {line}", flush=True)
        if r.returncode != 0:
            bad += 1
            print(r.stderr[-1500:], flush=True)
            gdb = shutil.which("cuda-gdb")
            if gdb and r.returncode < 0:
                g = subprocess.run(
                    [
                        gdb,
                        "-q",
                        "-batch",
                        "-ex",
                        "run",
                        "-ex",
                        "bt 30",
                        "--args",
                        sys.executable,
                        __file__,
                        name,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=240,
                    env=dict(os.environ, PYTHONUNBUFFERED="1"),
                )
                print("cuda-gdb backtrace:\n" + g.stdout[-6000:] + g.stderr[-1500:], flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
