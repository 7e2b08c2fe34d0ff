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
    from lipseg.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(root, n_train=30, n_test=10, image_size=128, seed=7, progress=False)
    return root


@pytest.fixture
def face_photo(tmp_path: Path, synthetic_dir: Path) -> Path:
    """One synthetic face photo, upscaled so that dlib's HOG detector finds the face."""
    import cv2

    from lipseg.data.helen import load_split

    records, _ = load_split(synthetic_dir, "test")
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(records[0].image_path)), (320, 320)))
    return photo


@pytest.fixture(scope="session")
def lipeval() -> ModuleType:
    """The official scorer (../shared/tools/lipeval.py) as a module; skips when it is not here."""
    if not LIPEVAL.is_file():
        pytest.skip(f"lipeval not found at {LIPEVAL}")
    spec = importlib.util.spec_from_file_location("lipeval_reference", LIPEVAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """A tweaked TCNN model folder (K=2), briefly trained on the synthetic crops: enough for I/O paths."""
    import numpy as np
    import torch

    from lipseg.core.fit import FitConfig, fit
    from lipseg.core.runtime import set_determinism
    from lipseg.data.crops import images_to_tensor, normalisation_images
    from lipseg.data.geometry import CropGeometry, FaceToMouth
    from lipseg.data.helen import load_split
    from lipseg.tcnn.crops import make_crops
    from lipseg.tcnn.gmm import GMMConfig, fit_gmm
    from lipseg.tcnn.heads import HeadsConfig, HeadsData, finetune_heads
    from lipseg.tcnn.model import TCNNConfig, VanillaTCNN
    from lipseg.tcnn.predict import trunk_and_fc5
    from lipseg.tcnn.training import BaseTraining, LandmarkTask

    set_determinism(0)
    records, _ = load_split(synthetic_dir, "train")
    geometry = CropGeometry()
    crops = make_crops(records, geometry, None, progress=False)
    model = VanillaTCNN(TCNNConfig(conv_channels=[8, 16, 16, 16], fc5=32))
    model.normaliser.set_images(*normalisation_images(crops.images))
    inputs, targets = images_to_tensor(crops.images), torch.from_numpy(crops.lips)
    fit(
        model,
        inputs,
        targets,
        LandmarkTask("mse", inputs[:8], targets[:8]),
        FitConfig(lr=3e-3, batch_size=16, max_epochs=15, patience=15),
        progress=False,
    )
    _, features = trunk_and_fc5(model, crops.images)
    mixture, _ = fit_gmm(features, GMMConfig(k=2, n_init=1))
    heads_data = HeadsData(crops.images, crops.lips, crops.names, crops.copy_index)
    recipe = BaseTraining("mse", 0.0, "none", 0, 0.5)
    tweaked, _ = finetune_heads(
        model, mixture, heads_data, heads_data, HeadsConfig(epochs=1, min_cluster_size=1), recipe, progress=False
    )
    folder = tmp_path_factory.mktemp("model") / "tcnn"
    face_to_mouth = FaceToMouth(dx=0.0, dy=0.27, scale=0.62, samples=0)
    tweaked.save(folder, geometry.to_dict(), extra={"box_source": "gt", "face_to_mouth": face_to_mouth.to_dict()})
    assert np.isfinite(features).all()
    return folder


@pytest.fixture(autouse=True, scope="session")
def onnx_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`lipseg predict` caches ONNX exports under ~/.cache/lipseg; tests keep theirs in a temp dir."""
    os.environ["LIPSEG_CACHE"] = str(tmp_path_factory.mktemp("lipseg-cache"))


@pytest.fixture
def onnx_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of ONNX exports for this test alone (the session's one may hold an export of the same weights)."""
    from lipseg.core.onnx_runtime import onnx_cache_dir

    monkeypatch.setenv("LIPSEG_CACHE", str(tmp_path / "lipseg-cache"))
    return onnx_cache_dir()
