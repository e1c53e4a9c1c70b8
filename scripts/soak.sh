#!/usr/bin/env bash
# The long cross-talk soak (tests/python/soak.py): every mode — asyncio and uvloop,
# each over TCP, a Unix socket and TLS — with random faults and fds reused at once,
# every byte checked. Four fifths of the time on the platform backend, a fifth on
# ZCSEND_BACKEND=emulated; the asyncio modes and the uvloop modes run in two
# processes side by side (one per core). Prints each mode's figures, then one
# table; then the Lua module's soak (lua/spec/soak.lua, zcsend.loop, a fifth of
# SECONDS more); exits 1 on any failure.
#
#     bash scripts/soak.sh [SECONDS]      # default 300
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SECONDS_TOTAL=${1:-300}
EMULATED=$((SECONDS_TOTAL / 5))
PLATFORM=$((SECONDS_TOTAL - EMULATED))
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SEED=${ZCSEND_SOAK_SEED:-$RANDOM$RANDOM}

phase() {  # phase NAME SECONDS SEED [env...]: both halves at once, then their logs
  local name=$1 secs=$2 seed=$3
  shift 3
  echo "=== $name: ${secs} s"
  env "$@" $PY tests/python/soak.py --seconds "$secs" --seed "$seed" \
    --modes asyncio-tcp,asyncio-unix,asyncio-tls --json "$OUT/$name-asyncio.json" >"$OUT/$name-asyncio.log" 2>&1 &
  local a=$!
  env "$@" $PY tests/python/soak.py --seconds "$secs" --seed "$((seed + 1))" \
    --modes uvloop-tcp,uvloop-unix,uvloop-tls --json "$OUT/$name-uvloop.json" >"$OUT/$name-uvloop.log" 2>&1 &
  local b=$!
  wait $a || true
  wait $b || true
  for half in asyncio uvloop; do
    # the figures and failure samples, not the table (printed once, below)
    sed -n '/^| mode/q;p' "$OUT/$name-$half.log"
    [ -s "$OUT/$name-$half.json" ] || { echo "soak.sh: the $name $half run ended without figures"; exit 1; }
  done
}

phase platform "$PLATFORM" "$SEED"
if [ "$EMULATED" -gt 0 ]; then
  phase emulated "$EMULATED" "$((SEED + 2))" ZCSEND_BACKEND=emulated
fi
echo
echo "=== all modes, $SECONDS_TOTAL s"
$PY tests/python/soak.py --merge "$OUT"/platform-*.json $( [ "$EMULATED" -gt 0 ] && echo "$OUT"/emulated-*.json )
echo
echo "=== Lua (lua/spec/soak.lua on zcsend.loop), $EMULATED s"
make -s -C lua
lua5.4 lua/spec/soak.lua "$((EMULATED > 10 ? EMULATED : 10))" "$SEED"
