"""The ONNX engine: the segmenter's export agrees with torch, a model folder's shipped export is used only
for its own weights, a damaged export is made again, and `lipseg predict` on the ONNX engine never imports torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipseg.core.onnx_runtime import SHIPPED_FOLDER, OnnxError, export_for, onnx_cache_dir, weights_digest
from lipseg.data.geometry import CropGeometry
from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.inference.cli import main
from lipseg.inference.models import RELEASE_TCNN
from lipseg.segmentation import onnx_runner as segmenter_onnx_runner
from lipseg.segmentation.export import export_segmenter_onnx
from lipseg.segmentation.model import SegmenterNet
from lipseg.segmentation.nets import SegmenterConfig
from lipseg.segmentation.onnx_runner import SEGMENTER_FILE, SIDECAR_FILE, OnnxSegmenter
from lipseg.segmentation.runner import SegmenterRunner
from lipseg.tcnn.export import export_onnx
from lipseg.tcnn.onnx_runner import BASE_FILE, TWEAKED_FILE, OnnxCropRunner
from lipseg.tcnn.onnx_runner import SIDECAR_FILE as TCNN_SIDECAR


@pytest.fixture
def segmenter(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=48, width=4, depth=3, annotation_offset=0.01))
    model.set_normalisation(np.full(3, 120.0), np.full(3, 50.0))
    folder = tmp_path / "segmenter"
    model.save(folder, CropGeometry(48, 0.5).to_dict(), extra={"training_data": {"source": "helen"}})
    return folder


def test_the_onnx_segmenter_labels_as_torch_does(segmenter: Path, synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "test")
    for flip in (False, True):
        torch_runner = SegmenterRunner(segmenter, flip_average=flip, engine="torch")
        onnx_runner = SegmenterRunner(segmenter, flip_average=flip, engine="onnx")
        assert onnx_runner.model is None and torch_runner.model is not None
        for record in records[:3]:
            image = cv2.imread(str(record.image_path))
            lips = [record.points[HELEN_LIPS]]
            agreement = (torch_runner.label_mask(image, lips) == onnx_runner.label_mask(image, lips)).mean()
            assert agreement > 0.9999  # only a near tie of two classes may differ
    with pytest.raises(ValueError, match="engine must be one of"):
        SegmenterRunner(segmenter, engine="tensorrt")


def test_a_shipped_export_is_used_only_for_its_own_weights(segmenter: Path, tmp_path: Path) -> None:
    export_segmenter_onnx(segmenter, segmenter / SHIPPED_FOLDER)
    sidecar = json.loads((segmenter / SHIPPED_FOLDER / SIDECAR_FILE).read_text())
    assert sidecar["weights_sha256"] == weights_digest(segmenter)
    calls: list[Path] = []
    assert export_for(segmenter, SIDECAR_FILE, lambda folder, out: calls.append(out)) == segmenter / SHIPPED_FOLDER
    assert calls == []  # nothing exported, nothing cached

    retrained = tmp_path / "retrained"
    shutil.copytree(segmenter, retrained)
    torch.manual_seed(1)
    other = SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=48, width=4, depth=3))
    other.save(retrained, CropGeometry(48, 0.5).to_dict())  # new weights beside the old weights' export
    used = export_for(retrained, SIDECAR_FILE, export_segmenter_onnx)
    assert used == onnx_cache_dir() / weights_digest(retrained)[:20] and (used / SIDECAR_FILE).is_file()


def test_predict_on_the_onnx_engine_never_imports_torch(
    tiny_model_folder: Path, segmenter: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    tcnn = tmp_path / "tcnn"
    shutil.copytree(tiny_model_folder, tcnn)
    export_onnx(tcnn, tcnn / SHIPPED_FOLDER)
    export_segmenter_onnx(segmenter, segmenter / SHIPPED_FOLDER)
    assert (tcnn / SHIPPED_FOLDER / TCNN_SIDECAR).is_file()
    records, _ = load_split(synthetic_dir, "test")
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), cv2.resize(cv2.imread(str(records[0].image_path)), (320, 320)))
    script = (
        "import sys\n"
        "from lipseg.inference.cli import main\n"
        f"code = main(['predict', {str(photo)!r}, '--out', {str(tmp_path / 'out')!r}, '--model', {str(tcnn)!r},"
        f" '--segmenter', {str(segmenter)!r}, '--mask-source', 'segmenter', '--quiet'])\n"
        "assert code == 0, code\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    result = json.loads((tmp_path / "out" / "face.json").read_text())
    assert result["mask_source"] == "segmenter:plain_unet" and len(result["faces"][0]["lips"]) == 56


@pytest.fixture(params=["tcnn", "segmenter"])
def onnx_model(request: pytest.FixtureRequest, segmenter: Path, tmp_path: Path, onnx_cache: Path):
    """(a model folder, the graph its ONNX runner loads, its exporter, the runner's outputs on fixed crops)."""
    if request.param == "segmenter":
        crops = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
        return segmenter, SEGMENTER_FILE, export_segmenter_onnx, lambda: [OnnxSegmenter(segmenter)(crops)]
    folder = tmp_path / "tcnn"
    shutil.copytree(request.getfixturevalue("tiny_model_folder"), folder)
    crops = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)

    def run() -> list[np.ndarray]:
        predictions = OnnxCropRunner(folder)(crops)
        return [predictions.lips, predictions.clusters]

    return folder, TWEAKED_FILE, export_onnx, run


def _assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for got_array, expected_array in zip(got, expected, strict=True):
        np.testing.assert_array_equal(got_array, expected_array)


DAMAGES = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "garbage": lambda path: path.write_bytes(b"\x08garbage" * 500),
    "missing": lambda path: path.unlink(),  # a tweaked model's export without its tweaked graph ran the base head
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_entry_is_exported_again(
    onnx_model, onnx_cache: Path, capsys: pytest.CaptureFixture, damage: str
) -> None:
    folder, graph, _, run = onnx_model
    expected = run()  # exports into the cache
    entry = onnx_cache / weights_digest(folder)[:20] / graph
    DAMAGES[damage](entry)
    capsys.readouterr()
    _assert_same(run(), expected)
    warning = capsys.readouterr().err
    assert warning.startswith("lipseg: warning: passing over a damaged ONNX export") and str(entry) in warning
    _assert_same(run(), expected)
    assert capsys.readouterr().err == ""  # mended for good: no warning, no export on the next run
    assert not [path.name for path in onnx_cache.iterdir() if path.name.startswith(".")]  # no staging left


def test_a_damaged_shipped_export_gives_way_to_one_in_the_cache(
    onnx_model, onnx_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """The release model ships its export inside the package; a damaged file there is passed over for
    one exported into the cache, once."""
    folder, graph, export, run = onnx_model
    export(folder, folder / SHIPPED_FOLDER)
    expected = run()
    assert not onnx_cache.exists()  # the shipped export was used
    shipped = folder / SHIPPED_FOLDER / graph
    DAMAGES["truncated"](shipped)
    capsys.readouterr()
    _assert_same(run(), expected)
    assert str(shipped) in capsys.readouterr().err
    entry = onnx_cache / weights_digest(folder)[:20] / graph
    made = entry.stat().st_mtime_ns
    _assert_same(run(), expected)
    assert str(shipped) in capsys.readouterr().err  # still damaged, still said, but not exported again
    assert entry.stat().st_mtime_ns == made


def test_an_export_onnxruntime_cannot_load_even_afresh_is_a_named_error(
    segmenter: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def export_garbage(model_folder: Path, out_dir: Path) -> None:
        export_segmenter_onnx(model_folder, out_dir)
        (out_dir / SEGMENTER_FILE).write_bytes(b"not onnx")

    monkeypatch.setattr(segmenter_onnx_runner, "_export", export_garbage)
    entry = onnx_cache / weights_digest(segmenter)[:20] / SEGMENTER_FILE
    message = (
        rf"^{re.escape(str(entry))}: onnxruntime cannot load it .*exported afresh from {re.escape(str(segmenter))}$"
    )
    with pytest.raises(OnnxError, match=message):
        OnnxSegmenter(segmenter)


def test_predict_with_a_damaged_release_export_still_runs(
    tmp_path: Path, face_photo: Path, onnx_cache: Path, capsys: pytest.CaptureFixture
) -> None:
    release = tmp_path / "release"
    shutil.copytree(RELEASE_TCNN, release)
    shipped = release / SHIPPED_FOLDER / BASE_FILE
    DAMAGES["garbage"](shipped)
    out = tmp_path / "out"
    args = ["predict", str(face_photo), "--out", str(out), "--model", str(release), "--mask-source", "landmarks"]
    assert main([*args, "--quiet"]) == 0
    assert f"lipseg: warning: passing over a damaged ONNX export: {shipped}" in capsys.readouterr().err
    assert len(json.loads((out / "face.json").read_text())["faces"][0]["lips"]) == 56
