"""Pixel metrics of label masks as EVALUATION.md defines them, equal to the official scorer's (lipeval).

Dataset-pooled: TP/FP/FN summed over all images, then F1 = 2TP / (2TP + FP + FN) and IoU =
TP / (TP + FP + FN); 0/0 (class absent from both prediction and GT) counts as 1.0. The mean per-image F1
averages per-image F1 values rounded to 5 decimals (lipeval rounds them for its JSON report first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lipseg.data.labels import INNER_MOUTH, LOWER_LIP, UPPER_LIP

CLASSES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("upper_lip", (UPPER_LIP,)),
    ("inner_mouth", (INNER_MOUTH,)),
    ("lower_lip", (LOWER_LIP,)),
    ("lips", (UPPER_LIP, LOWER_LIP)),
    ("mouth", (UPPER_LIP, INNER_MOUTH, LOWER_LIP)),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASSES)
# lipeval stores per-image F1 rounded to this many decimals and averages the rounded values.
PER_IMAGE_F1_DECIMALS = 5


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

    def mean_image_f1(self, class_name: str = "lips", decimals: int | None = PER_IMAGE_F1_DECIMALS) -> float | None:
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
