#!/usr/bin/env bash
# Run every test: installs the local broker if needed (pinned tansu, cached under .local/)
# and Debian's prometheus and chromium for the observability tests,
# starts it if nothing answers, runs `cargo test --workspace`, and stops the broker again
# if this script started it. Extra arguments go to `cargo test`.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
broker="bash deploy/local/broker.sh"
port=${CARBONFLOW_BROKER_PORT:-9092}

$broker install
# Prometheus and headless Chromium for deploy/checks (dashboards, alerts, status page).
bash deploy/local/test-tools.sh
started_here=0
if ! $broker status 2>/dev/null; then
  $broker start
  started_here=1
fi
cleanup() { if [[ $started_here == 1 ]]; then $broker stop; fi; }
trap cleanup EXIT

# Broker-backed tests use this address; they fail (never skip) if it does not answer.
export CARBONFLOW_TEST_BROKERS=127.0.0.1:$port
# deploy/checks runs the workspace binaries (processor, router, ingest, carbonstat).
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
