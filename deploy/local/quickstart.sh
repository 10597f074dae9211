#!/usr/bin/env bash
# The README's first command: the whole pipeline on this machine. Builds carbonflow,
# starts the local broker, creates the topics, starts the processor, two routers (one
# smooth, one random) and the carbonstat sample service (three flavours), applies a sample
# schedule, replays a carbon scenario sped up so weights change within a minute, drives
# steady load through the routers and prints a live table. Ctrl-C stops everything it
# started.
#
# Options (or environment variables):
#   --scenario NAME|FILE  scenario under benchmarks/scenarios (default forecast-aware-challenge)
#   --policy NAME         carbon-optimal, credit-greedy, forecast-aware, forecast-aware-global,
#                         precision-tier, p100, random, round-robin (default credit-greedy)
#   --speed N             scenario speed-up: 30-minute slots last 30/N minutes (default 360: 5 s)
#   --rate N              requests per second through the routers (default 40)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
scenario=${CARBONFLOW_SCENARIO:-forecast-aware-challenge}
policy=${CARBONFLOW_POLICY:-credit-greedy}
speed=${CARBONFLOW_SPEED:-360}
rate=${CARBONFLOW_RATE:-40}
while [[ $# -gt 0 ]]; do
  case $1 in
    --scenario) scenario=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --speed) speed=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -f $scenario ]] || scenario=benchmarks/scenarios/$scenario.json
[[ -f $scenario ]] || { echo "no scenario file $scenario (see benchmarks/scenarios/)" >&2; exit 2; }

broker="bash deploy/local/broker.sh"
port=${CARBONFLOW_BROKER_PORT:-9092}
export KAFKA_BROKERS=127.0.0.1:$port
admin=127.0.0.1:9400
logs="$repo/.local/quickstart"
mkdir -p "$logs"
bin=target/release

echo "== building carbonflow (release)"
cargo build --release --locked -p carbonflow-ingest -p carbonflow-processor -p carbonflow-router -p carbonflow-benchmarks
echo "== local broker"
$broker install
started_here=0
if ! $broker status 2>/dev/null; then
  $broker start
  started_here=1
fi
pids=()
cleanup() {
  echo
  echo "== stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $started_here == 1 ]]; then $broker stop; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_ready() { # url name
  for _ in $(seq 1 150); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$2 did not become ready; see $logs/$2.log" >&2; exit 1
}

echo "== topics"
$bin/ingest topics create >"$logs/topics.log"
echo "== schedule demo/carbonstat (policy $policy)"
sed "s/^policy: .*/policy: $policy/" deploy/local/sample-schedule.yaml >"$logs/schedule.yaml"
$bin/ingest config apply -f "$logs/schedule.yaml"

echo "== processor, carbonstat, routers (logs in $logs)"
$bin/processor run --admin-listen $admin >"$logs/processor.log" 2>&1 & pids+=($!)
$bin/carbonstat --listen 127.0.0.1:8100 >"$logs/carbonstat.log" 2>&1 & pids+=($!)
$bin/router --router-id router-a --mode smooth --schedule demo/carbonstat \
  --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9401 >"$logs/router-a.log" 2>&1 & pids+=($!)
$bin/router --router-id router-b --mode random --schedule demo/carbonstat \
  --listen 127.0.0.1:8081 --admin-listen 127.0.0.1:9402 >"$logs/router-b.log" 2>&1 & pids+=($!)
wait_ready "http://$admin/readyz" processor
wait_ready http://127.0.0.1:9401/readyz router-a
wait_ready http://127.0.0.1:9402/readyz router-b

echo "== scenario $(basename "$scenario" .json), 30-minute slots sped up ${speed}x"
$bin/ingest forecasts scenario "$scenario" --slot 30m --speed "$speed" >"$logs/scenario.log" 2>&1 & pids+=($!)

cat <<MSG

Routers       http://127.0.0.1:8080 (smooth)  http://127.0.0.1:8081 (random)
              try: curl -s http://127.0.0.1:8080/stats?n=1000 -i
Status page   http://$admin/   (live weights, delivered shares, ledger, lag; no Grafana needed)
Admin API     http://$admin/schedule/demo/carbonstat   (state: .../state)
Metrics       http://$admin/metrics  http://127.0.0.1:9401/metrics  http://127.0.0.1:9402/metrics
Override      $bin/ingest override --schedule demo/carbonstat --weight precision-30=1 --ttl 30s
Logs          $logs/
Load          $rate requests/s through both routers. Ctrl-C stops everything.
MSG
$bin/demo --router http://127.0.0.1:8080 --router http://127.0.0.1:8081 \
  --router-admin http://127.0.0.1:9401 --router-admin http://127.0.0.1:9402 \
  --processor "http://$admin" --schedule demo/carbonstat --rate "$rate" --every 5s & pids+=($!)
wait "${pids[-1]}"
