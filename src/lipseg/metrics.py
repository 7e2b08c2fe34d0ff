"""Segmentation and landmark metrics as EVALUATION.md defines them. Numbers only, no plotting.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lipseg.landmarks import (
    HELEN_LIPS,
    HELEN_NUM_POINTS,
    LIP_COUNT,
    inter_ocular,
    mouth_width,
    mouth_widths,
)
from lipseg.masks import MAX_ABS_COORD, label_mask_from_lips

CLASSES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("upper_lip", (1,)),
    ("inner_mouth", (2,)),
    ("lower_lip", (3,)),
    ("lips", (1, 3)),
    ("mouth", (1, 2, 3)),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
FAIL_THRESHOLD = 0.10
# lipeval stores per-image F1 rounded to this many decimals and averages the rounded values.
PER_IMAGE_F1_DECIMALS = 5


# ----------------------------------------------------------------------------------------------------
# Pixel metrics
def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator with 0/0 = 1.0: nothing to find and nothing predicted is a perfect score."""
    return numerator / denominator if denominator else 1.0


def f1_iou(tp: int, fp: int, fn: int) -> tuple[float, float]:
    """(F1, IoU) from pixel counts; 1.0 for both when the class is absent from prediction and GT."""
    return _ratio(2 * tp, 2 * tp + fp + fn), _ratio(tp, tp + fp + fn)


def class_counts(pred_mask: np.ndarray, gt_mask: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """(TP, FP, FN) pixel counts per class of `CLASSES` for one image."""
    pred_mask, gt_mask = np.asarray(pred_mask), np.asarray(gt_mask)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"prediction shape {pred_mask.shape} != ground truth shape {gt_mask.shape}")
    counts = {}
    for name, labels in CLASSES:
        in_gt = np.isin(gt_mask, labels)
        in_pred = np.isin(pred_mask, labels)
        true_pos = int(np.count_nonzero(in_gt & in_pred))
        false_pos = int(np.count_nonzero(in_pred & ~in_gt))
        false_neg = int(np.count_nonzero(in_gt & ~in_pred))
        counts[name] = (true_pos, false_pos, false_neg)
    return counts


@dataclass
class PixelCounts:
    """TP/FP/FN per class accumulated over images, plus each image's F1 per class.

    `add` one (prediction, ground truth) pair per image; `pooled` gives dataset-pooled scores and
    `mean_image_f1` the mean per-image F1, both as lipeval computes them.
    """

    tp: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES, 0))
    fp: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES, 0))
    fn: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASS_NAMES, 0))
    image_f1: list[dict[str, float]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.image_f1)

    def add(self, pred_mask: np.ndarray | None, gt_mask: np.ndarray) -> dict[str, float]:
        """Accumulate one image; `pred_mask=None` (no prediction) counts as an all-background mask.

        Returns the image's unrounded F1 per class.
        """
        gt_mask = np.asarray(gt_mask)
        if pred_mask is None:
            pred_mask = np.zeros_like(gt_mask)
        image_scores = {}
        for name, (true_pos, false_pos, false_neg) in class_counts(pred_mask, gt_mask).items():
            self.tp[name] += true_pos
            self.fp[name] += false_pos
            self.fn[name] += false_neg
            image_scores[name] = f1_iou(true_pos, false_pos, false_neg)[0]
        self.image_f1.append(image_scores)
        return image_scores

    def pooled(self) -> dict[str, dict[str, float | int]]:
        """Per class: f1, iou, precision, recall (0/0 = 1.0) and the summed tp, fp, fn."""
        result: dict[str, dict[str, float | int]] = {}
        for name in CLASS_NAMES:
            true_pos, false_pos, false_neg = self.tp[name], self.fp[name], self.fn[name]
            f1, iou = f1_iou(true_pos, false_pos, false_neg)
            result[name] = {
                "f1": f1,
                "iou": iou,
                "precision": _ratio(true_pos, true_pos + false_pos),
                "recall": _ratio(true_pos, true_pos + false_neg),
                "tp": true_pos,
                "fp": false_pos,
                "fn": false_neg,
            }
        return result

    def mean_image_f1(
        self, class_name: str = "lips", decimals: int | None = PER_IMAGE_F1_DECIMALS
    ) -> float | None:
        """Mean per-image F1 of a class; None with no images.

        Per-image values are rounded to `decimals` first because lipeval does so (its report keeps
        rounded per-image F1 and averages those); pass decimals=None for the unrounded mean.
        """
        if not self.image_f1:
            return None
        values = [scores[class_name] for scores in self.image_f1]
        if decimals is not None:
            values = [round(value, decimals) for value in values]
        return float(np.mean(values))


# ----------------------------------------------------------------------------------------------------
# Point metrics
def _as_batch(points: np.ndarray) -> np.ndarray:
    """(N, 2) -> (1, N, 2); (B, N, 2) unchanged; float64."""
    points = np.asarray(points, np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[-1] != 2:
        raise ValueError(f"expected (B, N, 2) or (N, 2) points, got {points.shape}")
    return points


def point_errors(pred_lips: np.ndarray, gt_lips: np.ndarray) -> np.ndarray:
    """Mean point-to-point (Euclidean) distance per image, in pixels: (B, N, 2) x2 -> (B,)."""
    pred, truth = _as_batch(pred_lips), _as_batch(gt_lips)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {truth.shape}")
    return np.linalg.norm(pred - truth, axis=2).mean(axis=1)


def inter_ocular_distances(points194: np.ndarray) -> np.ndarray:
    """Outer-eye-corner distance (Helen 124/144) per image: (B, 194, 2) or (194, 2) -> (B,)."""
    return np.array([inter_ocular(points) for points in _as_batch(points194)], np.float64)


def mouth_width_norms(gt_lips: np.ndarray) -> np.ndarray:
    """GT mouth width per image (58 to the farthest outer lip point): (B, 56, 2) or (56, 2) -> (B,)."""
    return mouth_widths(_as_batch(gt_lips))


def nme(pred_lips: np.ndarray, gt_lips: np.ndarray, norms: np.ndarray | float) -> np.ndarray:
    """Normalised mean error per image (B,). A zero normaliser gives NaN (lipeval: no value)."""
    errors = point_errors(pred_lips, gt_lips)
    norms = np.broadcast_to(np.asarray(norms, np.float64), errors.shape)
    out = np.full(errors.shape, np.nan)
    valid = norms != 0
    out[valid] = errors[valid] / norms[valid]
    return out


def failure_rate(nme_values: Sequence[float] | np.ndarray, threshold: float = FAIL_THRESHOLD) -> float:
    """Share of images with NME > threshold; 0.0 for no images.

    Encode an image without a usable prediction as np.inf: it is a failure, as lipeval counts it. NaN
    (no normaliser) is not a failure but stays in the denominator, again as in lipeval.
    """
    values = np.asarray(nme_values, np.float64).ravel()
    return float(np.count_nonzero(values > threshold)) / max(1, values.size)


def ced_curve(
    nme_values: Sequence[float] | np.ndarray, max_threshold: float = FAIL_THRESHOLD, steps: int = 101
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative error distribution: thresholds 0..max_threshold and the share of images with NME <= t.

    Non-finite values (no prediction) are never below a threshold, so the curve ends at
    1 - failure_rate(values, max_threshold) when there is no NaN.
    """
    values = np.asarray(nme_values, np.float64).ravel()
    thresholds = np.linspace(0.0, max_threshold, steps)
    if values.size == 0:
        return thresholds, np.zeros(steps)
    finite = np.sort(values[np.isfinite(values)])
    below = np.searchsorted(finite, thresholds, side="right") / values.size
    return thresholds, below


def auc_at(nme_values: Sequence[float] | np.ndarray, max_threshold: float = FAIL_THRESHOLD) -> float:
    """Area under the CED from 0 to max_threshold, divided by max_threshold (1.0 = every NME is 0).

    Computed exactly from the step-shaped CED: each image contributes (max_threshold - NME) clipped to
    [0, max_threshold], so the result does not depend on a sampling of thresholds (a trapezoid over
    `ced_curve` agrees to about 1/steps).
    """
    if max_threshold <= 0:
        raise ValueError("max_threshold must be > 0")
    values = np.asarray(nme_values, np.float64).ravel()
    if values.size == 0:
        return 0.0
    values = np.where(np.isfinite(values), values, np.inf)
    credit = np.clip(max_threshold - values, 0.0, max_threshold)
    return float(credit.mean() / max_threshold)


# ----------------------------------------------------------------------------------------------------
# Whole-split summary (lipeval's JSON report, computed in-process)
@dataclass(frozen=True)
class GroundTruthFace:
    """Helen-194 ground truth of one image: 194 points (image pixels) and the image size."""

    points: np.ndarray
    height: int
    width: int
    name: str = ""


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
            return "malformed", "png", None, None, f"size {mask.shape[1]}x{mask.shape[0]} != image " \
                                                   f"{truth.width}x{truth.height}"
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
                raise ValueError(
                    f"ground truth must be ({HELEN_NUM_POINTS}, 2) points, got {points.shape}")
            gt_lips = points[HELEN_LIPS]
            gt_mask = label_mask_from_lips(gt_lips, truth.height, truth.width, supersample)
        except ValueError as error:
            gt_errors.append({"name": name, "error": str(error)[:200]})
            continue
        try:
            status, source, pred_mask, lips, note = _resolve_prediction(
                prediction, truth, gt_lips, supersample)
        except Exception as error:  # a broken prediction is counted, never fatal (as in lipeval)
            status, source, pred_mask, lips, note = "malformed", "?", None, None, \
                f"{type(error).__name__}: {error}"[:200]
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
        for key, out_key in (("mean_io", "nme_io"), ("median_io", "nme_io_median"),
                             ("mean_mw", "nme_mw"), ("median_mw", "nme_mw_median"),
                             ("failure_rate", "failure_rate"), ("auc_io", "auc_io")):
            if nme_block.get(key) is not None:
                flat[out_key] = float(nme_block[key])
    flat["n_images"] = float(summary["n_images"])
    flat["n_no_prediction"] = float(summary["n_no_prediction"])
    return flat
