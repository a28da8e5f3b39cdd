# The two commands a new user runs are `make demo` and `make test`; everything they need is installed
# or built by the targets below (the first run builds Kubernetes and Cluster API from source: see README).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
HOSTS  ?= 5
PYTEST_ARGS ?=

# The real cluster-autoscaler cannot be built here (its Go module is not served by the module proxy); a
# prebuilt one next to the checkout is used when its checksum matches (hack/prebuilt-autoscaler.sh).
ifeq ($(origin CLUSTER_AUTOSCALER_BIN),undefined)
CLUSTER_AUTOSCALER_BIN := $(shell hack/prebuilt-autoscaler.sh)
endif
export CLUSTER_AUTOSCALER_BIN

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@echo "[make] creating $(VENV) with the provider and lab dependencies"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Python virtualenv with the provider and lab dependencies

.PHONY: system-deps
system-deps: ## Debian packages the lab needs (ipmitool, freeipmi, sshd, QEMU + iPXE, dnsmasq, image tools)
	@hack/install-system-deps.sh

.PHONY: tools
tools: ## build etcd, Kubernetes, Cluster API, KWOK, cluster-autoscaler from source (cached)
	@hack/build-tools.sh

.PHONY: images
images: venv system-deps ## the deploy ramdisk (kernel + busybox initramfs + agent) and the lab's small OS image (cached)
	@$(PY) -m capi_provider.bootserver.ramdisk.build
	@PYTHONPATH=hack:. $(PY) -m lab.smallos.build
	@PYTHONPATH=hack:. $(PY) -m lab.smallos.build --label gpt

.PHONY: deps
deps: venv system-deps tools images

.PHONY: test
test: deps ## everything needed, then the whole default suite (unit, lab, cluster, e2e)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: test-unit
test-unit: venv ## pure-logic tests only (no cluster)
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-imaging
test-imaging: venv system-deps images ## image provisioning only: boot server, ramdisk agent, network-booting QEMU VMs
	$(VENV)/bin/pytest -m imaging tests/unit/test_bootserver_decisions.py tests/imaging $(PYTEST_ARGS)

.PHONY: test-slow
test-slow: deps ## the long e2e/scale tests left out of the default run
	$(VENV)/bin/pytest -m slow $(PYTEST_ARGS)

.PHONY: demo
demo: deps release-manifests ## the whole story in the local lab: 5 servers, a cluster, scale 0 -> 3 -> 1
	PYTHONPATH=hack:. $(PY) hack/demo.py $(DEMO_ARGS)

.PHONY: bench
bench: deps ## speed and memory targets, measured in one run (about 40 minutes)
	PYTHONPATH=hack:. $(PY) hack/bench.py $(BENCH_ARGS)

.PHONY: bench-imaging
bench-imaging: venv system-deps images ## per-step times of image provisioning in the network-boot lab (about 2 minutes)
	PYTHONPATH=hack:. $(PY) hack/bench_imaging.py $(BENCH_ARGS)

.PHONY: lab-up
lab-up: deps ## start the lab in the background (HOSTS=n); kubeconfig in .lab/kubeconfig
	PYTHONPATH=hack:. $(PY) -m lab up --dir .lab --hosts $(HOSTS)

.PHONY: lab-down
lab-down: ## stop everything lab-up started
	@PYTHONPATH=hack:. $(PY) -m lab down --dir .lab

.PHONY: generate
generate: venv ## regenerate config/crd/bases from capi_provider/api/types.py
	$(PY) -m capi_provider.api.crds config/crd/bases

.PHONY: lint
lint: venv ## ruff
	$(VENV)/bin/ruff check capi_provider hack tests
	$(VENV)/bin/ruff format --check capi_provider hack tests

# The controller image the release manifests deploy by default (config/manager/manager.yaml): keep in step.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMG ?= ghcr.io/capi-provider-baremetal/controller:v$(VERSION)

.PHONY: release-manifests
release-manifests: venv ## clusterctl repository out/infrastructure-baremetal/v<version>/ + out/clusterctl.yaml
	$(PY) hack/release.py --out out

.PHONY: docker-build
docker-build: ## build the controller image the release manifests deploy (needs a Docker engine)
	@docker info >/dev/null 2>&1 || { echo "docker-build: no Docker engine answers here (docker info failed);" \
		"build $(IMG) on a machine running Docker" >&2; exit 1; }
	docker build -t $(IMG) .
