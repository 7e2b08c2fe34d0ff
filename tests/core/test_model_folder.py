"""One model-folder format for both families: round trips, and one error class for every broken folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lipseg.core.model_folder import META_FILE, WEIGHTS_FILE, ModelFolderError, read_model_meta
from lipseg.data.geometry import CropGeometry
from lipseg.segmentation.model import SegmenterNet, load_segmenter
from lipseg.segmentation.nets import SegmenterConfig
from lipseg.segmentation.runner import crop_probabilities
from lipseg.tcnn.model import TCNNConfig, TweakedTCNN, VanillaTCNN, load_tcnn
from lipseg.tcnn.predict import predict_crops


@pytest.mark.parametrize("kind", ["vanilla", "tweaked"])
def test_tcnn_folder_round_trip(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    vanilla = VanillaTCNN(TCNNConfig(fc5=20))
    vanilla.normaliser.set_images(np.full((40, 40, 3), 100, np.float32), np.full((40, 40, 3), 50, np.float32))
    model = vanilla if kind == "vanilla" else TweakedTCNN.from_vanilla(vanilla, 3)
    geometry = CropGeometry(size=40, margin=0.3)
    model.save(tmp_path, geometry.to_dict(), extra={"note": "test"})
    loaded, loaded_geometry, meta = load_tcnn(tmp_path)
    assert loaded_geometry == geometry and meta["kind"] == kind and meta["note"] == "test" and meta["family"] == "tcnn"
    crops = np.random.default_rng(0).integers(0, 255, (7, 40, 40, 3), dtype=np.uint8)
    original, reloaded = predict_crops(model, crops), predict_crops(loaded, crops)
    np.testing.assert_array_equal(reloaded.lips, original.lips)
    np.testing.assert_array_equal(reloaded.clusters, original.clusters)
    assert (reloaded.clusters >= 0).all() if kind == "tweaked" else (reloaded.clusters == -1).all()
    assert not any(path.suffix in (".pkl", ".pickle") for path in tmp_path.iterdir())


def test_segmenter_folder_round_trip_in_the_same_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3))
    model.set_normalisation(np.array([100.0, 110, 120]), np.array([50.0, 55, 60]))
    model.save(tmp_path, CropGeometry(32, 0.5).to_dict(), extra={"train_minutes": 0.1})
    loaded, geometry, meta = load_segmenter(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([META_FILE, WEIGHTS_FILE])
    assert geometry == CropGeometry(32, 0.5) and meta["family"] == "segmenter" and meta["parameters"] > 0
    assert meta["classes"] == {"0": "background", "1": "upper lip", "2": "inner mouth", "3": "lower lip"}
    crops = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(crop_probabilities(loaded, crops), crop_probabilities(model.eval(), crops))


def test_a_folder_of_the_other_family_is_refused(tmp_path: Path) -> None:
    SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3)).save(
        tmp_path / "seg", CropGeometry(32, 0.5).to_dict()
    )
    VanillaTCNN(TCNNConfig()).save(tmp_path / "tcnn", CropGeometry().to_dict())
    with pytest.raises(ModelFolderError, match="holds a 'segmenter' model, not a 'tcnn' one"):
        load_tcnn(tmp_path / "seg")
    with pytest.raises(ModelFolderError, match="holds a 'tcnn' model, not a 'segmenter' one"):
        load_segmenter(tmp_path / "tcnn")


def test_legacy_per_family_folders_still_load(tmp_path: Path) -> None:
    """Folders written before the one format (schema lipseg-tcnn/1, and lipseg-segmenter/1 in its own file)."""
    VanillaTCNN(TCNNConfig()).save(tmp_path / "tcnn", CropGeometry().to_dict())
    meta = json.loads((tmp_path / "tcnn" / META_FILE).read_text())
    meta["schema"] = "lipseg-tcnn/1"
    del meta["family"]
    (tmp_path / "tcnn" / META_FILE).write_text(json.dumps(meta))
    assert load_tcnn(tmp_path / "tcnn")[2]["kind"] == "vanilla"
    SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3)).save(
        tmp_path / "seg", CropGeometry(32, 0.5).to_dict()
    )
    meta = json.loads((tmp_path / "seg" / META_FILE).read_text())
    meta["schema"] = "lipseg-segmenter/1"
    del meta["family"]
    (tmp_path / "seg" / META_FILE).unlink()
    (tmp_path / "seg" / "lipseg_segmenter.json").write_text(json.dumps(meta))
    assert load_segmenter(tmp_path / "seg")[2]["family"] == "segmenter"


def _broken(tmp_path: Path, damage: str) -> Path:
    folder = tmp_path / damage
    VanillaTCNN(TCNNConfig()).save(folder, CropGeometry().to_dict())
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    meta = json.loads(meta_path.read_text())
    if damage == "malformed json":
        meta_path.write_text("{not json")
    elif damage == "json array":
        meta_path.write_text("[1, 2]")
    elif damage == "no config":
        meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "config"}))
    elif damage == "unknown schema":
        meta_path.write_text(json.dumps({**meta, "schema": "lipseg-tcnn/99"}))
    elif damage == "unknown kind":
        meta_path.write_text(json.dumps({**meta, "kind": "tripled"}))
    elif damage == "garbage weights":
        weights.write_bytes(b"\x00garbage" * 10)
    elif damage == "wrong tensor shape":
        save_file({key: torch.zeros(3) for key in VanillaTCNN(TCNNConfig()).state_dict()}, str(weights))
    elif damage == "missing weights":
        weights.unlink()
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("malformed json", "not readable JSON"),
        ("json array", "expected a JSON object, found list"),
        ("no config", "the 'config' entry is missing"),
        ("unknown schema", "unknown model schema 'lipseg-tcnn/99'"),
        ("unknown kind", "cannot build the model from its config"),
        ("garbage weights", "not readable safetensors weights"),
        ("wrong tensor shape", "the weights do not fit the model"),
        ("missing weights", "model.safetensors is missing"),
    ],
)
def test_every_broken_folder_is_one_named_error(tmp_path: Path, damage: str, message: str) -> None:
    folder = _broken(tmp_path, damage)
    with pytest.raises(ModelFolderError, match=message):
        load_tcnn(folder)


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no such folder"):
        read_model_meta(tmp_path / "missing")
    with pytest.raises(ModelFolderError, match=f"no {META_FILE}"):
        read_model_meta(tmp_path)


def test_the_same_weights_give_the_same_bytes_in_every_process(tmp_path: Path) -> None:
    """DVC hashes model folders: identical weights saved by separate processes must be identical files.
    (safetensors writes its metadata from a hash map, so two metadata keys would come out in random order.)"""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from lipseg.data.geometry import CropGeometry\n"
        "from lipseg.tcnn.model import TCNNConfig, VanillaTCNN\n"
        "torch.manual_seed(0)\n"
        "VanillaTCNN(TCNNConfig(fc5=8, conv_channels=[4, 4, 4, 4])).save(sys.argv[1], CropGeometry().to_dict())\n"
    )
    digests = set()
    for index in range(6):
        folder = tmp_path / str(index)
        subprocess.run([sys.executable, "-c", script, str(folder)], check=True, timeout=120)
        digests.add(((folder / WEIGHTS_FILE).read_bytes(), (folder / META_FILE).read_bytes()))
    assert len(digests) == 1
