"""Scoring a folder of prediction files (what `lipseg predict` writes) against Helen ground truth, as the
official scorer (lipeval) does: one `<name>.png` label mask per photo, or the `<name>.json` lips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from lipseg.data.helen import Record
from lipseg.evaluation.report import face_truth, headline_metrics, summarise


def read_prediction(folder: Path, name: str, kind: Literal["png", "json"]) -> Any:
    """A photo's prediction as `summarise` takes it: a label mask, a list of lip arrays, or None when the
    file is missing or unreadable (lipeval counts those as empty predictions)."""
    path = Path(folder) / f"{name}.{kind}"
    if not path.is_file():
        return None
    if kind == "png":
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if mask is None or mask.ndim != 2 else mask
    try:
        faces = json.loads(path.read_text(encoding="utf-8"))["faces"]
        return [np.asarray(face["lips"], np.float64) for face in faces]
    except (ValueError, KeyError, TypeError):
        return None


def score_folder(
    folder: Path, records: list[Record], kind: Literal["png", "json"] = "png", fail_threshold: float = 0.1
) -> dict[str, Any]:
    """lipeval's report for the predictions in `folder` of `records`' photos, with its headline figures."""
    summary = summarise(
        [read_prediction(folder, record.name, kind) for record in records],
        [face_truth(record) for record in records],
        fail_threshold=fail_threshold,
    )
    return {"headline": headline_metrics(summary), "summary": summary}
