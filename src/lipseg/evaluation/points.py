"""Landmark metrics as EVALUATION.md defines them: NME (inter-ocular or mouth width), failure rate, CED.

NME is the mean over the 56 lip points of the point-to-point distance, divided per image by the
inter-ocular distance (outer eye corners 124/144) or the GT mouth width. The failure rate is the share of
images with NME_io above a threshold (FR@0.1) or without a usable prediction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipseg.data.landmarks import inter_ocular, mouth_widths

FAIL_THRESHOLD = 0.10


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
