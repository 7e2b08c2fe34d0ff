"""One model-folder format for both families: round trips, and one error class for every broken folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lipseg.core.model_folder import META_FILE, WEIGHTS_FILE, ModelFolderError, read_model_meta
from lipseg.data.geometry import CropGeometry
from lipseg.inference.cli import main
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


def _small_folder(folder: Path, family: str) -> Path:
    """An untrained folder of either family: a tweaked TCNN with two heads, or a U-Net segmenter."""
    torch.manual_seed(0)
    if family == "tcnn":
        vanilla = VanillaTCNN(TCNNConfig(conv_channels=[8, 16, 16, 16], fc5=32))
        TweakedTCNN.from_vanilla(vanilla, 2).save(folder, CropGeometry().to_dict())
    else:
        SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3)).save(
            folder, CropGeometry(32, 0.5).to_dict()
        )
    return folder


LOADERS = {"tcnn": load_tcnn, "segmenter": load_segmenter}


def _broken(tmp_path: Path, damage: str, family: str = "tcnn") -> Path:
    folder = _small_folder(tmp_path / family / damage, family)
    meta_path, weights = folder / META_FILE, folder / WEIGHTS_FILE
    meta = json.loads(meta_path.read_text())
    if damage == "unknown schema":
        meta["schema"] = "lipseg-tcnn/99"
    elif damage == "unknown kind":
        meta["kind"] = "tripled"
    elif damage == "a config the weights do not match" and family == "tcnn":
        meta["components"] = 99  # more heads than the weights hold
    elif damage == "a config the weights do not match":
        meta["config"]["num_classes"] = 99  # more classes than the weights hold
    elif damage == "a billion heads":
        meta["components"] = 10**9
    elif damage.startswith("crop size"):
        meta["geometry"]["size"] = -48 if damage == "crop size -48" else 64
    meta_path.write_text(json.dumps(meta))
    if damage == "malformed json":
        meta_path.write_text("{not json")
    elif damage == "json array":
        meta_path.write_text("[1, 2]")
    elif damage == "an integer of 5000 digits":  # more than Python converts (a ValueError, not a JSONDecodeError)
        meta_path.write_text('{"schema": ' + "9" * 5000 + "}")
    elif damage == "arrays nested 100000 deep":  # past the parser's recursion limit
        meta_path.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "no config":
        meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != "config"}))
    elif damage == "header claims 2^62 bytes":
        weights.write_bytes((2**62).to_bytes(8, "little") + weights.read_bytes()[8:])
    elif damage == "garbage weights":
        weights.write_bytes(b"\x00garbage" * 10)
    elif damage == "wrong tensor shape":
        save_file({key: torch.zeros(3) for key in load_file(str(weights))}, str(weights))
    elif damage == "missing weights":
        weights.unlink()
    return folder


BROKEN = [  # (damage, what the error says), for both families
    ("malformed json", f"{META_FILE}: not readable JSON"),
    ("json array", f"{META_FILE}: expected a JSON object, found list"),
    ("an integer of 5000 digits", f"{META_FILE}: not readable JSON"),
    ("arrays nested 100000 deep", f"{META_FILE}: not readable JSON"),
    ("no config", f"{META_FILE}: the 'config' entry is missing"),
    ("unknown schema", "unknown model schema 'lipseg-tcnn/99'"),
    ("header claims 2^62 bytes", f"{WEIGHTS_FILE}: not readable safetensors weights"),
    ("garbage weights", f"{WEIGHTS_FILE}: not readable safetensors weights"),
    ("wrong tensor shape", rf"{WEIGHTS_FILE}: the weights do not fit .* is \(3,\) float32 in the file, \(\d"),
    ("a config the weights do not match", rf"{WEIGHTS_FILE}: the weights do not fit .* in the file, \(99, "),
    ("crop size -48", rf"{META_FILE}: geometry.size must be a positive integer .*, got -48"),
    ("crop size not the input size", rf"{META_FILE}: geometry.size 64 is not config.input_size (40|32)"),
    ("missing weights", "model.safetensors is missing"),
]
TCNN_ONLY = [
    ("unknown kind", "cannot build the model from its config"),
    ("a billion heads", "components must be an integer from 1 to 1024, got 1000000000"),
]


@pytest.mark.parametrize(
    ("family", "damage", "message"),
    [
        pytest.param(family, damage, message, id=f"{family}-{damage}")
        for family, cases in [*((family, BROKEN) for family in LOADERS), ("tcnn", TCNN_ONLY)]
        for damage, message in cases
    ],
)
def test_every_broken_folder_is_one_named_error(tmp_path: Path, family: str, damage: str, message: str) -> None:
    folder = _broken(tmp_path, damage, family)
    with pytest.raises(ModelFolderError, match=message) as raised:
        LOADERS[family](folder)
    assert str(folder) in str(raised.value)


@pytest.mark.parametrize("family", LOADERS)
@pytest.mark.parametrize("damage", [damage for damage, _ in BROKEN])
@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_predict_names_a_broken_folder_in_one_line(
    tmp_path: Path,
    face_photo: Path,
    onnx_cache: Path,
    capsys: pytest.CaptureFixture,
    family: str,
    damage: str,
    engine: str,
) -> None:
    """--model or --segmenter: exit 2 and one `lipseg: error:` line, not a traceback half-way through
    the photos (a bad crop size used to pass the loaders and stop the run at the first face). The ONNX
    engine exports the folder first (its own cache: an export of the same weights would be reused)."""
    broken = _broken(tmp_path, damage, family)
    model = ["--model", str(broken)]
    if family == "segmenter":
        model = ["--model", str(_small_folder(tmp_path / "tcnn", "tcnn")), "--segmenter", str(broken)]
    out = tmp_path / "out"
    code = main(["predict", str(face_photo), "--out", str(out), *model, "--engine", engine, "--quiet"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and line.startswith(f"lipseg: error: {broken}")
    assert not any(out.rglob("*.json"))  # stopped before the first photo


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
