"""Scoring crop predictions as lipeval would, faces without a crop included as failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipseg.data.geometry import CropGeometry
from lipseg.data.helen import load_split
from lipseg.evaluation.report import face_truth
from lipseg.tcnn.crops import make_crops
from lipseg.tcnn.predict import CropPredictions
from lipseg.tcnn.scoring import ground_truth_for, score


def test_faces_the_detector_missed_count_as_failures(synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "test")
    crops = make_crops(records[:4], CropGeometry(), None, progress=False)
    perfect = CropPredictions(crops.lips.copy(), np.full(len(crops), -1))  # the (re-spaced) truth itself
    truth = ground_truth_for(crops, {record.name: record for record in records})
    all_found = score(perfect, crops, truth, 0.1)
    missed = [face_truth(record) for record in records[4:6]]
    two_missed = score(perfect, crops, truth, 0.1, missed)
    assert all_found.summary["nme"]["failure_rate"] == 0.0 and all_found.summary["pooled"]["lips"]["f1"] > 0.95
    assert two_missed.summary["n_images"] == 6 and two_missed.summary["counts"]["no_face"] == 2
    assert two_missed.summary["nme"]["failure_rate"] == 2 / 6 and two_missed.headline["failure_rate"] == 2 / 6
    assert two_missed.summary["pooled"]["lips"]["f1"] < all_found.summary["pooled"]["lips"]["f1"] - 0.1
