#!/usr/bin/env bash
# `cairn-eval insights` with its anchors: installs Microsoft Presidio and
# vaderSentiment from PyPI into a cache outside the clone (once), finds the MiniLM
# files, builds the release binary and runs the evaluation (and, with --bench, the
# throughput figures) on eval/insights.jsonl.
# Usage: scripts/eval-insights.sh [--bench] [--misses]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
PRESIDIO_VERSION="2.2.366"
VADER_VERSION="3.3.2"
PY_EVAL_DIR="$HOME/.cache/cairn/py-eval"
if ! "$PY_EVAL_DIR/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('presidio-analyzer') != '$PRESIDIO_VERSION' or m.version('vaderSentiment') != '$VADER_VERSION')" 2>/dev/null; then
  echo "==> installing presidio-analyzer $PRESIDIO_VERSION and vaderSentiment $VADER_VERSION"
  python3 -m venv "$PY_EVAL_DIR"
  "$PY_EVAL_DIR/bin/pip" install -q "presidio-analyzer==$PRESIDIO_VERSION" "vaderSentiment==$VADER_VERSION"
fi
MINILM_DIR="$(scripts/minilm-dir.sh)"
cargo build --release --bin cairn-eval
"$CARGO_TARGET_DIR/release/cairn-eval" insights --set eval/insights.jsonl \
  --minilm-dir "$MINILM_DIR" --anchors-python "$PY_EVAL_DIR/bin/python" "$@"
