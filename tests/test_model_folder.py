from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipseg.crop import CropGeometry
from lipseg.model import TCNNConfig, TweakedTCNN, VanillaTCNN
from lipseg.model_folder import META_FILE, ModelFolderError, load_model_folder, predict_crops, save_model_folder


@pytest.mark.parametrize("kind", ["vanilla", "tweaked"])
def test_model_folder_round_trip(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    vanilla = VanillaTCNN(TCNNConfig(fc5=20))
    vanilla.normaliser.set_images(np.full((40, 40, 3), 100, np.float32), np.full((40, 40, 3), 50, np.float32))
    model = vanilla if kind == "vanilla" else TweakedTCNN.from_vanilla(vanilla, 3)
    geometry = CropGeometry(size=40, margin=0.3)
    save_model_folder(tmp_path, model, geometry, extra={"note": "test"})
    loaded, loaded_geometry, meta = load_model_folder(tmp_path)
    assert loaded_geometry == geometry and meta["kind"] == kind and meta["note"] == "test"
    crops = np.random.default_rng(0).integers(0, 255, (7, 40, 40, 3), dtype=np.uint8)
    original, reloaded = predict_crops(model, crops), predict_crops(loaded, crops)
    np.testing.assert_array_equal(reloaded.lips, original.lips)
    np.testing.assert_array_equal(reloaded.clusters, original.clusters)
    assert (reloaded.clusters >= 0).all() if kind == "tweaked" else (reloaded.clusters == -1).all()
    assert not any(path.suffix in (".pkl", ".pickle") for path in tmp_path.iterdir())


def test_unknown_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    save_model_folder(tmp_path, VanillaTCNN(TCNNConfig()), CropGeometry())
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["schema"] = "lipseg-tcnn/99"
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFolderError, match="unknown model schema 'lipseg-tcnn/99'"):
        load_model_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="not a lipseg model folder"):
        load_model_folder(tmp_path / "missing")


def test_flip_average_is_the_mean_of_the_crop_and_its_mirror() -> None:
    from lipseg.landmarks import flip_lips

    torch.manual_seed(1)
    model = TweakedTCNN.from_vanilla(VanillaTCNN(TCNNConfig(fc5=20)), 2).eval()
    crops = np.random.default_rng(2).integers(0, 255, (5, 40, 40, 3), dtype=np.uint8)
    plain = predict_crops(model, crops)
    mirrored = predict_crops(model, np.ascontiguousarray(crops[:, :, ::-1]))
    averaged = predict_crops(model, crops, flip_average=True)
    np.testing.assert_allclose(averaged.lips, (plain.lips + flip_lips(mirrored.lips)) / 2, atol=1e-5)
    np.testing.assert_array_equal(averaged.clusters, plain.clusters)
