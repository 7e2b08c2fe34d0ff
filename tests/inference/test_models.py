"""Which models `lipseg predict` picks: a damaged models/segmenters/best.json never stops the default run
(--mask-source auto falls back to the landmark polygons, saying why) and is named where it is insisted on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipseg.core.paths import BEST_SEGMENTER
from lipseg.inference.cli import main
from lipseg.inference.models import ModelNotFoundError, segmenter_folder

DAMAGED_BEST = {  # best.json's text -> what the warning says about it
    "invalid json": ('{"folder": "models/segmenters/unet",', "Expecting"),
    "json array": ('["models/segmenters/unet"]', "expected a JSON object, found list"),
    "missing key": ('{"arch": "unet", "beats_landmarks": true}', "the 'folder' entry is missing or not a str"),
    "no such folder": (
        '{"arch": "unet", "folder": "models/segmenters/gone", "beats_landmarks": true}',
        "it names 'models/segmenters/gone', which is not a folder",
    ),
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty lipseg project (a dvc.yaml) as the working directory."""
    project = tmp_path / "project"
    (project / BEST_SEGMENTER).parent.mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project)
    return project


@pytest.mark.parametrize("damage", DAMAGED_BEST)
def test_a_damaged_best_json_falls_back_to_the_polygons_with_a_warning(
    project: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    text, problem = DAMAGED_BEST[damage]
    (project / BEST_SEGMENTER).write_text(text)
    assert segmenter_folder("auto", None) is None
    warning = capsys.readouterr().err
    assert warning.startswith(f"lipseg: warning: {project / BEST_SEGMENTER}: ") and problem in warning
    assert warning.rstrip().endswith("masks from the landmark polygons")
    with pytest.raises(ModelNotFoundError, match=f"--mask-source segmenter: {project / BEST_SEGMENTER}: "):
        segmenter_folder("segmenter", None)  # insisting on a segmenter: the named error, not the polygons


@pytest.mark.parametrize("damage", DAMAGED_BEST)
def test_the_default_predict_survives_a_damaged_best_json(
    project: Path, face_photo: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    (project / BEST_SEGMENTER).write_text(DAMAGED_BEST[damage][0])
    assert main(["predict", str(face_photo), "--out", "out", "--model", str(tiny_model_folder), "--quiet"]) == 0
    assert f"lipseg: warning: {project / BEST_SEGMENTER}: " in capsys.readouterr().err
    result = json.loads((project / "out" / "face.json").read_text())
    assert result["mask_source"] == "landmarks" and len(result["faces"][0]["lips"]) == 56
