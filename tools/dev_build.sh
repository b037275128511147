#!/usr/bin/env bash
# In-tree development build: compiles the native modules into build/dev and
# copies them next to the Python sources, so `PYTHONPATH=python pytest` runs
# this tree without reinstalling. Usage: tools/dev_build.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${SPECDYN_BUILD_DIR:-build/dev}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DPython_EXECUTABLE="$(command -v python)" "$@" >/dev/null
cmake --build "$BUILD" -j 2
cp "$BUILD"/_core*.so python/specdyn/
if ls "$BUILD"/_cuda*.so >/dev/null 2>&1; then cp "$BUILD"/_cuda*.so python/specdyn/; fi
echo "built: $(ls python/specdyn/*.so | tr '\n' ' ')"
