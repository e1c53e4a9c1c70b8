#!/usr/bin/env bash
# The whole test suite: C core (plain and under ASan+UBSan), the Python suite on
# the platform backend, on the emulated backend, in asyncio debug mode, and
# against an ASan+UBSan build of the extension; then the Lua module's suite
# (busted, lua5.4) plain, emulated, with the collector running constantly,
# under ASan+UBSan with leak checks, under valgrind, under LuaJIT, and built
# by luarocks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n=== %s\n' "$*"; }
# a benchmark's output has the line (a regex): else the output, and the run fails
has() { grep -q -- "$1" "$2" || { printf 'no line %s in %s:\n' "$1" "$2"; cat "$2"; exit 1; }; }

step "C core tests"
make -s -C csrc test
step "C core tests under AddressSanitizer + UndefinedBehaviorSanitizer"
make -s -C csrc SAN=1 BUILD=build-san test
step "C core tests under ThreadSanitizer"
make -s -C csrc TSAN=1 BUILD=build-tsan test

step "Python tests (backend: $($PY -c 'import zcsend; print(zcsend.backend())'))"
$PY -m pytest -q tests/python
step "Python tests, ZCSEND_BACKEND=emulated"
ZCSEND_BACKEND=emulated $PY -m pytest -q tests/python
step "Python tests, PYTHONASYNCIODEBUG=1"
PYTHONASYNCIODEBUG=1 $PY -m pytest -q tests/python

PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"

step "Python tests against the extension built with ASan + UBSan"
rm -rf build/san-py
ZCSEND_SANITIZE=1 $PY setup.py -q build_ext --build-temp build/san-tmp --build-lib build/san-py >/dev/null
cp python/zcsend/*.py python/zcsend/*.pyi python/zcsend/py.typed build/san-py/zcsend/
# CPython's own allocations are not ours to judge: leak checks stay off here
# (the C suite above runs with them on), every other ASan/UBSan finding aborts.
LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=build/san-py \
  $PY -m pytest -q -p no:cacheprovider tests/python

step "Python engine-heavy tests against the extension built with ThreadSanitizer"
rm -rf build/tsan-py
ZCSEND_SANITIZE=thread $PY setup.py -q build_ext --build-temp build/tsan-tmp --build-lib build/tsan-py >/dev/null
cp python/zcsend/*.py python/zcsend/*.pyi python/zcsend/py.typed build/tsan-py/zcsend/
# the interpreter itself (pyenv's shims are bash, which crashes with libtsan preloaded);
# --capture=sys: a report reaches the terminal before halt_on_error ends the run (exit 66)
PYREAL=$($PY -c 'import sys; print(sys.executable)')
LD_PRELOAD="$(gcc -print-file-name=libtsan.so)" \
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(pwd)/tests/python/tsan.supp" \
  PYTHONPATH=build/tsan-py "$PYREAL" -m pytest -q -p no:cacheprovider --capture=sys \
  tests/python/test_errors.py tests/python/test_ownership.py \
  tests/python/test_scale.py::test_10000_transfers_leave_nothing_behind \
  tests/python/test_scale.py::test_cancel_while_the_engine_takes_the_batch_in

step "Wheels and sdist (scripts/wheels.sh), then the packaging tests (libev hidden, no headers)"
DIST=$(mktemp -d)
bash scripts/wheels.sh --out "$DIST"
ZCSEND_DIST="$DIST" $PY -m pytest -q -p no:cacheprovider -rs tests/python/test_packaging.py
# every other CPython the metadata claims: its own wheel in a fresh venv, the
# contract and error tests (run from elsewhere, so zcsend comes from the venv)
HERE=$(pwd)
MINE=$($PY -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
for P in $(bash scripts/wheels.sh --pythons); do
  TAG=$($P -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  [ "$TAG" = "$MINE" ] && continue
  step "Contract and error tests on $($P -V) (its wheel, a fresh venv)"
  VENV=$(mktemp -d)
  $P -m venv --system-site-packages "$VENV"
  # --ignore-installed: a zcsend in that Python's own site-packages must not stand in for it
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps \
    --ignore-installed "$DIST"/zcsend-*-"$TAG"-"$TAG"-*.whl
  "$VENV/bin/python" -c 'import sys, zcsend; assert zcsend.__file__.startswith(sys.prefix), zcsend.__file__'
  (cd "$VENV" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    "$HERE/tests/python/test_sendfile.py" "$HERE/tests/python/test_errors.py")
  rm -rf "$VENV"
done
rm -rf "$DIST"

BUSTED="busted --lua=lua5.4 -o utfTerminal"
step "Lua tests (make -C lua; busted with lua5.4)"
make -s -C lua
(cd lua && $BUSTED)
step "Lua tests, ZCSEND_BACKEND=emulated"
(cd lua && ZCSEND_BACKEND=emulated $BUSTED)
step "Lua tests, the garbage collector running constantly"
(cd lua && ZCSEND_GC_STRESS=1 $BUSTED)
step "Lua tests against the module built with ASan + UBSan (leak checks on)"
make -s -C lua SAN=1 OUT=build-san/zcsend/core.so
(cd lua && ZCSEND_CPATH="./build-san/?.so" LD_PRELOAD="$PRELOAD" \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 LSAN_OPTIONS="suppressions=$(pwd)/spec/lsan.supp" \
  $BUSTED)  # (the slow unwinder: libcrypto has no frame pointers, and lsan.supp names a frame past it)
step "Lua tests under valgrind (errors and definite/indirect leaks fail the run)"
(cd lua && valgrind -q --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
  --suppressions=spec/valgrind.supp lua5.4 "$(command -v busted)" -o utfTerminal)
step "Lua tests under LuaJIT 2.1 (the same module built against luajit's headers)"
make -s -C lua LUA=luajit
(cd lua && ZCSEND_LUA=luajit ZCSEND_CPATH="./build-luajit/?.so" busted --lua=luajit -o utfTerminal)
step "Lua in its real hosts: nginx + lua-nginx-module, Tarantool, luv (busted hostspec)"
(cd lua && $BUSTED hostspec)
step "luarocks make (zcsend-scm-1.rockspec, from the root) for Lua 5.4 and LuaJIT, into scratch trees"
for V in 5.4 5.1; do
  TREE=$(mktemp -d)
  if [ $V = 5.4 ]; then LUA=lua5.4; EXTRA=""; else LUA=luajit; EXTRA="LUA_INCDIR=/usr/include/luajit-2.1"; fi
  luarocks --lua-version $V --tree "$TREE" make $EXTRA >/dev/null
  ZT="$TREE" LUA_PATH="$TREE/share/lua/$V/?.lua;;" LUA_CPATH="$TREE/lib/lua/$V/?.so;;" $LUA -e '
    local z, tree = require "zcsend", os.getenv("ZT")
    assert(package.searchpath("zcsend.core", package.cpath):find(tree, 1, true))
    assert(package.searchpath("zcsend.nginx", package.path):find(tree, 1, true))
    print("luarocks build loads (" .. _VERSION .. "): " .. z._VERSION .. " " .. z.backend())'
  rm -rf "$TREE"
done
step "Benchmark smoke run (benchmarks/run.py --quick: every contender, every metric, once)"
OUT=$(mktemp -d)
$PY benchmarks/run.py --quick --out "$OUT" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
has '^| zcsend, asyncio |' "$OUT/results.md"
test -s "$OUT/chart.png"
tail -n +2 "$OUT/results.md" | head -20
step "Per-call, cold-cache and bare-server benchmark smoke runs (benchmarks/percall.py, cold.py, bare.py --quick)"
$PY benchmarks/percall.py --quick >"$OUT/percall.md" 2>"$OUT/percall.log" || { cat "$OUT/percall.log"; exit 1; }
has '^| 16 KiB |' "$OUT/percall.md"
cat "$OUT/percall.md"
$PY benchmarks/percall.py --quick --one-connection >"$OUT/percall1.md" 2>"$OUT/percall1.log" || { cat "$OUT/percall1.log"; exit 1; }
has '^| 16 KiB |' "$OUT/percall1.md"
has 'one connection' "$OUT/percall1.md"
$PY benchmarks/percall.py --quick --one-connection --loop uvloop >"$OUT/percall2.md" 2>"$OUT/percall2.log" || { cat "$OUT/percall2.log"; exit 1; }
has '^| 16 KiB |' "$OUT/percall2.md"
has '(uvloop,' "$OUT/percall2.md"
$PY benchmarks/cold.py --quick >"$OUT/cold.md" 2>"$OUT/cold.log" || { cat "$OUT/cold.log"; exit 1; }
has '^| zcsend |' "$OUT/cold.md"
has '^| zcsend (hot via the engine) |' "$OUT/cold.md"
cat "$OUT/cold.md"
$PY benchmarks/cold.py --quick --warm --watch 200 --only zcsend >"$OUT/cold1.md" 2>"$OUT/cold1.log" || { cat "$OUT/cold1.log"; exit 1; }
has '--warm, the control' "$OUT/cold1.md"
has '^| zcsend |' "$OUT/cold1.md"
$PY benchmarks/bare.py --quick >"$OUT/bare.md" 2>"$OUT/bare.log" || { cat "$OUT/bare.log"; exit 1; }
has '^| zcsend (open per request) |' "$OUT/bare.md"
cat "$OUT/bare.md"
# 1 MiB: wrk ends its runs mid-answer; every server must take that quietly
$PY benchmarks/bare.py --quick --size 1024 >"$OUT/bare1m.md" 2>"$OUT/bare1m.log" || { cat "$OUT/bare1m.log"; exit 1; }
has '^| zcsend (open per request) |' "$OUT/bare1m.md"
step "The core's small-send benchmark smoke run (benchmarks/core_small.c --quick)"
make -s -C csrc
cc -O2 -Wall -Werror -Icsrc benchmarks/core_small.c csrc/build/libzcsend.a -lev -lssl -lcrypto -pthread \
  -o "$OUT/core_small"
"$OUT/core_small" --quick >"$OUT/core_small.md"
has '^| 4 KiB | yes |' "$OUT/core_small.md"
cat "$OUT/core_small.md"
step "What each check of the small-send path costs, smoke run (benchmarks/checks.c --quick)"
cc -O2 -Wall -Werror -Icsrc benchmarks/checks.c csrc/build/libzcsend.a -lev -lssl -lcrypto -pthread \
  -o "$OUT/checks"
"$OUT/checks" --quick >"$OUT/checks.md"
has '^| preadv2(RWF_NOWAIT) | [0-9]* | 2 |' "$OUT/checks.md"
has '^| in one write | 8 KiB | [0-9]* |' "$OUT/checks.md"
has '^| read back from disk | 1024 KiB | [0-9]* |' "$OUT/checks.md"
cat "$OUT/checks.md"
step "ASGI benchmark smoke run (benchmarks/asgi.py --quick)"
$PY benchmarks/asgi.py --quick >"$OUT/asgi.md" 2>"$OUT/asgi.log" || { cat "$OUT/asgi.log"; exit 1; }
has '^| FastAPI FileResponse, uvicorn + zcsend.uvicorn |' "$OUT/asgi.md"
rm -rf "$OUT"
step "nginx + lua + zcsend benchmark smoke run (benchmarks/nginx_lua.py --quick)"
OUT=$(mktemp -d)
$PY benchmarks/nginx_lua.py --quick --out "$OUT/nginx_lua.md" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
has '^| nginx + lua + zcsend |' "$OUT/nginx_lua.md"
cat "$OUT/nginx_lua.md"
rm -rf "$OUT"
