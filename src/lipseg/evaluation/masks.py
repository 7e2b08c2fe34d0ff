"""Lip landmarks -> label masks, by the rule the official scorer uses. No metrics, no drawing for people.

The mask rule is the one EVALUATION.md defines (and that the official scorer, lipeval, implements), so
that masks drawn here give the same pixels the scorer will compare against:

* three polygons per face (upper lip, inner mouth, lower lip) that tile the outer lip contour;
* pixel centres at integer coordinates;
* each polygon filled with ``cv2.fillPoly`` (sub-pixel vertices, ``shift=4``) on a ``supersample``-times
  finer grid restricted to the mouth's bounding box, then averaged back to pixels;
* a pixel is mouth if at least half of it lies in the union of the three polygons, and its class is
  the polygon covering most of it (ties go to upper lip, then inner mouth, then lower lip).

Labels: 0 background, 1 upper lip, 2 inner mouth, 3 lower lip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from lipseg.data.labels import BACKGROUND
from lipseg.data.landmarks import BLOCK, INNER, LIP_COUNT, OUTER

# Coordinates beyond this are treated as garbage (same bound as lipeval): filling a polygon that spans
# millions of pixels would only allocate memory for nothing.
MAX_ABS_COORD = 1e6
# cv2.fillPoly's `shift`: vertices carry 4 fractional bits (1/16 pixel of the supersampled grid).
FILL_SHIFT = 4
FILL_SCALE = 1 << FILL_SHIFT


# ----------------------------------------------------------------------------------------------------
# Polygons
def lip_polygons(lip_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper lip, inner mouth, lower lip) polygons from the 56 Helen lip points (58..113 order).

    The outer contour (58..85) and inner contour (86..113) are cut into upper and lower lip at the left
    corner (outer 58 -> inner 86) and at the right corner, which Helen gives no fixed index: we use the
    midpoint R of outer 71/72 and the midpoint r of inner 99/100. Upper = 58..71, R, r, 99..86;
    lower = R, 72..85, 58, 86, 113..100, r; inner = 86..113. The three polygons therefore tile the
    outer contour without gaps, and a closed mouth (inner contour collapsed) gives an empty inner mouth.
    """
    points = np.asarray(lip_points, dtype=np.float64)
    if points.shape != (LIP_COUNT, 2):
        raise ValueError(f"expected ({LIP_COUNT}, 2) lip points, got {points.shape}")
    outer, inner = points[OUTER], points[INNER]
    right_outer = (outer[BLOCK - 1] + outer[BLOCK]) / 2.0  # between 71 and 72
    right_inner = (inner[BLOCK - 1] + inner[BLOCK]) / 2.0  # between 99 and 100
    upper = np.vstack([outer[:BLOCK], right_outer, right_inner, inner[BLOCK - 1 :: -1]])
    lower = np.vstack([right_outer, outer[BLOCK:], outer[0], inner[0], inner[: BLOCK - 1 : -1], right_inner])
    return upper, inner.copy(), lower


def ibug_mouth_polygons(mouth_points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper lip, inner mouth, lower lip) polygons from the 20 iBUG-68 mouth points (48..67 order).

    Upper = 48..54, 64..60; lower = 54..59, 48, 60, 67..64; inner = 60..67 (EVALUATION.md).
    """
    points = np.asarray(mouth_points, dtype=np.float64)
    if points.shape != (20, 2):
        raise ValueError(f"expected (20, 2) mouth points, got {points.shape}")
    outer, inner = points[:12], points[12:]
    upper = np.vstack([outer[0:7], inner[4::-1]])
    lower = np.vstack([outer[6:12], outer[0], inner[0], inner[7:3:-1]])
    return upper, inner.copy(), lower


# ----------------------------------------------------------------------------------------------------
# Rasterisation
def rasterise_polygons(polygons: Sequence[np.ndarray], height: int, width: int, supersample: int = 4) -> np.ndarray:
    """uint8 label mask (height, width) from (upper, inner, lower) polygons in image pixel coordinates.

    Labels are 1 + the polygon's position in `polygons`. Identical to lipeval's rule (see the module
    docstring). Only the mouth's bounding box (plus a 1-2 pixel border) is supersampled, so the cost
    does not grow with the image size. `supersample=1` is plain fillPoly.

    Raises ValueError on non-finite or absurd (|v| > 1e6) coordinates: such a prediction is unusable and
    must be reported, not silently drawn as nothing.
    """
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    mask = np.zeros((height, width), np.uint8)
    polygon_list = [np.asarray(polygon, np.float64).reshape(-1, 2) for polygon in polygons]
    if not polygon_list:
        return mask
    all_points = np.vstack(polygon_list)
    if all_points.size == 0:
        return mask
    if not np.all(np.isfinite(all_points)) or np.abs(all_points).max() > MAX_ABS_COORD:
        raise ValueError("non-finite or absurd polygon coordinates")

    # Bounding box of the mouth in whole pixels, with a small border, clipped to the image.
    box_x0 = int(max(0, math.floor(all_points[:, 0].min()) - 1))
    box_y0 = int(max(0, math.floor(all_points[:, 1].min()) - 1))
    box_x1 = int(min(width, math.ceil(all_points[:, 0].max()) + 2))
    box_y1 = int(min(height, math.ceil(all_points[:, 1].max()) + 2))
    if box_x1 <= box_x0 or box_y1 <= box_y0:
        return mask  # the mouth lies entirely outside the image
    box_w, box_h = box_x1 - box_x0, box_y1 - box_y0

    fine_shape = (box_h * supersample, box_w * supersample)
    union_fine = np.zeros(fine_shape, np.uint8)
    # Sub-pixel hit counts per polygon and pixel; integers, so ties between classes are exact.
    polygon_hits = np.zeros((len(polygon_list), box_h, box_w), np.int64)
    for index, polygon in enumerate(polygon_list):
        if len(polygon) == 0:
            continue  # an absent polygon covers nothing (fillPoly would reject it)
        canvas = np.zeros(fine_shape, np.uint8)
        # Pixel (i, j) of the box covers [j - 0.5, j + 0.5); on the fine grid its sub-pixel centres are
        # at supersample * (j + 0.5) - 0.5 + k, hence this mapping.
        fine = ((polygon - (box_x0, box_y0)) + 0.5) * supersample - 0.5
        vertices = np.round(fine * FILL_SCALE).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [vertices], 1, lineType=cv2.LINE_8, shift=FILL_SHIFT)
        union_fine |= canvas
        polygon_hits[index] = _block_sum(canvas, box_h, box_w, supersample)
    union_hits = _block_sum(union_fine, box_h, box_w, supersample)

    labels = (np.argmax(polygon_hits, axis=0) + 1).astype(np.uint8)  # argmax keeps the first on ties
    # "At least half covered": hits / supersample**2 >= 0.5, in integers.
    labels[2 * union_hits < supersample * supersample] = BACKGROUND
    mask[box_y0:box_y1, box_x0:box_x1] = labels
    return mask


def _block_sum(fine: np.ndarray, height: int, width: int, supersample: int) -> np.ndarray:
    """Sum of each supersample x supersample block of a fine grid -> (height, width) int64."""
    return fine.reshape(height, supersample, width, supersample).sum(axis=(1, 3), dtype=np.int64)


def label_mask_from_lips(lip_points: np.ndarray, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """Label mask of one face from its 56 Helen lip points (image pixel coordinates)."""
    return rasterise_polygons(lip_polygons(lip_points), height, width, supersample)


def label_mask_from_faces(
    faces_lip_points: Sequence[np.ndarray], height: int, width: int, supersample: int = 4
) -> np.ndarray:
    """One label mask for several faces (e.g. a group photo).

    Faces are drawn in order and an earlier face keeps its pixels where two faces overlap, so a
    confident first detection is not overwritten by a later, usually smaller, one.
    """
    mask = np.zeros((height, width), np.uint8)
    for lip_points in faces_lip_points:
        face_mask = label_mask_from_lips(lip_points, height, width, supersample)
        free = mask == BACKGROUND
        mask[free] = face_mask[free]
    return mask
