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

.PHONY: install run test test-fast release ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

run: install  ## the main job: dvc repro on params.yaml (synthetic data by default), then the metrics tables
	$(BIN)/dvc repro
	$(BIN)/python -m lipseg.tcnn.scoring metrics.json
	@echo "mask sources end to end on the test photos (reports/evaluate_segmenters/comparison.md):"
	@cat reports/evaluate_segmenters/comparison.md

test: install  ## unit tests + the tiny end-to-end pipeline test + the PostgreSQL-backed MLflow server test
	.ci/ensure_postgres
	$(BIN)/python -m pytest

test-fast: install  ## everything but the slow end-to-end tests
	$(BIN)/python -m pytest -m "not slow"

release: install  ## the shipped model: the pipeline on Helen with profiles/helen.yaml, scored, card (~2 h on 2 cores)
	$(BIN)/python scripts/release.py --helen $(HELEN)

ui: install  ## the MLflow UI on http://127.0.0.1:5000 (loopback only)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean:  ## remove pipeline outputs (not the venv, not the DVC cache)
	rm -rf data/raw data/crops data/features data/segment_crops models checkpoints reports metrics.json metrics_segmenters.json
