"""The registered photo-level `lipseg` MLflow model, as "models from code" (MLflow executes this file when
it loads the model, so nothing is pickled): photo bytes in, per photo the faces with their lips, the label
mask and the timings out, predicted by exactly the code and options of `lipseg predict`.

Input: a DataFrame with a binary column `image` (encoded JPEG/PNG/... bytes; base64 in MLflow's JSON) and
an optional `name`. Output, one row per photo, all strings: `name`; `image_size` (JSON [width, height]);
`faces` (JSON list, one object per face with the keys of `lipseg predict`'s JSON: lips, box, crop_box,
score, cluster, head); `mask_png` (base64 PNG of the label mask, 0 background, 1 upper lip, 2 inner mouth,
3 lower lip: the values of `lipseg predict`'s label PNG); `face_masks` (JSON list, per face and lip class
the annotation `lipseg predict --format coco` writes: `face`, `category_id`, the mask as compressed RLE
in `rle`, polygons in `segmentation`, `area`, `bbox`); `mask_source`; `notes` (JSON list);
`timings` (JSON, milliseconds per step); `error` (empty, or one line: one bad photo never fails the batch).

The model carries the TCNN and the segmenter folders (with their ONNX exports) as artifacts and the lipseg
source as `code_paths`, so a fresh environment with only the pinned third-party requirements serves it.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import set_model

from lipseg.core.images import PREDICT_MAX_PIXELS
from lipseg.core.packaging import PyfuncPackage, SignedPythonModel, lipseg_source, pinned_requirements
from lipseg.inference.outputs import PHOTO_MODEL_COLUMNS

# What `lipseg predict` does by default (its --detector, --upsample, --mouth, --engine, --flip-tta,
# --segmenter-flip-tta, --cascade-passes, --max-pixels), with the masks from the carried segmenter.
DEFAULT_CONFIG: dict[str, Any] = {
    "detector": "hog",
    "upsample": 1,
    "mouth": "dlib68",
    "engine": "onnx",
    "flip_tta": True,
    "mask_source": "segmenter",  # or "landmarks": the TCNN polygons (when the segmenter did not beat them)
    "segmenter_flip_tta": False,
    "cascade_passes": 3,
    "max_pixels": PREDICT_MAX_PIXELS,
    "threads": 1,
}
# The third-party distributions the served model imports (tests/inference/test_serving.py checks the list
# against what loading and predicting actually import); pinned at the installed versions. The ONNX engine
# runs the exports the model ships, so torch (gigabytes from a package index) is needed only for "torch".
REQUIREMENTS = (
    "mlflow",
    "numpy",
    "pandas",
    "opencv-python-headless",
    "dlib-bin",
    "face-recognition-models",
    "pillow",
    "onnxruntime",
    "pyyaml",
    "tqdm",
)
TORCH_REQUIREMENTS = ("torch", "safetensors")


class LipsegPhotoPyfunc(SignedPythonModel):
    """Photos in, what `lipseg predict` writes for each out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from lipseg.inference.predictor import LipPredictor

        config = DEFAULT_CONFIG | dict(context.model_config or {})
        self.config = config
        self.predictor = LipPredictor(
            Path(context.artifacts["tcnn"]),
            config["detector"],
            int(config["upsample"]),
            config["mouth"],
            config["engine"],
            max(int(config["threads"]), 1),
            flip_average=bool(config["flip_tta"]),
            cascade_passes=int(config["cascade_passes"]),
            max_pixels=int(config["max_pixels"]),
        )
        self.segmenter = None
        if config["mask_source"] == "segmenter":
            from lipseg.segmentation.runner import SegmenterRunner

            self.segmenter = SegmenterRunner(
                Path(context.artifacts["segmenter"]),
                flip_average=bool(config["segmenter_flip_tta"]),
                threads=max(int(config["threads"]), 1),
                engine=config["engine"],
            )

    # No type hints: MLflow would read them as a schema; the signature says what goes in and out.
    def predict(self, context, model_input, params=None):
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise ValueError(f"the input needs an 'image' column of photo bytes, got columns {list(frame.columns)}")
        names = frame["name"] if "name" in frame.columns else [""] * len(frame)
        rows = [self.answer(image, "" if pd.isna(name) else str(name)) for image, name in zip(frame["image"], names)]
        return pd.DataFrame(rows, columns=list(PHOTO_MODEL_COLUMNS))

    def answer(self, image: Any, name: str) -> dict[str, str]:
        """One photo's output row; any failure is that row's `error`."""
        from lipseg.inference.outputs import mask_source_name

        row = dict.fromkeys(PHOTO_MODEL_COLUMNS, "") | {"name": name, "mask_source": mask_source_name(self.segmenter)}
        try:
            row |= self._predict_photo(photo_bytes(image))
        except Exception as error:  # one bad photo never fails the batch: its row says why
            row["error"] = " ".join(str(error).split()) or type(error).__name__
        return row

    def _predict_photo(self, data: bytes) -> dict[str, str]:
        from lipseg.core.images import apply_orientation, image_metadata, read_image
        from lipseg.inference.coco import photo_annotations
        from lipseg.inference.outputs import face_mask, label_png

        started = time.perf_counter()
        # The very reader of `lipseg predict` (pixel limit, truncation, EXIF turn), which reads files.
        with tempfile.TemporaryDirectory(prefix="lipseg-photo-") as folder:
            path = Path(folder) / "photo"
            path.write_bytes(data)
            image = read_image(path, int(self.config["max_pixels"]))
            image_info = image_metadata(path)
        image = apply_orientation(image, image_info.orientation)
        decode_ms = (time.perf_counter() - started) * 1000
        result = self.predictor.predict(image)
        started = time.perf_counter()
        mask = face_mask(result, image, self.segmenter)
        result.timings_ms["mask"] = (time.perf_counter() - started) * 1000
        payload = result.to_json()
        return {
            "image_size": json.dumps(payload["image_size"]),
            "faces": json.dumps(payload["faces"]),
            "mask_png": base64.b64encode(label_png(mask, palette=False)).decode("ascii"),
            "face_masks": json.dumps(photo_annotations(mask, [face.lips for face in result.faces])),
            "notes": json.dumps(image_info.notes()),
            "timings": json.dumps({"decode": round(decode_ms, 3), **payload["timings_ms"]}),
        }


def photo_bytes(value: Any) -> bytes:
    """A photo cell as bytes: bytes from pandas or Spark, or base64 text (MLflow's JSON for binary)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return base64.b64decode(value, validate=True)
    raise TypeError(f"an image cell must hold photo bytes, got {type(value).__name__}")


def answer_mask(row: Any) -> np.ndarray:
    """The label mask (H, W) uint8 of one output row (its `mask_png`)."""
    import cv2

    data = np.frombuffer(base64.b64decode(row["mask_png"]), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def pip_requirements(engine: str = "onnx") -> list[str]:
    return pinned_requirements(REQUIREMENTS + (TORCH_REQUIREMENTS if engine == "torch" else ()))


def example_photo(size: int = 256) -> bytes:
    """A generated face photo (JPEG bytes) for the input example: small, and free of any dataset's licence."""
    import cv2

    from lipseg.data.synthetic import render_face

    image, _, _ = render_face(seed=0, index=0, image_size=size)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise OSError("the example photo could not be encoded")
    return encoded.tobytes()


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "name", required=False)])
    return ModelSignature(inputs, Schema([ColSpec("string", column) for column in PHOTO_MODEL_COLUMNS]))


def _with_onnx_export(folder: Path, staging: Path, family: str) -> Path:
    """A copy of a model folder that ships its ONNX export (`onnx/`), so that serving never exports."""
    from lipseg.core.onnx_runtime import SHIPPED_FOLDER, export_for

    if family == "tcnn":
        from lipseg.tcnn.export import export_onnx as export
        from lipseg.tcnn.onnx_runner import SIDECAR_FILE
    else:
        from lipseg.segmentation.export import export_segmenter_onnx as export
        from lipseg.segmentation.onnx_runner import SIDECAR_FILE

    copy = staging / family
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(SHIPPED_FOLDER))
    shutil.copytree(export_for(Path(folder), SIDECAR_FILE, export), copy / SHIPPED_FOLDER)
    return copy


def photo_model_package(
    tcnn_folder: Path, segmenter_folder: Path, staging: Path, model_config: dict | None = None
) -> PyfuncPackage:
    """Everything MLflow needs to save or log the photo model, staged under `staging` (which must outlive
    the save): the model folders with their exports, a clean copy of the lipseg source, requirements,
    input example and signature."""
    import pandas as pd

    config = DEFAULT_CONFIG | (model_config or {})
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown photo model options {sorted(unknown)}; known: {sorted(DEFAULT_CONFIG)}")
    folders = {"tcnn": Path(tcnn_folder), "segmenter": Path(segmenter_folder)}
    if config["engine"] == "onnx":
        # A segmenter the masks do not come from is carried as it is: its export would never run.
        used = {"tcnn", "segmenter"} if config["mask_source"] == "segmenter" else {"tcnn"}
        try:
            folders |= {family: _with_onnx_export(folders[family], staging, family) for family in sorted(used)}
        except RuntimeError as error:  # an operator the exporter lacks, e.g. pspnet's pooling on small crops
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(f"lipseg: warning: the photo model runs in torch: no ONNX export ({reason})", file=sys.stderr)
            config = config | {"engine": "torch"}
    return PyfuncPackage(
        python_model=Path(__file__).resolve(),
        artifacts={family: str(folder) for family, folder in folders.items()},
        model_config=config,
        code_paths=[lipseg_source(staging)],
        pip_requirements=pip_requirements(config["engine"]),
        input_example=pd.DataFrame({"image": [example_photo()], "name": ["example.jpg"]}),
        signature=signature(),
    )


def save_photo_model(path: Path, tcnn_folder: Path, segmenter_folder: Path, model_config: dict | None = None) -> Path:
    """Write the photo model to `path` (an MLflow model folder, no tracking store needed), packed exactly as
    registration packs it."""
    from lipseg.core.tracking import save_pyfunc

    with tempfile.TemporaryDirectory(prefix="lipseg-photo-model-") as staging:
        save_pyfunc(Path(path), photo_model_package(tcnn_folder, segmenter_folder, Path(staging), model_config))
    return Path(path)


set_model(LipsegPhotoPyfunc())
