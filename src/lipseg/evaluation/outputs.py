"""Scoring a folder of prediction files (what `lipseg predict` writes) against Helen ground truth, as the
official scorer (lipeval) does: one `<name>.png` label mask per photo, or the `<name>.json` lips; and the
label masks cut down to the face the annotation is of (the protocol of the MediaPipe and dlib baselines)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from lipseg.core.files import write_png_atomic
from lipseg.data.helen import Record
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.report import face_truth, headline_metrics, pick_face, summarise


def read_prediction(folder: Path, name: str, kind: Literal["png", "json"]) -> Any:
    """A photo's prediction as `summarise` takes it: a label mask, a list of lip arrays, or None when the
    file is missing or unreadable (lipeval counts those as empty predictions)."""
    path = Path(folder) / f"{name}.{kind}"
    if not path.is_file():
        return None
    if kind == "png":
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is not None and mask.ndim == 3:
            # OpenCV expands a palette PNG (`lipseg predict`'s default) to colours; its indices are the labels.
            from PIL import Image

            with Image.open(path) as image:
                mask = np.asarray(image) if image.mode == "P" else None
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


def annotated_face_masks(folder: Path, records: list[Record], out: Path) -> int:
    """Writes to `out` each photo's `<name>.png` from `folder` keeping only the face the ground truth
    annotates: the JSON face whose lip centroid is nearest the annotated one (lipeval's rule for JSON), its
    pixels being those nearer its lip points than any other face's. Helen annotates one face per photo; the
    MediaPipe and dlib baselines draw only that face, where `lipseg predict` draws every face it finds, so
    this is the like-for-like comparison. Returns the number of photos where another face was removed."""
    out.mkdir(parents=True, exist_ok=True)
    trimmed = 0
    for record in records:
        mask = read_prediction(folder, record.name, "png")
        faces = read_prediction(folder, record.name, "json")
        if mask is None or faces is None:
            continue
        if len(faces) > 1:
            keep = pick_face(faces, record.points[HELEN_LIPS])
            rows, cols = np.nonzero(mask)
            pixels = np.stack([cols, rows], axis=1).astype(np.float64)  # (P, 2) as (x, y)
            # (P, F): each labelled pixel's distance to the nearest lip point of each face
            distances = np.stack(
                [np.linalg.norm(pixels[:, None] - face[None], axis=2).min(axis=1) for face in faces], 1
            )
            owner = distances.argmin(axis=1)
            index = next(i for i, face in enumerate(faces) if face is keep)
            mask = mask.copy()
            mask[rows[owner != index], cols[owner != index]] = 0
            trimmed += 1
        write_png_atomic(out / f"{record.name}.png", mask)
    return trimmed
