#!/usr/bin/env bash
# The soak: steady load (no faults) for DURATION seconds per mode, sampled every
# 10 s (the replica's RSS and open file descriptors, Redis used_memory, the data
# dir's size, p50/p99 of POST .../messages), then a plot and the slope of each
# series per hour. CI runs none of this.
# Usage: scripts/soak.sh [--duration SECONDS] [--mode embedded|redis|all] [--out DIR]
# Needs redis-server; the plot uses matplotlib from PyPI (a venv in
# ~/.cache/cairn/py-plot, installed once).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
DURATION=3600
MODE=all
OUT=soak
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--duration SECONDS] [--mode embedded|redis|all] [--out DIR]" >&2; exit 2 ;;
  esac
done
case "$MODE" in
  all) MODES="embedded redis" ;;
  embedded|redis) MODES="$MODE" ;;
  *) echo "--mode is embedded, redis or all" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
cargo build --release --quiet -p cairn --bin cairn --bin cairn-chaos
cargo build --release --quiet -p mcp-tickets
BIN="$CARGO_TARGET_DIR/release"
PLOT_DIR="$HOME/.cache/cairn/py-plot"
if ! "$PLOT_DIR/bin/python" -c "import matplotlib" 2>/dev/null; then
  python3 -m venv "$PLOT_DIR" && "$PLOT_DIR/bin/pip" install -q "matplotlib==3.10.*"
fi
for mode in $MODES; do
  echo "==> soak: $mode, $DURATION s"
  # New conversations every 50 messages each and a 5-minute retention: old
  # conversations go idle and are deleted, so steady state is flat.
  "$BIN/cairn-chaos" --no-faults --seed 1 --duration "$DURATION" --mode "$mode" \
    --rotate 50 --retention 5m \
    --cairn "$BIN/cairn" --tickets "$BIN/mcp-tickets" --samples "$OUT/soak-$mode.csv"
  "$PLOT_DIR/bin/python" scripts/soak-plot.py "$OUT/soak-$mode.csv" "$OUT/soak-$mode.png"
done
