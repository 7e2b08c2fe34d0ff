"""Lip landmarks -> label masks, and overlays of those masks for reports. No metrics here.

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

from lipseg.landmarks import BLOCK, INNER, LIP_COUNT, OUTER

LABELS: dict[int, str] = {0: "background", 1: "upper_lip", 2: "inner_mouth", 3: "lower_lip"}
BACKGROUND, UPPER_LIP, INNER_MOUTH, LOWER_LIP = 0, 1, 2, 3

# BGR colours (OpenCV order) for overlays; background is never painted.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    UPPER_LIP: (60, 60, 230),     # red
    INNER_MOUTH: (230, 200, 40),  # cyan-blue
    LOWER_LIP: (60, 200, 60),     # green
}
POINT_COLOUR: tuple[int, int, int] = (0, 255, 255)      # yellow dots for landmarks
CONTOUR_COLOUR: tuple[int, int, int] = (255, 255, 255)  # white contour lines

# Coordinates beyond this are treated as garbage (same bound as lipeval): filling a polygon that spans
# millions of pixels would only allocate memory for nothing.
MAX_ABS_COORD = 1e6
# cv2.fillPoly's `shift`: vertices carry 4 fractional bits (1/16 pixel of the supersampled grid).
_FILL_SHIFT = 4
_FILL_SCALE = 1 << _FILL_SHIFT


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
    right_outer = (outer[BLOCK - 1] + outer[BLOCK]) / 2.0   # between 71 and 72
    right_inner = (inner[BLOCK - 1] + inner[BLOCK]) / 2.0   # between 99 and 100
    upper = np.vstack([outer[:BLOCK], right_outer, right_inner, inner[BLOCK - 1::-1]])
    lower = np.vstack([right_outer, outer[BLOCK:], outer[0], inner[0], inner[:BLOCK - 1:-1], right_inner])
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
def rasterise_polygons(
    polygons: Sequence[np.ndarray], height: int, width: int, supersample: int = 4
) -> np.ndarray:
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
        vertices = np.round(fine * _FILL_SCALE).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [vertices], 1, lineType=cv2.LINE_8, shift=_FILL_SHIFT)
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


def label_mask_from_lips(
    lip_points: np.ndarray, height: int, width: int, supersample: int = 4
) -> np.ndarray:
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


# ----------------------------------------------------------------------------------------------------
# Overlays
def _as_bgr(image: np.ndarray) -> np.ndarray:
    """uint8 BGR copy of a grey, BGR or BGRA image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image.copy()


def overlay(
    image_bgr: np.ndarray,
    label_mask: np.ndarray,
    lip_points: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """Image with the mask's classes blended in colour, plus lip contours and points when given
    (`lip_points`: one face (56, 2) or several (F, 56, 2)).

    Returns a new uint8 BGR image of the same height and width (a grey input comes back as BGR);
    pixels are changed only where the mask is non-zero or where contours/points are drawn.
    """
    canvas = _as_bgr(image_bgr)
    label_mask = np.asarray(label_mask)
    if label_mask.shape != canvas.shape[:2]:
        raise ValueError(f"mask shape {label_mask.shape} != image shape {canvas.shape[:2]}")
    colour_layer = np.zeros_like(canvas)
    for label, colour in CLASS_COLOURS.items():
        colour_layer[label_mask == label] = colour
    painted = label_mask > 0
    if np.any(painted):
        blended = cv2.addWeighted(canvas, 1.0 - alpha, colour_layer, alpha, 0.0)
        canvas[painted] = blended[painted]
    if lip_points is not None:
        points = np.asarray(lip_points, np.float64)
        # One face (56, 2) or several (F, 56, 2); anything else is not drawn.
        faces = points.reshape(-1, LIP_COUNT, 2) if points.size and points.size % (LIP_COUNT * 2) == 0 and points.shape[-1:] == (2,) else []
        scale = _FILL_SCALE
        for face in faces:
            if not np.all(np.isfinite(face)):
                continue
            # Sub-pixel drawing (shift) so the lines sit where the points are, not 0.5 px off.
            for contour in (face[OUTER], face[INNER]):
                vertices = np.round(contour * scale).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(canvas, [vertices], True, CONTOUR_COLOUR, 1, cv2.LINE_AA, _FILL_SHIFT)
            for x, y in face:
                centre = (int(round(x * scale)), int(round(y * scale)))
                cv2.circle(canvas, centre, scale, POINT_COLOUR, -1, cv2.LINE_AA, _FILL_SHIFT)
    return canvas


def crop_around(
    image: np.ndarray, points: np.ndarray, margin: float = 0.4
) -> tuple[np.ndarray, tuple[int, int]]:
    """Square crop centred on the points' bounding box, `margin` x its larger side added on each side.

    Zooming on the mouth keeps a report grid readable. Returns (crop, (x0, y0)); subtract (x0, y0) from
    points to draw them on the crop. The crop is clipped to the image, so it may be non-square at borders.
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    height, width = image.shape[:2]
    finite = points[np.all(np.isfinite(points), axis=1)]
    if finite.size == 0:
        return image.copy(), (0, 0)
    (min_x, min_y), (max_x, max_y) = finite.min(axis=0), finite.max(axis=0)
    centre_x, centre_y = (min_x + max_x) / 2.0, (min_y + max_y) / 2.0
    half = max(max_x - min_x, max_y - min_y, 1.0) * (0.5 + margin)
    x0 = int(np.clip(math.floor(centre_x - half), 0, width - 1))
    y0 = int(np.clip(math.floor(centre_y - half), 0, height - 1))
    x1 = int(np.clip(math.ceil(centre_x + half) + 1, x0 + 1, width))
    y1 = int(np.clip(math.ceil(centre_y + half) + 1, y0 + 1, height))
    return image[y0:y1, x0:x1].copy(), (x0, y0)


def overlay_grid(
    tiles: list[np.ndarray],
    columns: int,
    tile_size: int,
    captions: list[str] | None = None,
) -> np.ndarray:
    """Montage of tiles (rows x columns), each letterboxed into tile_size x tile_size, with captions.

    Output is uint8 BGR of shape (rows * tile_size, columns * tile_size, 3) with rows = ceil(n / columns)
    (at least 1). Captions are drawn with cv2.putText on a dark band at the bottom of each tile.
    """
    if columns < 1 or tile_size < 1:
        raise ValueError("columns and tile_size must be >= 1")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"{len(captions)} captions for {len(tiles)} tiles")
    rows = max(1, math.ceil(len(tiles) / columns))
    grid = np.zeros((rows * tile_size, columns * tile_size, 3), np.uint8)
    for index, tile in enumerate(tiles):
        tile_bgr = _as_bgr(tile)
        tile_h, tile_w = tile_bgr.shape[:2]
        if tile_h == 0 or tile_w == 0:
            continue
        scale = tile_size / max(tile_h, tile_w)
        new_w = max(1, min(tile_size, round(tile_w * scale)))
        new_h = max(1, min(tile_size, round(tile_h * scale)))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(tile_bgr, (new_w, new_h), interpolation=interpolation)
        cell = np.zeros((tile_size, tile_size, 3), np.uint8)
        off_y, off_x = (tile_size - new_h) // 2, (tile_size - new_w) // 2
        cell[off_y:off_y + new_h, off_x:off_x + new_w] = resized
        if captions is not None and captions[index]:
            _draw_caption(cell, captions[index])
        row, column = divmod(index, columns)
        grid[row * tile_size:(row + 1) * tile_size, column * tile_size:(column + 1) * tile_size] = cell
    return grid


def _draw_caption(cell: np.ndarray, text: str) -> None:
    """Caption on a dark band at the bottom of a square cell, font scaled to the cell size."""
    size = cell.shape[0]
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = max(0.3, size / 400.0)
    thickness = 1
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    # Shrink long captions so they fit the width.
    if text_w > size - 4:
        font_scale *= (size - 4) / text_w
        (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    band_h = min(size, text_h + baseline + 4)
    cell[size - band_h:] = (cell[size - band_h:] * 0.35).astype(np.uint8)
    cv2.putText(cell, text, (2, size - baseline - 2), font, font_scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
