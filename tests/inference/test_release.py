"""The release model that ships inside the package: `lipseg predict` uses it with no --model from any
folder, its card describes it, and (with the Helen sample) it scores what its card says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.core.model_meta import read_model_meta
from lipseg.core.onnx_runtime import SHIPPED_FOLDER, export_for
from lipseg.data.helen import load_split
from lipseg.evaluation.outputs import score_folder
from lipseg.inference.models import RELEASE, RELEASE_SEGMENTER, RELEASE_TCNN, training_data_warning
from lipseg.segmentation.onnx_runner import SIDECAR_FILE as SEGMENTER_SIDECAR
from lipseg.tcnn.onnx_runner import SIDECAR_FILE as TCNN_SIDECAR

CARD_CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth")


@pytest.fixture(scope="module")
def release() -> dict:
    return json.loads((RELEASE / "release.json").read_text())


def test_the_release_model_ships_small_with_its_card(release: dict) -> None:
    files = [path for path in RELEASE.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} <= {".json", ".safetensors", ".md", ".onnx"}  # no pickles, nothing else
    assert sum(path.stat().st_size for path in files) < 5e6  # a few MB at most
    for folder, sidecar in ((RELEASE_TCNN, TCNN_SIDECAR), (RELEASE_SEGMENTER, SEGMENTER_SIDECAR)):
        assert export_for(folder, sidecar, None) == folder / SHIPPED_FOLDER  # its ONNX export ships, for its weights
        meta = read_model_meta(folder)
        assert meta["training_data"]["source"] == "helen" and training_data_warning(folder, meta) is None
    card = (RELEASE / "MODEL_CARD.md").read_text()
    for required in ("non-commercial", release["training_data"]["digest"], release["commit"], "Intended use"):
        assert required in card
    for split in ("validation", "test"):
        assert f"{release[split]['lips']:.3f}" in card
    assert release["profile"] == "profiles/helen.yaml" and release["params"]["data"]["source"] == "helen"


def test_predict_uses_the_release_model_from_any_folder(release: dict, tmp_path: Path, synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "test")
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(records[0].image_path)), (320, 320)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "lipseg", "predict", str(photo), "--out", "out", "--quiet"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr  # trained on real photos: no synthetic-data warning
    result = json.loads((elsewhere / "out" / "face.json").read_text())
    assert result["mask_source"].startswith("segmenter:") and result["model"] == release["tcnn"]["kind"]
    from PIL import Image

    mask = np.asarray(Image.open(elsewhere / "out" / "face.png"))  # a palette PNG: its indices are the labels
    assert mask.shape == (320, 320) and set(np.unique(mask)) <= {0, 1, 2, 3}


@pytest.mark.helen
def test_the_release_model_scores_its_card_on_the_validation_photos(
    release: dict, helen_dir: Path, tmp_path: Path
) -> None:
    """`lipseg predict` with no flags on the validation photos the card names, scored from the PNGs."""
    names = set(release["validation_names"])
    records = [record for record in load_split(helen_dir, "train")[0] if record.name in names]
    assert len(records) == len(names) == release["validation"]["photos"]
    photos = [str(record.image_path) for record in records]
    done = subprocess.run(
        [sys.executable, "-m", "lipseg", "predict", *photos, "--out", str(tmp_path / "out"), "--no-overlay", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    headline = score_folder(tmp_path / "out", records, "png")["headline"]
    for name in CARD_CLASSES:
        assert headline[f"f1_{name}"] == pytest.approx(release["validation"][name], abs=0.005), name
