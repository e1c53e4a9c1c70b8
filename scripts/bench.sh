#!/usr/bin/env bash
# Sets everything up, then runs the whole benchmark (about 12 minutes), then the
# ASGI one (FastAPI/Starlette on uvicorn, stock and with zcsend.uvicorn; ~4 min),
# then nginx + lua + zcsend against nginx's static sendfile (~3 min):
#   bash scripts/bench.sh [benchmarks/run.py options, e.g. --runs 5 or --quick]
# Writes benchmarks/results/results.md, results.json and chart.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
make -s -C lua
make -s -C lua LUA=luajit
"${PYTHON:-python3}" benchmarks/run.py "$@"
"${PYTHON:-python3}" benchmarks/asgi.py
exec "${PYTHON:-python3}" benchmarks/nginx_lua.py --out benchmarks/results/nginx_lua.md
