#!/usr/bin/env bash
# The README's first command. Today it brings up the local broker and creates carbonflow's
# topics, then waits; the processor, routers, sample flavour service, scenario replay and
# live table join as their issues land (processor #3, router #4, ingest/quickstart #5).
# Ctrl-C stops what it started.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
broker="bash deploy/local/broker.sh"
port=${CARBONFLOW_BROKER_PORT:-9092}
export KAFKA_BROKERS=127.0.0.1:$port

echo "== building carbonflow"
cargo build --release --locked -p carbonflow-ingest
echo "== local broker"
$broker install
started_here=0
if ! $broker status 2>/dev/null; then
  $broker start
  started_here=1
fi
cleanup() { if [[ $started_here == 1 ]]; then $broker stop; fi; }
trap cleanup EXIT INT TERM

echo "== topics"
target/release/ingest topics create

cat <<MSG

carbonflow's broker is up on $KAFKA_BROKERS with every topic created.
Not yet part of this quickstart: processor, routers, sample flavours, scenario, load and
the live table (they land with issues #3, #4 and #5).
Press Ctrl-C to stop the broker.
MSG
while true; do sleep 3600; done
