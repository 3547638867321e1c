#!/usr/bin/env bash
# The chaos suite: Cairn under seeded random faults, with its promises counted.
# Usage: scripts/chaos.sh [--seed N] [--duration SECONDS] [--mode embedded|redis|kafka|all]
#                        [--redis-loss]
# Each mode runs `cairn-chaos` (crates/cairn/src/bin/chaos.rs: what it injects and
# checks is documented there) for DURATION seconds; the seed is printed so that a
# failure can be replayed. The last line is `violations: N` (the sum over the
# modes); the exit status is non-zero when N > 0. CI runs it with a fixed seed
# for one minute per mode (scripts/test.sh). `kafka` runs two replicas on
# librdkafka's mock cluster (a run the mock itself aborts is repeated once, below). `--redis-loss` also makes Redis lose its last second of acknowledged writes
# (README, "Redis durability"): its counts show what Cairn cannot promise then.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn/target}"

SEED="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
DURATION=600
MODE=all
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) SEED="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --redis-loss) EXTRA+=(--redis-loss); shift ;;
    *) echo "usage: scripts/chaos.sh [--seed N] [--duration SECONDS] [--mode embedded|redis|kafka|all] [--redis-loss]" >&2; exit 2 ;;
  esac
done
case "$MODE" in
  all) MODES="embedded redis kafka" ;;
  embedded|redis|kafka) MODES="$MODE" ;;
  *) echo "--mode is embedded, redis, kafka or all" >&2; exit 2 ;;
esac

cargo build --quiet -p cairn --bin cairn --bin cairn-chaos
# (a separate command: `--bin` would filter the tickets package's binary out)
cargo build --quiet -p mcp-tickets
BIN="$CARGO_TARGET_DIR/debug"
total=0
for mode in $MODES; do
  seed="$SEED"
  for attempt in 1 2; do
    echo "==> chaos: mode $mode, seed $seed, $DURATION s"
    out="$(mktemp)"
    set +e
    "$BIN/cairn-chaos" --seed "$seed" --duration "$DURATION" --mode "$mode" \
      --cairn "$BIN/cairn" --tickets "$BIN/mcp-tickets" "${EXTRA[@]}" 2>&1 | tee "$out"
    set -e
    n="$(sed -n 's/^violations: \([0-9]*\)$/\1/p' "$out" | tail -1)"
    # librdkafka's mock cluster runs inside cairn-chaos and now and then aborts
    # on its own assertion in its consumer-group code (rdkafka_mock_cgrp.c,
    # `!member->resp`), taking the run with it: not a fault of Cairn's, whose
    # replicas are other processes. That mode runs once more, with the next seed.
    if [ -z "$n" ] && [ "$attempt" -eq 1 ] && grep -q "rdkafka_mock.*Assertion" "$out"; then
      echo "==> chaos: the mock Kafka cluster aborted on its own assertion; mode $mode again"
      rm -f "$out"
      seed=$((seed + 1))
      continue
    fi
    rm -f "$out"
    break
  done
  # A run that ends without its count is a failure of the run itself.
  total=$((total + ${n:-1}))
done
echo "violations: $total"
[ "$total" -eq 0 ]
