"""Landmark index maps and lip-contour geometry (Helen 194 and iBUG 68). No I/O here.

Conventions: points are float32 arrays of shape (N, 2) in (x, y) image-pixel order, pixel centres at
integer coordinates. "Left"/"right" mean image sides.

Helen 194 lip layout (0-based, the 56 lip points are 58..113 in this order):
  58-71  upper lip outer contour, from the left mouth corner (58), left to right
  72-85  lower lip outer contour, right to left, ending next to 58
  86-99  upper lip inner contour, from the left inner corner (86), left to right
  100-113 lower lip inner contour, right to left
The right outer corner has no fixed index in Helen (it falls between 70 and 73), so a horizontal flip
cannot be an index permutation. `respace_lips` fixes that: it re-samples each of the four contours
evenly by arc length between the two corners, giving a canonical layout in which a flip is
"negate x, reverse each block" (`flip_lips`).
"""

from __future__ import annotations

import numpy as np

HELEN_NUM_POINTS = 194
IBUG_NUM_POINTS = 68
LIP_COUNT = 56
HELEN_LIPS = slice(58, 114)
HELEN_EYE_INNER = (114, 134)  # eye on the image right, eye on the image left
HELEN_EYE_OUTER = (124, 144)
IBUG_MOUTH = slice(48, 68)
IBUG_MOUTH_CORNERS = (48, 54)
IBUG_EYE_OUTER = (45, 36)  # image-right eye outer corner, image-left eye outer corner

# Block layout inside the 56 lip points.
OUTER = slice(0, 28)
INNER = slice(28, 56)
BLOCK = 14  # points per contour block (upper outer, lower outer, upper inner, lower inner)


def mouth_width(lips: np.ndarray) -> float:
    """Left corner (58) to the farthest outer lip point, i.e. the right corner (EVALUATION.md)."""
    outer = np.asarray(lips, np.float64)[OUTER]
    return float(np.linalg.norm(outer - outer[0], axis=1).max())


def mouth_widths(lips: np.ndarray) -> np.ndarray:
    """Vectorised `mouth_width` over a batch (B, 56, 2) -> (B,)."""
    outer = np.asarray(lips, np.float64)[:, OUTER]
    return np.linalg.norm(outer - outer[:, :1], axis=2).max(axis=1)


def inter_ocular(points194: np.ndarray) -> float:
    """Distance between the outer eye corners (Helen 124 and 144)."""
    p = np.asarray(points194, np.float64)
    return float(np.linalg.norm(p[HELEN_EYE_OUTER[0]] - p[HELEN_EYE_OUTER[1]]))


def _resample_polyline(poly: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Points at the given arc-length fractions (0 = first vertex, 1 = last) of a polyline."""
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    total = cum[-1]
    if total <= 1e-9:  # a degenerate contour (all points equal) stays where it is
        return np.repeat(poly[:1], len(fractions), axis=0)
    target = fractions * total
    x = np.interp(target, cum, poly[:, 0])
    y = np.interp(target, cum, poly[:, 1])
    return np.stack([x, y], axis=1)


def _respace_ring(ring: np.ndarray) -> np.ndarray:
    """28 points of one closed contour (start at the left corner) -> canonical 28 points.

    The right corner is the ring point farthest from the left corner. The upper arc gets 14 points
    including both corners; the lower arc (right to left) gets 14 points excluding both.
    """
    right = int(np.argmax(np.linalg.norm(ring - ring[0], axis=1)))
    upper_arc = ring[: right + 1]
    lower_arc = np.vstack([ring[right:], ring[:1]])
    upper = _resample_polyline(upper_arc, np.linspace(0.0, 1.0, BLOCK))
    lower = _resample_polyline(lower_arc, np.arange(1, BLOCK + 1) / (BLOCK + 1))
    return np.vstack([upper, lower])


def respace_lips(lips: np.ndarray) -> np.ndarray:
    """Canonical 56 lip points: each contour re-spaced by arc length between the two corners."""
    p = np.asarray(lips, np.float64)
    if p.shape != (LIP_COUNT, 2):
        raise ValueError(f"expected ({LIP_COUNT}, 2) lip points, got {p.shape}")
    return np.vstack([_respace_ring(p[OUTER]), _respace_ring(p[INNER])]).astype(np.float32)


def flip_permutation() -> np.ndarray:
    """Index permutation of canonical lip points under a horizontal flip: reverse each block."""
    return np.concatenate([np.arange(b * BLOCK, (b + 1) * BLOCK)[::-1] for b in range(4)])


def flip_lips(lips: np.ndarray, axis_x: float | np.ndarray = 0.0) -> np.ndarray:
    """Mirror canonical lip points about x = axis_x; works on (56, 2) or (B, 56, 2) (axis_x then (B, 1))."""
    p = np.array(lips, np.float32, copy=True)
    p[..., 0] = 2.0 * axis_x - p[..., 0]
    return p[..., flip_permutation(), :]


def annotation_axis(lips: np.ndarray, annotation_offset: float) -> np.ndarray:
    """Where to mirror lips (x, in their own units) so the mirrored points are what an annotator would
    have clicked on the mirrored image.

    Annotations can sit off the image content by a fixed share of the mouth width (`annotation_offset`,
    x; Helen's lie 1 % of the mouth width to the right). Mirroring about the content's axis would turn
    +offset into -offset, and a network trained on both would learn neither; mirroring about the axis
    shifted by the offset keeps the mirrored points in the annotation frame. Mouth centred at 0 (crop
    coordinates): (56, 2) -> scalar-like (1,), (B, 56, 2) -> (B, 1)."""
    p = np.asarray(lips, np.float64)
    widths = mouth_widths(p.reshape(-1, LIP_COUNT, 2))
    return (annotation_offset * widths).reshape(p.shape[:-2] + (1,)).astype(np.float32)
