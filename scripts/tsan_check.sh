#!/usr/bin/env bash
# ThreadSanitizer job: builds aria_hpc._C with -fsanitize=thread into build/tsan, stages it beside
# a copy of the Python package, and runs the 8-thread concurrency test against it with libtsan
# preloaded. Fails on any ThreadSanitizer report. Usage: scripts/tsan_check.sh [python]
set -euo pipefail
PY=${1:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD="$ROOT/build/tsan"
STAGE="$BUILD/stage"
mkdir -p "$BUILD"
cmake -S "$ROOT" -B "$BUILD/cmake" -DARIA_TSAN=ON -DARIA_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$BUILD/lib" > "$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log"; exit 1; }
cmake --build "$BUILD/cmake" -j "$(nproc)" >> "$BUILD/build.log" 2>&1 || { cat "$BUILD/build.log"; exit 1; }
rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -r "$ROOT/aria_hpc" "$STAGE/aria_hpc"
rm -f "$STAGE"/aria_hpc/_C*.so
cp "$BUILD"/lib/_C*.so "$STAGE/aria_hpc/"
LIBTSAN=$(gcc -print-file-name=libtsan.so)
REPORT="$BUILD/report"
rm -f "$REPORT".*
cd "$STAGE"  # so that this staged package, not the checkout's, is the one imported
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 log_path=$REPORT"
# setarch -R: ThreadSanitizer needs the classic memory layout on kernels with high ASLR entropy.
LD_PRELOAD="$LIBTSAN" setarch "$(uname -m)" -R "$PY" -c "import aria_hpc._C as c; assert '$STAGE' in c.__file__, c.__file__"
LD_PRELOAD="$LIBTSAN" setarch "$(uname -m)" -R "$PY" -m pytest -q -p no:cacheprovider \
  "$ROOT/tests/test_region_table.py" -k "eight_threads or bad_samples or zero_copy" --tsan-n 200000
if ls "$REPORT".* >/dev/null 2>&1; then
  cat "$REPORT".*
  echo "tsan: ThreadSanitizer reported problems (above)" >&2
  exit 1
fi
echo "tsan: no ThreadSanitizer reports"
