"""Photos and video frames in, lips out: dlib finds faces, the mouth is located, cropped with the
training geometry, and the TCNN (torch or onnxruntime) gives 56 points per face."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.core.model_meta import ModelFolderError, read_model_meta
from lipseg.data.geometry import (
    CropGeometry,
    FaceToMouth,
    crop_to_image,
    image_to_crop_transform,
    warp_crop,
)
from lipseg.inference.detect import DlibMouthLocator, cached_detector, to_rgb

MOUTH_SOURCES = ("dlib68", "cascade")
ENGINES = ("torch", "onnx")


@dataclass
class FaceLips:
    """One face: its detector box, the square crop used, 56 lip points in image pixels, the head used."""

    box: np.ndarray  # (4,) face box x0, y0, x1, y1 (the crop box when tracking without detection)
    score: float
    crop_box: np.ndarray  # (4,) bounds of the crop square
    lips: np.ndarray  # (56, 2) image pixels, Helen lip order (contours re-spaced)
    cluster: int  # GMM cluster = head used; -1 for a vanilla model

    def to_json(self) -> dict:
        return {
            "lips": self.lips.astype(np.float64).round(3).tolist(),
            "box": self.box.astype(np.float64).round(2).tolist(),
            "crop_box": self.crop_box.astype(np.float64).round(2).tolist(),
            "score": round(float(self.score), 4),
            "cluster": int(self.cluster),
            "head": f"cluster_{self.cluster}" if self.cluster >= 0 else "base",
        }


@dataclass
class ImageLips:
    height: int
    width: int
    faces: list[FaceLips]
    timings_ms: dict[str, float]

    def to_json(self) -> dict:
        return {
            "image_size": [self.width, self.height],
            "faces": [face.to_json() for face in self.faces],
            "timings_ms": {key: round(value, 3) for key, value in self.timings_ms.items()},
        }


class LipPredictor:
    """Photo in, lips out: dlib finds faces, the mouth is located (dlib 68 points, or our TCNN cascade
    from the face box), cropped with the training geometry, and the TCNN (with gating) gives 56 points."""

    def __init__(
        self,
        model_folder: Path,
        detector: str = "hog",
        upsample: int = 1,
        mouth_source: str = "dlib68",
        engine: str = "onnx",
        threads: int = 1,
        flip_average: bool = False,
        cascade_passes: int = 3,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        if mouth_source not in MOUTH_SOURCES:
            raise ValueError(f"mouth source must be one of {MOUTH_SOURCES}, got {mouth_source!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.engine, self.flip_average = engine, flip_average
        if engine == "onnx":  # no torch import: the export ships in the folder or is cached
            from lipseg.tcnn.onnx_runner import OnnxCropRunner

            self.meta = read_model_meta(model_folder)
            if self.meta.get("family") != "tcnn":
                raise ModelFolderError(f"{model_folder} holds a {self.meta.get('family')!r} model, not a 'tcnn' one")
            self.geometry, self.model = CropGeometry(**self.meta["geometry"]), None
            self.run_crops = OnnxCropRunner(model_folder, threads)
        else:
            from lipseg.tcnn.model import load_tcnn
            from lipseg.tcnn.predict import predict_crops

            self.model, self.geometry, self.meta = load_tcnn(model_folder)
            self.run_crops = lambda crops, flip=False: predict_crops(self.model, crops, flip_average=flip)
        if cascade_passes < 2:
            raise ValueError(f"the cascade needs at least 2 passes (locate, then final), got {cascade_passes}")
        self.cascade_passes = cascade_passes
        self.mouth_source = mouth_source
        self.face_to_mouth = None
        if mouth_source == "cascade":
            if not self.meta.get("face_to_mouth"):
                raise ModelFolderError(
                    f"{model_folder}: no face_to_mouth statistics; "
                    "the cascade needs a model trained by this lipseg version"
                )
            self.face_to_mouth = FaceToMouth(**self.meta["face_to_mouth"])
        # max_pixels bounds what upsampling may make of a photo, as read_image bounds the photo itself
        self.locator = DlibMouthLocator(detector, upsample, max_pixels) if mouth_source == "dlib68" else None
        self.detector = self.locator.detector if self.locator else cached_detector(detector, upsample, max_pixels)

    def _landmarks(
        self, image: np.ndarray, boxes: list[tuple[np.ndarray, float]], timings: dict[str, float], final: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lips in image pixels (F, 56, 2), clusters (F,), crop bounds (F, 4)) for square boxes; flip
        averaging only on the `final` pass (a locating pass needs a box, not the last bit of accuracy)."""
        started = time.perf_counter()
        transforms = [image_to_crop_transform(centre, side) for centre, side in boxes]
        crops = np.stack([warp_crop(image, transform, self.geometry.size) for transform in transforms])
        timings["crop"] = timings.get("crop", 0.0) + (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        predictions = self.run_crops(crops, self.flip_average and final)
        timings["tcnn"] = timings.get("tcnn", 0.0) + (time.perf_counter() - started) * 1000
        lips = np.stack([crop_to_image(points, transform) for points, transform in zip(predictions.lips, transforms)])
        bounds = np.array([[c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2] for c, s in boxes], np.float32)
        return lips, predictions.clusters, bounds

    def predict(self, image: np.ndarray, faces: list | None = None) -> ImageLips:
        """All faces of one BGR image (`faces`: dlib boxes to reuse instead of detecting)."""
        timings: dict[str, float] = {}
        height, width = image.shape[:2]
        started = time.perf_counter()
        # Once per image, and only when dlib needs it: the detector and the shape predictor share it.
        rgb = to_rgb(image) if faces is None or self.locator is not None else None
        if faces is None:
            faces = self.detector(image, rgb)
            timings["detect"] = (time.perf_counter() - started) * 1000
        if not faces:
            return ImageLips(height, width, [], timings)
        started = time.perf_counter()
        if self.locator is not None:
            boxes = [self.geometry.box(self.locator.mouth(image, face, rgb).mouth) for face in faces]
            timings["mouth"] = (time.perf_counter() - started) * 1000
        else:
            # Every pass but the last only locates the mouth: each re-crops around the previous lips.
            boxes = [self.face_to_mouth.box(face.box) for face in faces]
            for _ in range(self.cascade_passes - 1):
                located, _, _ = self._landmarks(image, boxes, timings, final=False)
                boxes = [self.geometry.box(lips) for lips in located]
            timings["mouth"] = (time.perf_counter() - started) * 1000
            timings.pop("crop"), timings.pop("tcnn")  # the locating passes count as mouth localisation
        return self._image_lips(image, boxes, faces, timings)

    def _image_lips(
        self, image: np.ndarray, boxes: list[tuple[np.ndarray, float]], sources: list, timings: dict[str, float]
    ) -> ImageLips:
        """The second (final) TCNN pass on the mouth boxes; `sources` (dlib boxes or previous faces) give box
        and score."""
        lips, clusters, bounds = self._landmarks(image, boxes, timings)
        results = [
            FaceLips(source.box, source.score, bound, points, int(cluster))
            for source, bound, points, cluster in zip(sources, bounds, lips, clusters)
        ]
        return ImageLips(image.shape[0], image.shape[1], results, timings)

    def track(self, image: np.ndarray, previous: list[FaceLips]) -> ImageLips:
        """Next video frame without detection: re-crop around each face's previous lips."""
        timings: dict[str, float] = {}
        height, width = image.shape[:2]
        if not previous:
            return ImageLips(height, width, [], timings)
        return self._image_lips(image, [self.geometry.box(face.lips) for face in previous], previous, timings)
