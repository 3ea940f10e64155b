#!/usr/bin/env bash
# One prepared GPU verification run (the GPU issue): build for sm_90, CUDA tests, compute-sanitizer
# memcheck + racecheck on small FA / rules / ragged-layer cases, then the GPU benchmarks with short
# repeats. Every step has its own time limit; the whole run is sized for ~8 minutes on an H200
# (16 cores) so that a 15-minute device budget leaves room for one rerun.
#
#   bash bench/gpu_check.sh OUTDIR            # e.g. on the device machine: bash bench/gpu_check.sh "$OUT"
#
# Order: build, tests, the goals benchmark, the sanitizers, the FA table (most needed first, so a
# run cut short by the device limit still brings back what matters).
#
# Writes at most 8 files into OUTDIR (the device tool brings back 8): summary.json (device, driver,
# commit, date, each step's exit code and seconds), build.log, tests.log, sanitize.log, bench.log,
# flag_cuda.json, gpu_goals.json, gram_paths.json (the host CPU's Gram paths). On a machine
# without a GPU (the CPU rehearsal) the GPU steps report "skipped" and the script still exits 0
# when the build and the (skipped) tests are fine.
# If a wheel directory .whl/ exists in the repository root (packages the offline device machine
# lacks), its wheels are installed first.
set -uo pipefail
out="${1:?usage: bash bench/gpu_check.sh OUTDIR}"
mkdir -p "$out" || { echo "gpu_check: cannot create $out" >&2; exit 2; }
[ -w "$out" ] || { echo "gpu_check: $out is not writable" >&2; exit 2; }
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
steps_json=""
t_all=$(date +%s)

step() {  # step NAME LIMIT_SECONDS LOGFILE CMD...
  local name="$1" limit="$2" log="$3"; shift 3
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)" | tee -a "$out/$log"
  timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$out/$log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  echo "== $name: exit $rc in ${dt}s" | tee -a "$out/$log"
  steps_json="${steps_json}${steps_json:+,}\"$name\": {\"rc\": $rc, \"seconds\": $dt}"
  write_summary
  return $rc
}

write_summary() {  # rewritten after every step, so a run cut short still reports its steps
  cat >"$out/summary.json" <<EOF
{"schema": "flagcore.gpu_check/1", "device": "$gpu_name", "driver": "$driver", "gpu_visible": $have_gpu,
 "commit": "$commit", "modified_tracked_files": $dirty, "source_digest": "$digest", "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "host_cores": $(nproc), "total_seconds": $(( $(date +%s) - t_all )),
 "steps": {${steps_json}}}
EOF
}

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
gpu_name=$( [ $have_gpu = 1 ] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo none)
driver=$( [ $have_gpu = 1 ] && nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1 || echo none)
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The device tool's copy of the tree can carry the .git of an older checkout (the 2026-12-04 runs
# all said 98f65cf): the digest of the sources identifies the code that ran. Here, the same
# command gives the digest of a commit's tree:
#   git ls-files csrc python bench tests CMakeLists.txt pyproject.toml | LC_ALL=C sort | xargs sha256sum | sha256sum
# (LC_ALL=C: the device's locale sorts the names differently, so the digests of runs 5 and 6 of
# 2026-12-04 matched this command only with that locale's order: see docs/gpu.md)
digest=$(git ls-files csrc python bench tests CMakeLists.txt pyproject.toml 2>/dev/null | LC_ALL=C sort \
  | xargs sha256sum 2>/dev/null | sha256sum | cut -c1-16)
dirty=$(git status --porcelain 2>/dev/null | grep -v '^??' | wc -l)
echo "gpu_check: device=$gpu_name driver=$driver commit=$commit (modified files: $dirty) sources=$digest"

{ [ $have_gpu = 1 ] && nvidia-smi; command -v nvcc >/dev/null && nvcc --version
  "$PY" -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)"
  "$PY" -c "import pybind11, scikit_build_core; print('pybind11', pybind11.__version__, 'scikit-build-core', scikit_build_core.__version__)"
  c++ --version | head -1; g++ --version | head -1
  # which libstdc++ files the compiler finds (the module must link the shared one; CMakeLists.txt)
  for f in libstdc++.so libstdc++.so.6 libstdc++.a; do echo "c++ -print-file-name=$f: $(c++ -print-file-name=$f)"; done
  ls -la "$(dirname "$(c++ -print-file-name=libstdc++.a)")" | grep -i stdc
  ls -la /usr/lib/x86_64-linux-gnu/ | grep -i "libstdc"
} >>"$out/build.log" 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 120 build.log "$PY" -m pip install -q --no-index --no-deps --no-compile .whl/*.whl
fi
# sm_90 only, all cores: the build is the longest step.
step build 300 build.log env FLAGCORE_CUDA=ON FLAGCORE_CUDA_ARCHITECTURES=90 \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" -m pip install --no-build-isolation --no-deps -q \
  -C build-dir=build/gpu_check .
build_rc=$?
grep -o "[^ ]*libstdc++[^ ]*" build/gpu_check/build.ninja 2>/dev/null | sort | uniq -c \
  | sed 's/^/build.ninja: /' >>"$out/build.log"
[ $build_rc = 0 ] || echo "gpu_check: build failed (see $out/build.log)" >&2

if [ $build_rc = 0 ]; then
  "$PY" -c "import flagcore, json; print(json.dumps(flagcore.build_info()))" >>"$out/build.log" 2>&1
  "$PY" -c "import flagcore._core as c; print(c.__file__)" | xargs ldd 2>/dev/null | grep -E "stdc|gcc_s|cuda" >>"$out/build.log"
  # -m cuda: every test that needs the GPU. No -x: one lease is short, so the first run should
  # report every failure, not the first; pytest-timeout (where installed) bounds each test.
  tflags=(-m cuda -q -p no:cacheprovider --durations=10)
  "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && tflags+=(--timeout=90)
  # The files that hold cuda-marked tests only: collecting the whole suite would import
  # packages the offline device machine lacks (flwr).
  step tests 100 tests.log "$PY" -m pytest "${tflags[@]}" \
    tests/test_flag_cuda.py tests/test_rules_coordinate.py tests/test_build.py
  tests_rc=$?
  # The goals first (the numbers the issue asks for), then the sanitizers, then the long table.
  step bench_goals 150 bench.log "$PY" bench/bench_gpu_goals.py --repeat 10 --out "$out/gpu_goals.json"
  if [ $have_gpu = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
    step memcheck 60 sanitize.log compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$PY" bench/sanitize_flag_cuda.py --small --rules
    step racecheck 80 sanitize.log compute-sanitizer --tool racecheck --error-exitcode 9 \
      "$PY" bench/sanitize_flag_cuda.py --small --rules
  else
    echo "gpu_check: no GPU or no compute-sanitizer: sanitizer steps skipped" | tee -a "$out/sanitize.log"
    steps_json="${steps_json},\"memcheck\": \"skipped\", \"racecheck\": \"skipped\""
  fi
  # Whether a C++ error raised inside the module reaches Python (runs 3 and 4 of 2026-12-04
  # crashed there: a static libstdc++ in the module), with a cuda-gdb backtrace of a crash.
  step probe 120 sanitize.log "$PY" bench/cuda_exception_probe.py
  step bench_flag_cuda 100 bench.log "$PY" bench/bench_flag_cuda.py --quick --repeat 10 --out "$out/flag_cuda.json"
  # The host's CPU Gram paths on all its cores (the GPU machine's host has AVX-512 and AMX, which
  # the build machines lack): the thirteenth session's shared-run split (gram_cpu.cpp,
  # shared_run_bounds) is measured here; docs/scaling_history.md "Thirteenth session" has the run before it.
  step cpu_gram_paths 120 bench.log "$PY" bench/bench_gram_paths.py \
    --sizes 64:1000000,256:200000,1024:50000,4096:10000 --repeat 3 --out "$out/gram_paths.json"
  # The same on 2 threads (the build machines' count, where the kernels' thresholds were tuned):
  # whether the host differs from those machines or only the thread count does. Table only (in
  # bench.log; its JSON stays on the device). The thresholds cannot depend on the thread count:
  # the AMX, AVX-512 and OpenBLAS paths give different bits.
  step cpu_gram_paths_2t 90 bench.log "$PY" bench/bench_gram_paths.py --threads 2 \
    --sizes 64:1000000,256:200000,1024:50000 --repeat 3 --out /tmp/flagcore_gram_paths_2t.json
else
  tests_rc=1
fi

write_summary
echo "gpu_check: summary in $out/summary.json ($(( $(date +%s) - t_all )) s)"
[ $build_rc = 0 ] && [ $tests_rc = 0 ]
