"""Every mask source scored two ways: the face nearest the annotated mouth, and exactly what predict writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.segmentation.compare import LANDMARKS, compare_mask_sources


@dataclass
class Face:
    lips: np.ndarray


@dataclass
class Found:
    faces: list[Face]


class TwoFaces:
    """A stand-in predictor: the annotated lips, and a second mouth 40 px to the right (another face)."""

    def __init__(self, records: list):
        self.lips = {
            cv2.imread(str(record.image_path)).tobytes()[:4096]: record.points[HELEN_LIPS] for record in records
        }

    def predict(self, image: np.ndarray) -> Found:
        lips = self.lips[image.tobytes()[:4096]]
        return Found([Face(lips), Face(lips + np.float32([40.0, 0.0]))])


def test_predict_writes_every_face_and_that_is_scored_too(synthetic_dir: Path, tmp_path: Path) -> None:
    records = load_split(synthetic_dir, "test")[0][:3]
    comparison = compare_mask_sources(records, TwoFaces(records), {}, tmp_path / "pred", progress=False)
    nearest = comparison.nearest[LANDMARKS].summary()
    everyone = comparison.as_predicted[LANDMARKS].summary()
    assert nearest["f1_lips"] > 0.99  # the annotated face alone: the truth itself
    assert everyone["f1_lips"] < 0.8  # the second face's mouth is false positives
    written = cv2.imread(str(tmp_path / "pred" / "tcnn_landmarks" / f"{records[0].name}.png"), cv2.IMREAD_UNCHANGED)
    mouths, _ = cv2.connectedComponents((written > 0).astype(np.uint8))
    assert mouths - 1 == 2  # both mouths are in the PNG, as predict writes it
    assert comparison.no_face == 0
