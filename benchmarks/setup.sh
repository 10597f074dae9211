#!/usr/bin/env bash
# What the benchmarks drive besides carbonflow, from Debian, installed when missing:
# nginx-light (the reverse proxy router_vs_nginx compares the router with) and wrk (its
# load generator). The benchmarks start nginx themselves with a generated config.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || missing+=(nginx-light)
if ((${#missing[@]} == 0)); then
  echo "[bench-setup] wrk and nginx present"
  exit 0
fi
sudo=""
[[ $(id -u) -eq 0 ]] || sudo=sudo
echo "[bench-setup] installing ${missing[*]} from Debian"
$sudo apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
