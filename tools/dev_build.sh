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
# copy then rename: a process that has the old module mapped keeps it (an in-place
# overwrite would crash it with a bus error)
install_module() { cp "$1" "python/specdyn/.$(basename "$1").tmp" && mv -f "python/specdyn/.$(basename "$1").tmp" "python/specdyn/$(basename "$1")"; }
for so in "$BUILD"/_core*.so "$BUILD"/_cuda*.so; do [ -e "$so" ] && install_module "$so"; done
echo "built: $(ls python/specdyn/*.so | tr '\n' ' ')"
