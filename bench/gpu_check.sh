#!/usr/bin/env bash
# One-call GPU check for a machine with a CUDA device and no network (< 8 min
# on an H200): build in-tree (the CUDA module is built when nvcc is found), run
# the GPU tests, then the device benchmarks (bench/gpu_bench.py: Lanczos;
# bench/gpu_train_bench.py: training step, DMFT). Reports go to
# ${OUT:-bench/results}: gpu_check.json (summary), gpu_bench.json, gpu_train.json, logs.
# Stage limits (seconds) can be changed: GPU_CHECK_BUILD_S, GPU_CHECK_TESTS_S,
# GPU_CHECK_BENCH_S, GPU_CHECK_TRAIN_S; benchmark sizes: see bench/gpu_bench.py (SPECDYN_BENCH_*).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
export OUT="$out"
export SPECDYN_BENCH_SVD_TIMEOUT=${SPECDYN_BENCH_SVD_TIMEOUT:-90}
start=$(date +%s)
# Wheels carried from a networked machine (tools/gpu_wheels.sh -> .whl/): the lent machine has no network.
if ls .whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The build of tools/dev_build.sh, with all cores of the lent machine (dev_build uses 2).
build() {
  cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
    -DPython_EXECUTABLE="$(command -v python)" && cmake --build build/dev -j "$(nproc)" &&
    cp build/dev/_core*.so python/specdyn/ && { cp build/dev/_cuda*.so python/specdyn/ 2>/dev/null || true; }
}
export -f build
timeout "${GPU_CHECK_BUILD_S:-170}" bash -c build > "$out/gpu_build.log" 2>&1; build_rc=$?
build_s=$(( $(date +%s) - start ))
PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" python -c "import specdyn, json; print(json.dumps(specdyn.info()))" > "$out/gpu_info.json" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu_smi.txt" 2>&1
t=$(date +%s)
PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" timeout "${GPU_CHECK_TESTS_S:-90}" python -m pytest -m gpu -q -p no:cacheprovider \
  tests/test_gpu.py tests/test_gpu_train.py > "$out/gpu_tests.log" 2>&1; test_rc=$?
tests_s=$(( $(date +%s) - t ))
t=$(date +%s)
PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" timeout "${GPU_CHECK_BENCH_S:-170}" python bench/gpu_bench.py > "$out/gpu_bench.log" 2>&1; bench_rc=$?
bench_s=$(( $(date +%s) - t ))
# training step at N = 16384 vs PyTorch, DMFT curve device vs CPU (its log joins gpu_bench.log:
# the device tool brings back at most 8 files)
t=$(date +%s)
PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}" timeout "${GPU_CHECK_TRAIN_S:-100}" python bench/gpu_train_bench.py --quick \
  --out "$out/gpu_train.json" >> "$out/gpu_bench.log" 2>&1; train_rc=$?
train_s=$(( $(date +%s) - t ))
tail_json() { tail -"$1" "$2" 2>/dev/null | python -c 'import json,sys; print(json.dumps(sys.stdin.read()))'; }
cat > "$out/gpu_check.json" <<JSON
{"build_rc": $build_rc, "tests_rc": $test_rc, "bench_rc": $bench_rc, "train_rc": $train_rc,
 "build_s": $build_s, "tests_s": $tests_s, "bench_s": $bench_s, "train_s": $train_s, "seconds": $(( $(date +%s) - start )),
 "tests_tail": $(tail_json 15 "$out/gpu_tests.log"),
 "bench_tail": $(tail_json 30 "$out/gpu_bench.log")}
JSON
cat "$out/gpu_check.json"
