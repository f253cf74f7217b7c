#!/usr/bin/env bash
# What `make test` runs: install what the suites need, then lint, unit, integration, e2e-local
# and kind. On a cold machine most of the time goes to Go builds (promtool, helm, nats-server,
# the Kubernetes binaries, kind: about 25 minutes of both cores), so each suite starts as soon
# as what it needs is built, while the rest builds in the background:
#   1. Debian packages and the virtualenv;
#   2. in the background: Docker (daemon, images, the node's layers) and Kafka's jars;
#   3. actionlint, promtool, helm and nats-server: what lint, unit and integration need;
#   4. in the background: etcd, the Kubernetes binaries, kubelet, kubeadm and kind;
#      meanwhile lint, unit and integration;
#   5. e2e-local once the control plane is built, while the kind node image is assembled
#      (cached by content hash), then the kind suite.
# Background lines are prefixed with their step's name. On a warm cache steps 1-4 take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--help]   (what 'make test' runs)" >&2; exit 2 ;;
esac
MAKE=${MAKE:-make}
declare -A pids=()

kill_tree() {
  local child
  for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}
stop_background() {
  local name
  for name in "${!pids[@]}"; do kill_tree "${pids[$name]}"; done
}
trap stop_background EXIT

background() {
  # background NAME COMMAND...: COMMAND in the background, each line of it prefixed [NAME].
  local name=$1
  shift
  ("$@" 2>&1 | sed -u "s/^/[$name] /") &
  pids[$name]=$!
}

finish() {
  # finish NAME: wait for a background step; stop everything if it failed.
  if ! wait "${pids[$1]}"; then
    echo "test: the background step '$1' failed: its lines above are prefixed [$1]" >&2
    exit 1
  fi
  unset "pids[$1]"
}

scripts/setup.sh system
scripts/setup.sh python
background containers scripts/setup.sh containers
background kafka scripts/setup.sh kafka
scripts/setup.sh tools >/dev/null
scripts/setup.sh helm
scripts/setup.sh nats
background k8s scripts/setup.sh kind-binaries
finish kafka
"$MAKE" --no-print-directory lint test-unit test-integration
finish k8s
finish containers
background node scripts/setup.sh kind
"$MAKE" --no-print-directory test-e2e-local
finish node
"$MAKE" --no-print-directory test-kind
