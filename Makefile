# sidecar-state — every target installs what it needs first (scripts/setup.sh, cached).
PYTHON ?= .venv/bin/python
PYTEST ?= $(PYTHON) -m pytest -p no:cacheprovider
TIMED := scripts/timed.sh
export PYTHONUNBUFFERED := 1

.PHONY: help setup lint crds test test-unit test-integration test-e2e \
        cluster-build cluster-up cluster-down bench demo demo-session demo-down test-node \
        images lock test-kind kind-up kind-down test-e2e-local

help:
	@echo "make test    - install everything, then lint, unit, integration and e2e tests"
	@echo "make demo    - the feature-flag demo on a local kind cluster (root);"
	@echo "               make demo SOURCE=nats: its flags from a NATS KV bucket;"
	@echo "               make demo-session adds the interceptor's session example to it;"
	@echo "               make demo-down removes it"
	@echo "make lint    - ruff and mypy;  make crds - regenerate the CRD from the models"
	@echo "make bench   - benchmarks, results in benchmarks/results/"
	@echo "make images  - build the images from their Dockerfiles (REGISTRY=r: push them to r)"
	@echo "make test-kind - a kind cluster here, the chart installed, the e2e suite against it"
	@echo "make test-e2e  - the e2e suite on a control plane of host processes (no Docker)"
	@echo "make test-node - the same kind cluster, the node scenarios (tests/e2e/node) only"

setup:
	scripts/setup.sh all

lint:
	scripts/setup.sh python
	"$$(scripts/setup.sh tools | tail -n 1)" .github/workflows/*.yaml
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(TIMED) mypy $(PYTHON) -m mypy

crds:
	$(PYTHON) -m sidecar_operator.cli crd --write crds charts/sidecar-state/crds

# lint, test-unit, test-integration, test-e2e-local and test-kind, each as soon as what it needs
# is installed, while the rest builds (scripts/test.sh --help). Each e2e scenario runs once: on
# kind (node, operator and chart scenarios against the chart's operator), but for the few only
# the host control plane can run (test-e2e-local).
test:
	scripts/test.sh

test-unit:
	scripts/setup.sh python
	$(TIMED) unit $(PYTEST) tests/unit -q

test-integration:
	scripts/setup.sh kafka
	scripts/setup.sh tools >/dev/null  # promtool, for the alert rules' tests
	scripts/setup.sh nats
	$(TIMED) integration $(PYTEST) tests/integration -q

# The control-plane suite: a real apiserver and the operator as a host process (no kubelet).
test-e2e:
	scripts/setup.sh cluster
	$(TIMED) e2e $(PYTEST) tests/e2e -q --ignore=tests/e2e/node

# Only the scenarios that need that host control plane (marker local_cluster: the operator's
# metrics port, a stand-in mesh webhook on 127.0.0.1, Istio's CRDs); kind skips them.
test-e2e-local:
	scripts/setup.sh cluster
	$(TIMED) e2e-local $(PYTEST) tests/e2e -q --ignore=tests/e2e/node -m local_cluster

# Every image from its Dockerfile; with REGISTRY=registry.example/team, also pushed there.
images:
	scripts/setup.sh images
	$(PYTHON) -m images.build $(if $(REGISTRY),--registry $(REGISTRY) --push)

lock:
	$(PYTHON) -m images.lock

# The e2e-kind job of .github/workflows/ci.yaml, step for step, on this machine: a kind cluster,
# the Dockerfile images loaded, the chart installed, the whole e2e suite against it (node,
# operator and chart scenarios; the local_cluster ones are skipped there).
test-kind:
	scripts/setup.sh kind
	$(TIMED) kind $(PYTHON) -m localkube.kind.cluster test

# Pods that really run: the node scenarios alone, on the same kind cluster.
test-node:
	scripts/setup.sh kind
	$(TIMED) node $(PYTHON) -m localkube.kind.cluster test -- tests/e2e/node

kind-up:
	scripts/setup.sh kind
	$(PYTHON) -m localkube.kind.cluster up

kind-down:
	$(PYTHON) -m localkube.kind.cluster down

cluster-build:
	scripts/setup.sh cluster

cluster-up: cluster-build
	$(PYTHON) -m localkube up

cluster-down:
	$(PYTHON) -m localkube down

bench:
	scripts/setup.sh all
	$(PYTHON) -m benchmarks.run_all

demo:
	scripts/setup.sh all
	$(PYTHON) -m demo.run up $(if $(SOURCE),--source $(SOURCE))

# The interceptor's session example, on the demo `make demo` left running.
demo-session:
	$(PYTHON) -m demo.session

demo-down:
	$(PYTHON) -m demo.run down
