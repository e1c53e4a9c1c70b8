#!/usr/bin/env bash
# The whole test suite: C core (plain and under ASan+UBSan), the Python suite on
# the platform backend, on the emulated backend, in asyncio debug mode, and
# against an ASan+UBSan build of the extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n=== %s\n' "$*"; }

step "C core tests"
make -s -C csrc test
step "C core tests under AddressSanitizer + UndefinedBehaviorSanitizer"
make -s -C csrc SAN=1 BUILD=build-san test

step "Python tests (backend: $($PY -c 'import zcsend; print(zcsend.backend())'))"
$PY -m pytest -q tests/python
step "Python tests, ZCSEND_BACKEND=emulated"
ZCSEND_BACKEND=emulated $PY -m pytest -q tests/python
step "Python tests, PYTHONASYNCIODEBUG=1"
PYTHONASYNCIODEBUG=1 $PY -m pytest -q tests/python

step "Python tests against the extension built with ASan + UBSan"
rm -rf build/san-py
ZCSEND_SANITIZE=1 $PY setup.py -q build_ext --build-temp build/san-tmp --build-lib build/san-py >/dev/null
cp python/zcsend/*.py python/zcsend/*.pyi python/zcsend/py.typed build/san-py/zcsend/
PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# CPython's own allocations are not ours to judge: leak checks stay off here
# (the C suite above runs with them on), every other ASan/UBSan finding aborts.
LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=build/san-py \
  $PY -m pytest -q -p no:cacheprovider tests/python
