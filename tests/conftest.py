"""Shared fixtures: a throwaway MLflow store, the Helen sample (when present), a tiny synthetic set."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HELEN_SAMPLE = PROJECT_ROOT.parent / "shared" / "data" / "helen_sample"
LIPEVAL = PROJECT_ROOT.parent / "shared" / "tools" / "lipeval.py"


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point tracking at a fresh sqlite store inside tmp_path (never the project's mlflow.db)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # marks tmp_path as the project root
    return uri


@pytest.fixture(scope="session")
def helen_dir() -> Path:
    if not (HELEN_SAMPLE / "annotation").is_dir():
        pytest.skip("research-only Helen sample not found at ../shared/data/helen_sample")
    return HELEN_SAMPLE


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lipseg.datasets.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, n_train=30, n_test=10, image_size=128, seed=7, progress=False)
    return root


@pytest.fixture(scope="session")
def lipeval() -> ModuleType:
    """The official scorer (../shared/tools/lipeval.py) as a module; skips when it is not here."""
    if not LIPEVAL.is_file():
        pytest.skip(f"lipeval not found at {LIPEVAL}")
    spec = importlib.util.spec_from_file_location("lipeval_reference", LIPEVAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
