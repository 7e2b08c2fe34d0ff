"""Scoring prediction folders: the label masks cut down to the annotated face match what a baseline that
draws only that face would write, and score as lipeval scores them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from lipseg.core.images import image_size
from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.masks import label_mask_from_faces, label_mask_from_lips
from lipseg.evaluation.outputs import annotated_face_masks, score_folder


def test_only_the_annotated_face_is_kept(tmp_path: Path, synthetic_dir: Path) -> None:
    records = load_split(synthetic_dir, "test")[0][:3]
    predictions, expected = tmp_path / "pred", {}
    predictions.mkdir()
    for index, record in enumerate(records):
        height, width = image_size(record.image_path)
        annotated = record.points[HELEN_LIPS].astype(np.float64)
        # a second person beside the annotated one (left or right, whichever side has room)
        other = annotated + [-35.0 if annotated[:, 0].mean() > width / 2 else 35.0, 0.0]
        faces = [other, annotated] if index % 2 else [annotated, other]  # the annotated one in either place
        mask = label_mask_from_faces(faces, height, width)
        cv2.imwrite(str(predictions / f"{record.name}.png"), mask)
        (predictions / f"{record.name}.json").write_text(json.dumps({"faces": [{"lips": f.tolist()} for f in faces]}))
        expected[record.name] = label_mask_from_lips(annotated, height, width)
        assert (mask != expected[record.name]).any()  # the other face is drawn

    trimmed = annotated_face_masks(predictions, records, tmp_path / "annotated")

    assert trimmed == len(records)
    for record in records:
        kept = cv2.imread(str(tmp_path / "annotated" / f"{record.name}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(kept, expected[record.name])
    every_face = score_folder(predictions, records, "png")["headline"]
    annotated_only = score_folder(tmp_path / "annotated", records, "png")["headline"]
    assert annotated_only["f1_lips"] > 0.99 > every_face["f1_lips"]  # the other face's pixels were false positives
