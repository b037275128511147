#!/usr/bin/env bash
# One-call GPU check for a machine with a CUDA device and no network:
# build in-tree (the CUDA module is built when nvcc is found), run the GPU
# tests, write a JSON report to ${OUT:-bench/results}/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}
mkdir -p "$out"
start=$(date +%s)
tools/dev_build.sh > "$out/gpu_build.log" 2>&1; build_rc=$?
PYTHONPATH=python python -c "import specdyn, json; print(json.dumps(specdyn.info()))" > "$out/gpu_info.json" 2>&1
PYTHONPATH=python python -m pytest -m gpu -q tests/test_gpu.py > "$out/gpu_tests.log" 2>&1; test_rc=$?
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu_smi.txt" 2>&1
cat > "$out/gpu_check.json" <<JSON
{"build_rc": $build_rc, "tests_rc": $test_rc, "seconds": $(( $(date +%s) - start )),
 "tests_tail": $(tail -3 "$out/gpu_tests.log" | python -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}
JSON
cat "$out/gpu_check.json"
