#!/usr/bin/env bash
# Install everything the tests, the benchmarks and the demo need, on a fresh Debian machine.
# Every step is idempotent and cached by version: a second run takes seconds.
#   scripts/setup.sh [system|python|tools|kafka|cluster|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=$VENV/bin/python
what=${1:-all}
step() { printf '\n==> %s\n' "$*"; }

system() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server redis-tools)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v go >/dev/null || missing+=(golang-go)
  python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
  if ((${#missing[@]})); then
    step "apt-get install ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then
      echo "need root to install ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

python_deps() {
  # A virtualenv inside the checkout: a clone elsewhere never tests another tree's code.
  if [ ! -x "$VENV/bin/python" ]; then
    step "python3 -m venv $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
    step "pip install -e .[dev] into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$VENV/.installed"
  fi
}

ACTIONLINT_VERSION=v1.7.12
ACTIONLINT=${SIDECAR_STATE_CACHE:-$HOME/.cache/sidecar-state}/tools/actionlint-$ACTIONLINT_VERSION

tools() {
  if [ ! -x "$ACTIONLINT/actionlint" ]; then
    step "actionlint $ACTIONLINT_VERSION (Go module)"
    GOBIN="$ACTIONLINT" GOFLAGS=-trimpath go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  fi
}

kafka() {
  step "Kafka broker jars (Maven Central, cached by version)"
  "$PYTHON" -m tests.support.kafka_broker install
}

cluster() {
  step "Kubernetes control plane binaries (Go modules, cached by version)"
  "$PYTHON" -m tests.e2e.cluster build
}

case "$what" in
  system) system ;;
  tools) system; tools; echo "$ACTIONLINT/actionlint" ;;
  python) python_deps ;;
  kafka) system; python_deps; kafka ;;
  cluster) system; python_deps; cluster ;;
  all) system; python_deps; tools; kafka; cluster ;;
  *) echo "usage: $0 [system|python|tools|kafka|cluster|all]" >&2; exit 2 ;;
esac
