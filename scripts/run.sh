#!/usr/bin/env bash
# Runs Cairn in embedded mode (no services, no API keys):
#   scripts/run.sh [serve flags]           the service
#   scripts/run.sh ingest kb/              any other cairn subcommand, same settings
# Makes the MiniLM model files available so the knowledge base does hybrid
# retrieval; without them it runs BM25-only and says so in /health. Use the same
# command for `ingest`, `search` and `serve`: each dense embedder has its own store.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CAIRN_KNOWLEDGE__MINILM_DIR:-}" ]; then
  if dir="$(scripts/minilm-dir.sh)"; then
    export CAIRN_KNOWLEDGE__MINILM_DIR="\"$dir\""
  else
    echo "warning: MiniLM model files unavailable; knowledge retrieval is BM25-only" >&2
  fi
fi
case "${1:-}" in
  serve|ingest|search|ask|token|help|--help|-h|--version|-V) ;;
  *) set -- serve "$@" ;;
esac
exec cargo run --release --bin cairn -- "$@"
