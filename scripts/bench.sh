#!/usr/bin/env bash
# Sets everything up, then runs the whole benchmark (about 12 minutes), then the
# ASGI one (FastAPI/Starlette on uvicorn, stock and with zcsend.uvicorn; ~4 min):
#   bash scripts/bench.sh [benchmarks/run.py options, e.g. --runs 5 or --quick]
# Writes benchmarks/results/results.md, results.json and chart.png.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
make -s -C lua
"${PYTHON:-python3}" benchmarks/run.py "$@"
exec "${PYTHON:-python3}" benchmarks/asgi.py
