#!/usr/bin/env bash
# The README's first command. Today it brings up the local broker, creates carbonflow's
# topics, starts the processor, applies a sample schedule through the admin API and prints
# the decisions as they change; routers, sample flavours, scenario replay, load and the
# full live table join with issues #4 and #5. Ctrl-C stops everything it started.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
broker="bash deploy/local/broker.sh"
port=${CARBONFLOW_BROKER_PORT:-9092}
admin=${CARBONFLOW_ADMIN_LISTEN:-127.0.0.1:9400}
export KAFKA_BROKERS=127.0.0.1:$port
logs="$repo/.local/quickstart"
mkdir -p "$logs"

echo "== building carbonflow"
cargo build --release --locked -p carbonflow-ingest -p carbonflow-processor
echo "== local broker"
$broker install
started_here=0
if ! $broker status 2>/dev/null; then
  $broker start
  started_here=1
fi
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $started_here == 1 ]]; then $broker stop; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== topics"
target/release/ingest topics create

echo "== processor (admin API http://$admin, log $logs/processor.log)"
target/release/processor run --admin-listen "$admin" >"$logs/processor.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fs "http://$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://$admin/readyz" >/dev/null || { echo "processor did not become ready; see $logs/processor.log" >&2; exit 1; }

echo "== sample schedule demo/carbonstat"
curl -fsS -X PUT "http://$admin/config/demo/carbonstat" -H 'content-type: application/json' -d '{
  "policy": "credit-greedy", "zone": "GB", "validFor": 30,
  "flavours": [
    {"name": "precision-100", "precision": 1.0, "carbonIntensity": 1.0, "upstream": "http://127.0.0.1:8101"},
    {"name": "precision-50",  "precision": 0.5, "carbonIntensity": 0.5, "upstream": "http://127.0.0.1:8102"},
    {"name": "precision-30",  "precision": 0.3, "carbonIntensity": 0.3, "upstream": "http://127.0.0.1:8103"}]}'
echo

cat <<MSG

Running: broker $KAFKA_BROKERS, processor (admin http://$admin, metrics http://$admin/metrics).
Try:  curl http://$admin/schedule/demo/carbonstat
      curl -X POST http://$admin/schedule/demo/carbonstat/manual -d '{"weights": {"precision-30": 1}, "ttlSeconds": 20}'
Not yet part of this quickstart: routers, sample flavours, scenario replay and load
(issues #4 and #5). Ctrl-C stops everything.

MSG
printf '%-10s %-12s %s\n' time version weights
last=""
while true; do
  json=$(curl -fs "http://$admin/schedule/demo/carbonstat" 2>/dev/null || true)
  version=$(grep -o '"version":[0-9]*' <<<"$json" | cut -d: -f2 || true)
  weights=$(grep -o '"flavourWeights":{[^}]*}' <<<"$json" | sed 's/"flavourWeights"://' || true)
  if [[ -n $version && "$version $weights" != "$last" ]]; then
    printf '%-10s %-12s %s\n' "$(date +%H:%M:%S)" "$version" "$weights"
    last="$version $weights"
  fi
  sleep 2
done
