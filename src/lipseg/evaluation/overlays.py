"""What people look at: label masks blended into photos with the lip contours drawn, mouth close-ups and
captioned montages (reports, MLflow artifacts, `lipseg predict` overlays)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from lipseg.data.labels import INNER_MOUTH, LOWER_LIP, UPPER_LIP
from lipseg.data.landmarks import INNER, LIP_COUNT, OUTER
from lipseg.evaluation.masks import FILL_SCALE, FILL_SHIFT

# BGR colours (OpenCV order) for overlays; background is never painted.
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    UPPER_LIP: (60, 60, 230),  # red
    INNER_MOUTH: (230, 200, 40),  # cyan-blue
    LOWER_LIP: (60, 200, 60),  # green
}
POINT_COLOUR: tuple[int, int, int] = (0, 255, 255)  # yellow dots for landmarks
CONTOUR_COLOUR: tuple[int, int, int] = (255, 255, 255)  # white contour lines


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
        faces = (
            points.reshape(-1, LIP_COUNT, 2)
            if points.size and points.size % (LIP_COUNT * 2) == 0 and points.shape[-1:] == (2,)
            else []
        )
        scale = FILL_SCALE
        for face in faces:
            if not np.all(np.isfinite(face)):
                continue
            # Sub-pixel drawing (shift) so the lines sit where the points are, not 0.5 px off.
            for contour in (face[OUTER], face[INNER]):
                vertices = np.round(contour * scale).astype(np.int32).reshape(-1, 1, 2)
                cv2.polylines(canvas, [vertices], True, CONTOUR_COLOUR, 1, cv2.LINE_AA, FILL_SHIFT)
            for x, y in face:
                centre = (int(round(x * scale)), int(round(y * scale)))
                cv2.circle(canvas, centre, scale, POINT_COLOUR, -1, cv2.LINE_AA, FILL_SHIFT)
    return canvas


def crop_around(image: np.ndarray, points: np.ndarray, margin: float = 0.4) -> tuple[np.ndarray, tuple[int, int]]:
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
        cell[off_y : off_y + new_h, off_x : off_x + new_w] = resized
        if captions is not None and captions[index]:
            _draw_caption(cell, captions[index])
        row, column = divmod(index, columns)
        grid[row * tile_size : (row + 1) * tile_size, column * tile_size : (column + 1) * tile_size] = cell
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
    cell[size - band_h :] = (cell[size - band_h :] * 0.35).astype(np.uint8)
    cv2.putText(cell, text, (2, size - baseline - 2), font, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
