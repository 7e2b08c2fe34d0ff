"""The whole-split report of EVALUATION.md (lipeval's JSON report, computed in-process), no plotting.

Everything here reproduces the official scorer (lipeval) exactly, so that numbers a pipeline stage writes
to metrics.json equal the ones lipeval reports; lipeval lives outside the project and may be absent,
which is why the rules are re-implemented rather than imported. The conventions that matter:

* pixel metrics are dataset-pooled: TP/FP/FN summed over all images, then F1 = 2TP / (2TP + FP + FN)
  and IoU = TP / (TP + FP + FN); 0/0 (class absent from both prediction and GT) counts as 1.0;
* the mean per-image F1 averages per-image F1 values rounded to 5 decimals (lipeval rounds them for its
  JSON report before averaging); an image without a prediction is scored against an empty mask, so it
  gets 0 when its GT is non-empty and 1.0 when the GT is empty too;
* NME is the mean over the 56 lip points of the point-to-point distance, divided per image by the
  inter-ocular distance (outer eye corners 124/144) or the GT mouth width, then averaged over images
  that have a usable point prediction; images without one are not in the mean but count as failures;
* failure rate = share of images with NME_io > threshold or without a usable prediction, over all
  scored images except those predicted as label masks (no points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipseg.core.images import image_size
from lipseg.data.helen import Record
from lipseg.data.landmarks import (
    HELEN_LIPS,
    HELEN_NUM_POINTS,
    LIP_COUNT,
    inter_ocular,
    mouth_width,
)
from lipseg.evaluation.masks import MAX_ABS_COORD, label_mask_from_lips
from lipseg.evaluation.pixels import CLASS_NAMES, PER_IMAGE_F1_DECIMALS, PixelCounts
from lipseg.evaluation.points import FAIL_THRESHOLD, auc_at, point_errors


@dataclass(frozen=True)
class GroundTruthFace:
    """Helen-194 ground truth of one image: 194 points (image pixels) and the image size."""

    points: np.ndarray
    height: int
    width: int
    name: str = ""


def face_truth(record: Record) -> GroundTruthFace:
    """A Helen record's ground truth, its image size read from the image header."""
    height, width = image_size(record.image_path)
    return GroundTruthFace(points=record.points, height=height, width=width, name=record.name)


FacePrediction = Sequence[np.ndarray] | np.ndarray | None


def _valid_face(face: Any) -> np.ndarray:
    """(56, 2) float64 lip points, or ValueError with the reason lipeval would give."""
    points = np.asarray(face, np.float64)
    if points.shape != (LIP_COUNT, 2):
        raise ValueError(f"lips must be ({LIP_COUNT}, 2) points, got {points.shape}")
    if not np.all(np.isfinite(points)) or np.abs(points).max() > MAX_ABS_COORD:
        raise ValueError("non-finite or absurd coordinates")
    return points


def pick_face(faces: Sequence[np.ndarray], gt_lips: np.ndarray) -> np.ndarray:
    """The face whose lip centroid is nearest the GT lip centroid (first one on ties)."""
    gt_centre = np.asarray(gt_lips, np.float64).mean(axis=0)
    return min(faces, key=lambda face: float(np.linalg.norm(face.mean(axis=0) - gt_centre)))


def _resolve_prediction(
    prediction: FacePrediction, truth: GroundTruthFace, gt_lips: np.ndarray, supersample: int
) -> tuple[str, str, np.ndarray | None, np.ndarray | None, str]:
    """-> (status, source, label mask or None, chosen lips or None, note), statuses as in lipeval."""
    if prediction is None:
        return "missing", "", None, None, ""
    if isinstance(prediction, np.ndarray) and prediction.ndim == 2:
        mask = prediction
        if mask.shape != (truth.height, truth.width):
            return (
                "malformed",
                "png",
                None,
                None,
                f"size {mask.shape[1]}x{mask.shape[0]} != image {truth.width}x{truth.height}",
            )
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 3):
            return "malformed", "png", None, None, "label value outside 0..3"
        return "ok", "png", mask.astype(np.uint8), None, ""
    faces_in = list(prediction)
    if not faces_in:
        return "no_face", "json", None, None, ""
    faces, problems = [], []
    for index, face in enumerate(faces_in):
        try:
            faces.append(_valid_face(face))
        except ValueError as error:
            problems.append(f"face {index}: {error}")
    if not faces:
        return "malformed", "json", None, None, "; ".join(problems)[:200]
    lips = pick_face(faces, gt_lips)
    mask = label_mask_from_lips(lips, truth.height, truth.width, supersample)
    note = ("; ".join(problems) + " (skipped)") if problems else ""
    return "ok", "json", mask, lips, note


def summarise(
    predictions: Sequence[FacePrediction],
    ground_truth: Sequence[GroundTruthFace],
    fail_threshold: float = FAIL_THRESHOLD,
    supersample: int = 4,
) -> dict[str, Any]:
    """lipeval's report for one split, computed in-process (same keys, same numbers).

    predictions[i] belongs to ground_truth[i] and is one of:
      * None: no prediction file (status "missing");
      * a list of faces, each (56, 2) lip points in image pixels (a JSON prediction); [] = "no_face";
        invalid faces are skipped, all invalid = "malformed"; the face nearest the GT mouth is scored;
      * a 2-D integer label mask of the image size (a PNG prediction; no points, not in NME/failures).
    Images whose ground truth is unusable are left out and listed under "gt_errors".

    Keys: settings, n_names, n_images, counts, n_no_prediction, pooled (per class f1, iou, tp, fp, fn,
    plus precision and recall), mean_image_f1_lips, nme (n_scored, n_png_not_scored, mean_io, median_io,
    mean_mw, median_mw, failure_rate, n_fail; None when no image has a JSON-style prediction),
    gt_errors, problems, per_image. Also `auc_io` (AUC of the NME_io CED up to the threshold, no-
    prediction images as failures), which lipeval does not report.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} ground-truth images")
    pixel_counts = PixelCounts()
    counts = {"ok": 0, "missing": 0, "no_face": 0, "malformed": 0}
    per_image: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    gt_errors: list[dict[str, str]] = []
    nme_io_values: list[float] = []
    nme_mw_values: list[float] = []
    # One entry per image with points expected: NME_io, inf = no usable prediction, NaN = no normaliser.
    failure_values: list[float] = []

    for index, (prediction, truth) in enumerate(zip(predictions, ground_truth)):
        name = truth.name or str(index)
        try:
            points = np.asarray(truth.points, np.float64)
            if points.shape != (HELEN_NUM_POINTS, 2):
                raise ValueError(f"ground truth must be ({HELEN_NUM_POINTS}, 2) points, got {points.shape}")
            gt_lips = points[HELEN_LIPS]
            gt_mask = label_mask_from_lips(gt_lips, truth.height, truth.width, supersample)
        except ValueError as error:
            gt_errors.append({"name": name, "error": str(error)[:200]})
            continue
        try:
            status, source, pred_mask, lips, note = _resolve_prediction(prediction, truth, gt_lips, supersample)
        except Exception as error:  # a broken prediction is counted, never fatal (as in lipeval)
            status, source, pred_mask, lips, note = (
                "malformed",
                "?",
                None,
                None,
                f"{type(error).__name__}: {error}"[:200],
            )
        counts[status] += 1
        if status != "ok":
            problems.append({"name": name, "status": status, "source": source, "note": note})
        elif note:
            problems.append({"name": name, "status": "warning", "source": source, "note": note})

        image_f1 = pixel_counts.add(pred_mask, gt_mask)
        record: dict[str, Any] = {
            "name": name,
            "status": status,
            "source": source,
            "f1": {cls: round(value, PER_IMAGE_F1_DECIMALS) for cls, value in image_f1.items()},
        }
        if lips is not None:
            iod = inter_ocular(points)
            width = mouth_width(gt_lips)
            error_px = float(point_errors(lips, gt_lips)[0])
            record["nme_io"] = error_px / iod if iod else None
            record["nme_mw"] = error_px / width if width else None
            if record["nme_io"] is not None:
                nme_io_values.append(record["nme_io"])
                failure_values.append(record["nme_io"])
            else:
                failure_values.append(np.nan)
            if record["nme_mw"] is not None:
                nme_mw_values.append(record["nme_mw"])
        elif status != "ok":
            failure_values.append(np.inf)
        per_image.append(record)

    n_images = len(per_image)
    n_png = sum(r["source"] == "png" and r["status"] == "ok" for r in per_image)
    summary: dict[str, Any] = {
        "settings": {"supersampling": supersample, "fail_thr_nme_io": fail_threshold},
        "n_names": len(ground_truth),
        "n_images": n_images,
        "counts": counts,
        "n_no_prediction": counts["missing"] + counts["no_face"] + counts["malformed"],
        "pooled": pixel_counts.pooled(),
        "mean_image_f1_lips": pixel_counts.mean_image_f1("lips"),
        "nme": None,
        "gt_errors": gt_errors,
        "problems": problems,
        "per_image": per_image,
    }
    if any(r["source"] == "json" for r in per_image):
        n_fail = int(np.count_nonzero(np.asarray(failure_values) > fail_threshold))
        summary["nme"] = {
            "n_scored": len(nme_io_values),
            "n_png_not_scored": n_png,
            "mean_io": float(np.mean(nme_io_values)) if nme_io_values else None,
            "median_io": float(np.median(nme_io_values)) if nme_io_values else None,
            "mean_mw": float(np.mean(nme_mw_values)) if nme_mw_values else None,
            "median_mw": float(np.median(nme_mw_values)) if nme_mw_values else None,
            # Denominator = images expected to have points (every image but PNG-style predictions).
            "failure_rate": n_fail / max(1, n_images - n_png),
            "n_fail": n_fail,
            "auc_io": auc_at(failure_values, fail_threshold) if failure_values else None,
            "note": "NME over 56 lip points of JSON predictions; failure = NME_io > thr or no prediction; "
            "PNG predictions have no points and are left out",
        }
    return summary


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Flat {name: number} view of a `summarise` result, for DVC metrics.json / MLflow log_metrics."""
    flat: dict[str, float] = {}
    for name in CLASS_NAMES:
        flat[f"f1_{name}"] = float(summary["pooled"][name]["f1"])
        flat[f"iou_{name}"] = float(summary["pooled"][name]["iou"])
    if summary["mean_image_f1_lips"] is not None:
        flat["mean_image_f1_lips"] = float(summary["mean_image_f1_lips"])
    nme_block = summary.get("nme")
    if nme_block:
        for key, out_key in (
            ("mean_io", "nme_io"),
            ("median_io", "nme_io_median"),
            ("mean_mw", "nme_mw"),
            ("median_mw", "nme_mw_median"),
            ("failure_rate", "failure_rate"),
            ("auc_io", "auc_io"),
        ):
            if nme_block.get(key) is not None:
                flat[out_key] = float(nme_block[key])
    flat["n_images"] = float(summary["n_images"])
    flat["n_no_prediction"] = float(summary["n_no_prediction"])
    return flat
