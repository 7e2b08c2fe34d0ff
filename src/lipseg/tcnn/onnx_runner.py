"""The TCNN in onnxruntime, without torch: a model folder's export (shipped in the folder, or made once
and cached, lipseg.core.onnx_runtime) runs the crops, with the same gating and flip averaging as torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipseg.core.model_meta import read_model_meta
from lipseg.core.onnx_runtime import export_session
from lipseg.core.tta import average_with_mirror, mirrored
from lipseg.tcnn.crop_points import CropPredictions, unmirror

ONNX_SCHEMA = "lipseg-onnx/1"
SIDECAR_FILE = "lipseg_onnx.json"
BASE_FILE = "base.onnx"
TWEAKED_FILE = "tweaked.onnx"
INPUT_NAME = "crops"


def _export(model_folder: Path, out_dir: Path) -> None:
    from lipseg.tcnn.export import export_onnx  # torch: only when no export of these weights exists yet

    export_onnx(model_folder, out_dir)


class OnnxCropRunner:
    """The model folder's network in onnxruntime: several times faster than torch for single small crops
    on a CPU, and no torch import at all when the folder ships its export."""

    def __init__(self, model_folder: Path, threads: int = 1):
        meta = read_model_meta(model_folder)
        # The graph the model's kind needs: a tweaked model's export without its tweaked graph is damaged,
        # not a reason to run the base head alone.
        graph = TWEAKED_FILE if meta.get("kind") == "tweaked" else BASE_FILE
        self.session = export_session(model_folder, SIDECAR_FILE, graph, _export, threads)
        self.annotation_offset = float(meta["config"].get("annotation_offset", 0.0))
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray, flip_average: bool = False) -> CropPredictions:
        crops = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        if flip_average:  # one run on the crops and their mirror images
            crops = np.concatenate([crops, mirrored(crops)])
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: crops})))
        count = len(images)
        lips = outputs["lips"].astype(np.float32)
        clusters = np.asarray(outputs.get("cluster", np.full(len(crops), -1)), np.int64)[:count]
        if flip_average:  # the mirror image's lips from the plain crop's head: the gate decides once per face
            on_mirror = (
                outputs["head_lips"][count:][np.arange(count), clusters] if "head_lips" in outputs else lips[count:]
            )
            lips = average_with_mirror(
                lips[:count], on_mirror.astype(np.float32), lambda m: unmirror(m, self.annotation_offset)
            )
        return CropPredictions(lips, clusters)
