# Quick start:  make run   (install + the whole pipeline on the embedded synthetic dataset)
#               make test  (install + the full test suite, end-to-end pipeline test included)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
HELEN ?= ../shared/data/helen_sample

# requirements.lock: the whole tree with hashes, CPU torch (this file's default, CI's and the quick start's);
# requirements-cuda.lock: the same with PyPI's CUDA torch, for the self-hosted GPU runner (make install LOCK=...).
LOCK ?= requirements.lock
EXTRAS ?= train,server,spark,test

.PHONY: install lock run test test-fast release ui clean

install: $(VENV)/.installed

# Every package comes from the lock and is checked against its hashes; then lipseg itself, built with the
# locked setuptools, with no dependency left to resolve.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e '.[$(EXTRAS)]'
	touch $@

# Where the CPU build of torch comes from (PyTorch's index; a folder of wheels: TORCH_CPU="--find-links DIR").
TORCH_CPU ?= --extra-index-url https://download.pytorch.org/whl/cpu

lock:  ## regenerate both lock files from pyproject.toml (pip-tools, hashes; versions already locked are kept)
	$(PYTHON) -m venv .lock-venv && .lock-venv/bin/python -m pip install --quiet pip-tools==7.6.2
	.lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --all-extras --strip-extras \
		--no-emit-index-url --no-emit-find-links --pip-args "$(TORCH_CPU)" -o requirements.lock pyproject.toml
	PIP_CONFIG_FILE=/dev/null .lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --all-extras \
		--strip-extras --no-emit-index-url --no-emit-find-links --pip-args --isolated -o requirements-cuda.lock pyproject.toml

run: install  ## the main job: dvc repro on params.yaml (synthetic data by default), then the metrics tables
	$(BIN)/dvc repro
	$(BIN)/python -m lipseg.tcnn.scoring metrics.json
	@echo "mask sources end to end on the test photos (reports/evaluate_segmenters/comparison.md):"
	@cat reports/evaluate_segmenters/comparison.md

test: install  ## unit tests + the tiny end-to-end pipeline tests + the tests on PostgreSQL, Spark and Chromium
	.ci/ensure_system
	$(BIN)/python -m pytest

test-fast: install  ## everything but the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

release: install  ## the shipped model: the pipeline on Helen with profiles/helen.yaml, scored, card (~2 h on 2 cores)
	$(BIN)/python scripts/release.py --helen $(HELEN)

ui: install  ## the MLflow UI on http://127.0.0.1:5000 (loopback only)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data/raw data/crops data/features data/segment_crops models checkpoints reports metrics.json metrics_segmenters.json
