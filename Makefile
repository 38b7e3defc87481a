# The README's two commands are `make run` and `make test`; CI (.ci/run) calls `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON_FOR_VENV = $(shell scripts/find-python.sh)
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=
# Processes for the default tier (pytest-xdist): auto = one per CPU; 0 runs it in this process.
TEST_WORKERS ?= auto
# The slow tier: first the load tests and benchmarks one after another (they measure, so nothing runs
# beside them); then the two soaks side by side, in two pytest processes, since neither measures
# latency: the 10-minute load soak (no failure, flat memory) and the 5-minute Kubernetes soak.
KUBE_SOAK := tests/integration/test_kube_soak.py
LOAD_SOAK := tests/integration/test_hardening.py::test_soak_at_steady_load_has_no_errors_and_flat_memory

LOADTEST_ARGS ?=

.PHONY: run test test-slow lint typecheck bench loadtest image gpu-check gpu-wheels clean

$(BIN)/python:
	@py="$(PYTHON_FOR_VENV)"; test -n "$$py" || exit 1; \
	echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamps record what was installed, so a changed pyproject.toml reinstalls.
$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-loadtest: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[loadtest]'
	touch $@ $(VENV)/.installed-runtime

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-runtime $(VENV)/.installed-loadtest

run: $(VENV)/.installed-runtime
	$(BIN)/podlatency serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check service tests measure
	$(BIN)/ruff format --check service tests measure

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-dev
	@$(BIN)/pytest -m slow --ignore=$(KUBE_SOAK) --deselect $(LOAD_SOAK) $(PYTEST_ARGS); measured=$$?; \
	$(BIN)/pytest -m slow $(KUBE_SOAK) $(PYTEST_ARGS) & kube=$$!; \
	$(BIN)/pytest -m slow $(LOAD_SOAK) $(PYTEST_ARGS); load=$$?; \
	wait $$kube; kube=$$?; \
	echo "slow tier exit statuses (5: nothing selected): measurements $$measured, load soak $$load, Kubernetes soak $$kube"; \
	for status in $$measured $$load $$kube; do case $$status in 0|5) ;; *) exit 1;; esac; done

bench: $(VENV)/.installed-runtime
	$(BIN)/python -m measure.bench

# The endpoint comparison under Locust (measure/loadtest/README.md); e.g. make loadtest LOADTEST_ARGS="--nthread 0"
loadtest: $(VENV)/.installed-loadtest
	$(BIN)/python -m measure.loadtest.compare $(LOADTEST_ARGS)

# Both container images, tagged as the chart expects them: $(IMAGE):v<appVersion>-cpu and -cuda
# (docs/kubernetes.md, "Images"); e.g. make image IMAGE=registry.example.com/team/podlatency
IMAGE ?= podlatency
IMAGE_VERSION ?= v$(shell sed -n 's/^appVersion: *"\(.*\)"/\1/p' charts/podlatency/Chart.yaml)
# IMAGE_VARIANTS=cpu builds the CPU variant alone (a kind cluster, a laptop).
IMAGE_VARIANTS ?= cpu cuda
image:
	$(if $(filter cpu,$(IMAGE_VARIANTS)),docker build -f service/Dockerfile --build-arg WITH_CUPY=false -t $(IMAGE):$(IMAGE_VERSION)-cpu .)
	$(if $(filter cuda,$(IMAGE_VARIANTS)),docker build -f service/Dockerfile --build-arg WITH_CUPY=true -t $(IMAGE):$(IMAGE_VERSION)-cuda .)

# On a machine with an NVIDIA GPU: the CPU/GPU crossover and the GPU tests, written to $(GPU_OUT)/.
GPU_OUT ?= gpu-results
gpu-check: $(VENV)/.installed-dev
	mkdir -p $(GPU_OUT)
	nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $(GPU_OUT)/machine.txt || true
	$(BIN)/python -m measure.gpu_bench --out $(GPU_OUT)
	set -o pipefail; $(BIN)/pytest -m gpu -q tests/unit/test_predictor.py tests/integration/test_benchmarks.py 2>&1 | tee $(GPU_OUT)/gpu-tests.log

# For a GPU machine without network access (scripts/gpu-check.sh runs what gpu-check runs, from these
# wheels): the ones such a machine may lack, for Python 3.12, manylinux (treelite and tl2cgen compile the
# trees gpu_bench compares; it needs gcc).
gpu-wheels: | $(BIN)/python
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels \
		xgboost msgspec treelite tl2cgen scipy packaging

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
