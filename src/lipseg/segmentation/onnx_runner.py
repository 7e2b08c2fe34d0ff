"""A segmenter in onnxruntime, without torch: the folder's export (shipped in it, or made once and
cached, lipseg.core.onnx_runtime) gives the class probabilities of a batch of crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipseg.core.onnx_runtime import export_session

ONNX_SCHEMA = "lipseg-segmenter-onnx/1"
SIDECAR_FILE = "lipseg_segmenter_onnx.json"
SEGMENTER_FILE = "segmenter.onnx"
INPUT_NAME, OUTPUT_NAME = "crops", "probabilities"


def _export(model_folder: Path, out_dir: Path) -> None:
    from lipseg.segmentation.export import export_segmenter_onnx  # torch: only for weights not exported yet

    export_segmenter_onnx(model_folder, out_dir)


class OnnxSegmenter:
    """(F, S, S, 3) uint8 crops -> (F, 4, S, S) float32 class probabilities, one batch per call."""

    def __init__(self, model_folder: Path, threads: int = 1):
        self.session = export_session(model_folder, SIDECAR_FILE, SEGMENTER_FILE, _export, threads)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)
        return self.session.run(None, {INPUT_NAME: batch})[0]
