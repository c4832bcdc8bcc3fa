# cardlib: `make run` runs the whole pipeline on the embedded default; `make test` runs the test suite.
# Each target sets up what it needs: a virtualenv in $(VENV), reinstalled only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.cardlib-deps-$(DEPS_HASH)
PARAMS ?= params/default.yaml
export MLFLOW_DISABLE_TELEMETRY := true
export SAGEMAKER_VALIDATE_ROLE := false
export PYTHONUNBUFFERED := 1

.PHONY: setup run smoke test test-fast lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name cardlib --display-name "Python (cardlib)" >/dev/null
	@rm -f $(VENV)/.cardlib-deps-*
	@touch $@

run: setup  ## the main job: every notebook on the embedded default, then where the report index is
	$(VENV)/bin/cardlib run -p $(PARAMS)

smoke: setup
	$(VENV)/bin/cardlib run -p params/smoke.yaml

test: setup  ## the whole test suite
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

lab: setup  ## JupyterLab on 127.0.0.1 with the cardlib kernel
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks

bench: setup  ## benchmarks write JSON to benchmarks/results/
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs reports store store-mlflow.db mlruns-cache
