#!/usr/bin/env bash
# Install everything the tests, the benchmarks and the demo need, on a fresh Debian machine.
# Every step is idempotent and cached by version: a second run takes seconds.
#   scripts/setup.sh [system|python|tools|kafka|nats|helm|cluster|docker|images|containers|
#                     kind-binaries|kind|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=$VENV/bin/python
what=${1:-all}
step() { printf '\n==> %s\n' "$*"; }

apt_install() {
  # Install the Debian packages among "$@" that are not installed yet.
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  step "apt-get install ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install ${missing[*]}: run 'sudo apt-get install ${missing[*]}'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

system() {
  # gcc: kind's pause image is pause.c compiled statically.
  apt_install redis-server redis-tools python3-venv iproute2 gcc libc6-dev
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  if ! command -v go >/dev/null; then
    echo "Go 1.26+ is needed to build the Kubernetes binaries (etcd 3.6 and helm 3.22 declare" \
      "go 1.26); install it from go.dev/dl and put it on PATH" >&2
    exit 1
  fi
}

python_deps() {
  # A virtualenv inside the checkout: a clone elsewhere never tests another tree's code.
  if [ ! -x "$VENV/bin/python" ]; then
    step "python3 -m venv $VENV"
    python3 -m venv "$VENV"
  fi
  # tools/ is a distribution of its own (localkube, sidecar_state_stack: the repo's tooling,
  # not shipped in the sidecar-state wheel), installed editable beside the product.
  if [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ] ||
    [ tools/pyproject.toml -nt "$VENV/.installed" ]; then
    step "pip install -e .[dev] -e tools into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' -e tools
    touch "$VENV/.installed"
  fi
}

ACTIONLINT_VERSION=v1.7.12
# The cache root: mirrors localkube.cache.cache_root() (tools/localkube/cache.py), its one
# definition in Python; change both together.
ACTIONLINT=${SIDECAR_STATE_CACHE:-$HOME/.cache/sidecar-state}/tools/actionlint-$ACTIONLINT_VERSION
# promtool checks and unit-tests the chart's alerting rules (tests/unit/chart, tests/integration).
# Prometheus' Go module is versioned v0.<major*100+minor>: v0.316.0 is Prometheus 3.16.0.
PROMTOOL_VERSION=v0.316.0
PROMTOOL=${SIDECAR_STATE_CACHE:-$HOME/.cache/sidecar-state}/tools/promtool-$PROMTOOL_VERSION

# Every Go build here gets the environment of localkube.gobuild.go_env (change both
# together): the same flags, so Go's build cache shares the standard library and the modules
# the builds have in common instead of compiling them once per flag set; -s -w at link.
go_install() {
  local target=$1; shift
  GOBIN="$target" CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false -mod=mod" GOTOOLCHAIN=local \
    go install -ldflags="-s -w" "$@"
}

tools() {
  if [ ! -x "$ACTIONLINT/actionlint" ]; then
    step "actionlint $ACTIONLINT_VERSION (Go module)"
    go_install "$ACTIONLINT" "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  fi
  if [ ! -x "$PROMTOOL/promtool" ]; then
    step "promtool $PROMTOOL_VERSION (Go module; a cold build takes minutes)"
    local started=$SECONDS
    # remove_all_sd (Prometheus' plugins/*.go build tags) leaves out the cloud service-discovery
    # plugins (AWS, Azure, GCE, ...): less than half the source to compile, and only rules and
    # their unit tests are checked here.
    go_install "$PROMTOOL" -tags remove_all_sd \
      "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
    echo "promtool built in $((SECONDS - started)) s"
  fi
}

kafka() {
  step "Kafka broker jars (Maven Central, cached by version)"
  "$PYTHON" -m sidecar_state_stack.kafka_broker install
}

nats() {
  step "nats-server (Go module, cached by version)"
  "$PYTHON" -m sidecar_state_stack.nats_server install >/dev/null
}

helm() {
  # Only helm, of the control plane's binaries: the chart's unit and integration tests need it.
  step "helm (Go module, cached by version)"
  "$PYTHON" -m localkube build --only helm >/dev/null
}

cluster() {
  step "Kubernetes control plane binaries (Go modules, cached by version)"
  "$PYTHON" -m localkube build
  step "Istio's AuthorizationPolicy and ServiceEntry CRDs (istio.io/api Go module, pinned)"
  "$PYTHON" -m sidecar_state_stack.istio_crds install >/dev/null
}

docker_daemon() {
  # Our own dockerd (data-root and socket under the cache), started once and left running.
  apt_install docker.io mmdebstrap runc
  step "docker daemon (images/docker.py; its own data-root and socket under the cache)"
  "$PYTHON" -m images.docker up >/dev/null
}

images() {
  step "images from their Dockerfiles: operator, hydrator, redis, demo-app (Docker's cache)"
  "$PYTHON" -m images.build >/dev/null
}

kind_binaries() {
  # The Go builds of kind(): no Docker needed.
  step "kind, kubeadm, kubelet, kube-proxy and pause (Go modules, cached by version)"
  "$PYTHON" -m localkube.kind.build binaries
}

kind() {
  # kind, kubeadm (Go modules), kubelet, kube-proxy and pause (the control plane's
  # Kubernetes release), and the kind node image (assembled, cached by content hash).
  step "kind, kubeadm, kubelet, kube-proxy, pause and the kind node image (cached)"
  "$PYTHON" -m localkube.kind.build >/dev/null
}

kind_layers() {
  # The node and component images' Debian packages: no binary needed, so during the Go builds.
  step "the kind node image's package layers (Docker's cache)"
  "$PYTHON" -m localkube.kind.build layers
}

timed() {
  # Run one step and say what it cost, on stderr (stdout of `tools` is a path callers read).
  local started=$SECONDS
  "$@"
  printf 'time: setup %s took %d s\n' "$1" "$((SECONDS - started))" >&2
}

usage="usage: $0 [system|python|tools|kafka|nats|helm|cluster|docker|images|containers|kind-binaries|kind|all]"
case "$what" in
  system) timed system ;;
  # The last two lines name the tools, for the Makefile and the tests.
  tools) timed system; timed tools; echo "$PROMTOOL/promtool"; echo "$ACTIONLINT/actionlint" ;;
  python) timed python_deps ;;
  kafka) timed system; timed python_deps; timed kafka ;;
  nats) timed system; timed python_deps; timed nats ;;
  helm) timed system; timed python_deps; timed helm ;;
  cluster) timed system; timed python_deps; timed cluster ;;
  docker) timed system; timed python_deps; timed docker_daemon ;;
  images) timed system; timed python_deps; timed docker_daemon; timed images ;;
  # What kind needs of Docker (the daemon, the images, the node's package layers): mostly
  # waiting on the network, so scripts/test.sh runs it beside the Go builds.
  containers) timed system; timed python_deps; timed docker_daemon; timed images
              timed kind_layers ;;
  kind-binaries) timed system; timed python_deps; timed cluster; timed kind_binaries ;;
  kind) timed system; timed python_deps; timed cluster; timed docker_daemon; timed images
        timed kind ;;
  all) timed system; timed python_deps
       # The Docker steps and Kafka's jars wait on the network (mmdebstrap, apt, PyPI, Maven
       # Central) more than on the CPU, the Go builds keep both cores busy: on a cold machine
       # they overlap. kind needs both.
       ( timed docker_daemon && timed images && timed kind_layers ) &
       docker_steps=$!
       timed kafka &
       kafka_step=$!
       timed tools; timed nats; timed cluster
       wait "$kafka_step"
       wait "$docker_steps"
       timed kind ;;
  -h|--help) echo "$usage"; echo "Installs what the tests, benchmarks and demo need; cached by version." ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
