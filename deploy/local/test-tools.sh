#!/usr/bin/env bash
# Install what the deploy checks drive, if missing: from Debian's packages, prometheus
# (server and promtool), chromium and chromium-driver (status page in a headless
# browser); from PyPI, kubernetes-validate (offline validation of the Kubernetes
# manifests). Idempotent; uses sudo when not root.
set -euo pipefail
need=()
for pair in prometheus:/usr/bin/prometheus prometheus:/usr/bin/promtool \
            chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver; do
  pkg=${pair%%:*}; bin=${pair#*:}
  [[ -x $bin ]] || need+=("$pkg")
done
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "installing ${need[*]} (Debian packages) for the observability tests"
  sudo_cmd=""; [[ $(id -u) == 0 ]] || sudo_cmd=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -q
  # The package's post-install may try to start a prometheus service; the tests run their
  # own server on a free port, so a failure to start that service does not matter.
  $sudo_cmd apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Pinned: it bundles the Kubernetes schemas it validates against.
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing kubernetes-validate (PyPI) for the manifest checks"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi
