"""dlib face detection (HOG, or the CNN "mmod" detector) and the 68-point shape predictor.

Model files come from the `face-recognition-models` package. Importing that package needs
`pkg_resources`, which modern setuptools dropped, so its folder is found without importing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.data.landmarks import HELEN_LIPS, IBUG_MOUTH
from lipseg.data.photos import read_record_images

SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_CNN = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "cnn", "hog+cnn")
# hog+cnn asks the CNN only where HOG found nothing. HOG's misses on photos are mostly turned or
# tilted faces rather than small ones, and the CNN at upsample 0 already finds those (about 0.7 s on a
# 400 px photo, four times that at upsample 1), so the fallback never upsamples.
FALLBACK_UPSAMPLE = 0


class DetectorError(RuntimeError):
    """dlib or its model files are missing or unusable."""


def model_file(filename: str) -> Path:
    """Path of a dlib model file shipped by `face-recognition-models`."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("face-recognition-models is not installed (pip install face-recognition-models)")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "models" / filename
        if candidate.is_file():
            return candidate
    raise DetectorError(f"{filename} not found in face-recognition-models ({list(spec.submodule_search_locations)})")


def _dlib():
    try:
        import dlib
    except ImportError as error:  # pragma: no cover - dlib-bin is a pinned dependency
        raise DetectorError("dlib is not installed (pip install dlib-bin)") from error
    return dlib


@dataclass(frozen=True)
class FaceBox:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels
    score: float

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


def to_rgb(image_bgr: np.ndarray) -> np.ndarray:
    """dlib wants RGB; cvtColor is several times faster than a reversed-channel copy."""
    if image_bgr.ndim == 2:
        return cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def _face_box(rect, score: float) -> FaceBox:
    return FaceBox(np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32), float(score))


class FaceDetector:
    """dlib's HOG frontal face detector (fast, CPU), its CNN mmod detector (slower, finds turned faces),
    or HOG with the CNN as a fallback on images where HOG finds no face (`hog+cnn`).

    `upsample` is the most the image is upsampled: each image is searched at its own size first and
    upsampled one step at a time only while no face is found, so the small faces upsampling finds are
    still found, at the cost of upsampling only on the images that need it. A step that would take the
    image past `max_pixels` is not taken: each doubles both sides, and dlib holds the upsampled copy and
    its feature pyramid in memory (a faceless 100 MP photo at one step needed 5.4 GB)."""

    def __init__(self, kind: str = "hog", upsample: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS):
        if kind not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {kind!r}")
        if upsample < 0:
            raise ValueError(f"upsample must be at least 0, got {upsample}")
        dlib = _dlib()
        self.kind, self.upsample, self.max_pixels = kind, upsample, max_pixels
        self._hog = dlib.get_frontal_face_detector() if kind in ("hog", "hog+cnn") else None
        self._cnn = dlib.cnn_face_detection_model_v1(str(model_file(MMOD_CNN))) if kind in ("cnn", "hog+cnn") else None
        self.fallbacks = 0  # images on which hog+cnn needed the CNN
        self.upsampled = 0  # images whose faces were found only after upsampling

    def __call__(self, image_bgr: np.ndarray, rgb: np.ndarray | None = None) -> list[FaceBox]:
        rgb = to_rgb(image_bgr) if rgb is None else rgb
        faces = []
        pixels = rgb.shape[0] * rgb.shape[1]
        affordable = [level for level in range(self.upsample + 1) if level == 0 or pixels * 4**level <= self.max_pixels]
        if self._hog is not None:
            for level in affordable:
                rects, scores, _ = self._hog.run(rgb, level, 0.0)
                faces = [_face_box(rect, score) for rect, score in zip(rects, scores)]
                self.upsampled += bool(faces) and level > 0
                if faces:
                    break
        if self._cnn is not None and not faces:
            levels = affordable if self._hog is None else [FALLBACK_UPSAMPLE]
            for level in levels:
                faces = [_face_box(detection.rect, detection.confidence) for detection in self._cnn(rgb, level)]
                if faces:
                    break
            self.fallbacks += self._hog is not None
        return sorted(faces, key=lambda face: -face.score)


class ShapePredictor68:
    """dlib's 68-point iBUG landmark model (the reference implementation's mouth locator)."""

    def __init__(self) -> None:
        self._predictor = _dlib().shape_predictor(str(model_file(SHAPE_68)))

    def __call__(self, image_bgr: np.ndarray, face: FaceBox, rgb: np.ndarray | None = None) -> np.ndarray:
        dlib = _dlib()
        x0, y0, x1, y1 = (int(round(value)) for value in face.box)
        shape = self._predictor(to_rgb(image_bgr) if rgb is None else rgb, dlib.rectangle(x0, y0, x1, y1))
        return np.array([(point.x, point.y) for point in shape.parts()], np.float32)  # (68, 2)


def mouth_points(landmarks68: np.ndarray) -> np.ndarray:
    """The 20 iBUG mouth points (48..67) of a 68-point shape."""
    return np.asarray(landmarks68, np.float32)[IBUG_MOUTH]


@lru_cache(maxsize=4)
def cached_detector(kind: str = "hog", upsample: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> FaceDetector:
    return FaceDetector(kind, upsample, max_pixels)


@lru_cache(maxsize=1)
def cached_shape_predictor() -> ShapePredictor68:
    return ShapePredictor68()


@dataclass(frozen=True)
class MouthDetection:
    face: FaceBox
    mouth: np.ndarray  # (20, 2) iBUG mouth points 48..67


class DlibMouthLocator:
    """Faces by dlib's detector, mouths by its 68-point predictor: the reference mouth locator."""

    def __init__(self, detector: str = "hog", upsample: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.detector = cached_detector(detector, upsample, max_pixels)
        self.shape_predictor = cached_shape_predictor()

    def faces(self, image_bgr: np.ndarray, rgb: np.ndarray | None = None) -> list[FaceBox]:
        return self.detector(image_bgr, rgb)

    def mouth(self, image_bgr: np.ndarray, face: FaceBox, rgb: np.ndarray | None = None) -> MouthDetection:
        return MouthDetection(face, mouth_points(self.shape_predictor(image_bgr, face, rgb)))

    def __call__(self, image_bgr: np.ndarray) -> list[MouthDetection]:
        rgb = to_rgb(image_bgr)
        return [self.mouth(image_bgr, face, rgb) for face in self.faces(image_bgr, rgb)]


def nearest_mouth(detections: list[MouthDetection], lip_points: np.ndarray) -> MouthDetection | None:
    """The detection whose mouth centre is nearest the given lips, if within one mouth width of them."""
    if not detections:
        return None
    centre = np.asarray(lip_points, np.float64).mean(axis=0)
    width = float(np.ptp(np.asarray(lip_points, np.float64)[:, 0]))
    best = min(detections, key=lambda detection: float(np.linalg.norm(detection.mouth.mean(axis=0) - centre)))
    return best if np.linalg.norm(best.mouth.mean(axis=0) - centre) <= max(width, 1.0) else None


def detect_record_mouths(
    records: list,
    locator: DlibMouthLocator,
    desc: str = "dlib",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict[str, MouthDetection]:
    """For annotated records: the dlib detection matching each record's ground-truth mouth (missing = none).

    Records whose image cannot be used are skipped: the crops of the same records report them."""
    found = {}
    for record, image in read_record_images(records, [], max_pixels, desc, progress):
        match = nearest_mouth(locator(image), record.points[HELEN_LIPS])
        if match is not None:
            found[record.name] = match
    return found
