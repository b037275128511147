#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has no network): downloaded here into
# .whl/ (git-ignored) for its Python 3.12 / x86-64. bench/gpu_check.sh installs
# them when .whl/ is present; pass carry=[".whl"] to the device run.
# Its image already holds numpy, scipy, xarray, pybind11, scikit-build-core,
# cmake, ninja, pytest, hypothesis, cupy and torch; BLAS/LAPACK headers and
# library (scipy-openblas32) are what the build needs besides.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "scipy-openblas32==$(python -c 'import importlib.metadata as m; print(m.version("scipy-openblas32"))')"
ls -la .whl
