#!/usr/bin/env bash
# Local Kafka-protocol broker for development and CI: tansu (crates.io, Apache-2.0) with
# its sqlite storage engine, on loopback.
#
#   deploy/local/broker.sh install   build tansu pinned (~15 min on 2 cores, once; cached)
#   deploy/local/broker.sh start     start it (installs first if needed) and wait until it
#                                    answers Kafka requests; no-op if already running
#   deploy/local/broker.sh stop      stop the broker this script started (by its pid file)
#   deploy/local/broker.sh status    exit 0 if it answers Kafka requests
#
# Settings (environment):
#   CARBONFLOW_BROKER_PORT   listener port on 127.0.0.1            (default 9092)
#   CARBONFLOW_BROKER_DIR    data directory (sqlite db, log, pid)  (default .local/broker)
#   CARBONFLOW_TANSU_ROOT    cargo install root of the tansu build (default .local/tansu)
#
# Limits of this broker (see README): no Kafka transactions, dead group members are never
# evicted. carbonflow depends on neither.
set -euo pipefail

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
port=${CARBONFLOW_BROKER_PORT:-9092}
data=${CARBONFLOW_BROKER_DIR:-$repo/.local/broker}
root=${CARBONFLOW_TANSU_ROOT:-$repo/.local/tansu}
tansu=$root/bin/tansu
pidfile=$data/tansu.pid
logfile=$data/tansu.log

log() { echo "[broker] $*" >&2; }

installed() {
  [[ -x $tansu ]] && [[ -f $root/.version ]] && [[ $(cat "$root/.version") == "$TANSU_VERSION+$TANSU_FEATURES" ]]
}

install() {
  if installed; then
    log "tansu $TANSU_VERSION already installed at $tansu"
    return 0
  fi
  command -v cargo >/dev/null || { log "cargo not found: install the Rust toolchain (https://rustup.rs)"; exit 1; }
  log "building tansu $TANSU_VERSION (features $TANSU_FEATURES) into $root — about 15 minutes on 2 cores, once"
  mkdir -p "$root"
  # --locked: the exact dependency versions tansu was released with.
  cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" --root "$root"
  echo "$TANSU_VERSION+$TANSU_FEATURES" >"$root/.version"
  log "installed $tansu"
}

# Send a Kafka ApiVersions (v0) request and check the reply carries our correlation id:
# proves a Kafka protocol server is answering, not just that the port is open.
answers_kafka() {
  local reply
  reply=$(timeout 3 bash -c '
    exec 3<>/dev/tcp/127.0.0.1/'"$port"' || exit 1
    # size=20 | api_key=18 ApiVersions | api_version=0 | correlation_id=0x0CF10000 | client_id="carbonflow"
    printf "\x00\x00\x00\x14\x00\x12\x00\x00\x0c\xf1\x00\x00\x00\x0acarbonflow" >&3
    head -c 8 <&3 | od -An -tx1 | tr -d " \n"
  ' 2>/dev/null) || return 1
  [[ ${reply:8:8} == "0cf10000" ]]
}

running_pid() {
  [[ -f $pidfile ]] || return 1
  local pid
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  mkdir -p "$data"
  # Several test binaries may ask for the broker at once: serialise on a lock file.
  exec 9>"$data/start.lock"
  flock 9
  if answers_kafka; then
    log "a Kafka broker already answers on 127.0.0.1:$port"
    return 0
  fi
  install
  log "starting tansu on 127.0.0.1:$port (data in $data, log $logfile)"
  # The sqlite path is relative to the working directory, so start inside the data dir.
  (
    cd "$data"
    nohup "$tansu" broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://tansu.db" >>"$logfile" 2>&1 9>&- &
    echo $! >"$pidfile"
  )
  for _ in $(seq 1 100); do
    if answers_kafka; then
      log "ready (pid $(cat "$pidfile"))"
      return 0
    fi
    if ! running_pid >/dev/null; then
      log "tansu exited during start-up; last log lines:"
      tail -n 20 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "tansu did not answer Kafka requests within 10 s; last log lines:"
  tail -n 20 "$logfile" >&2 || true
  exit 1
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    log "not running (no live pid in $pidfile)"
    rm -f "$pidfile"
    return 0
  fi
  kill "$pid"
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "pid $pid did not stop within 5 s; sending SIGKILL"
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if answers_kafka; then log "answering on 127.0.0.1:$port"; else log "not answering on 127.0.0.1:$port"; exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
