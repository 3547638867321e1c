#!/usr/bin/env bash
# Runs Cairn in embedded mode (no services, no API keys): `scripts/run.sh [serve flags]`.
# Makes the MiniLM model files available so the knowledge base does hybrid
# retrieval; without them it runs BM25-only and says so in /health.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CAIRN_KNOWLEDGE__MINILM_DIR:-}" ]; then
  if dir="$(scripts/minilm-dir.sh)"; then
    export CAIRN_KNOWLEDGE__MINILM_DIR="\"$dir\""
  else
    echo "warning: MiniLM model files unavailable; knowledge retrieval is BM25-only" >&2
  fi
fi
exec cargo run --release --bin cairn -- serve "$@"
