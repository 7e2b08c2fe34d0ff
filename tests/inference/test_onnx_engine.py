"""The ONNX engine: the segmenter's export agrees with torch, a model folder's shipped export is used only
for its own weights, and `lipseg predict` on the ONNX engine never imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipseg.core.onnx_runtime import SHIPPED_FOLDER, export_for, onnx_cache_dir, weights_digest
from lipseg.data.geometry import CropGeometry
from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.segmentation.export import export_segmenter_onnx
from lipseg.segmentation.model import SegmenterNet
from lipseg.segmentation.nets import SegmenterConfig
from lipseg.segmentation.onnx_runner import SIDECAR_FILE
from lipseg.segmentation.runner import SegmenterRunner
from lipseg.tcnn.export import export_onnx
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
