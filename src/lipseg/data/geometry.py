"""Crop geometry: a square around the lips, warped to a small fixed-size crop, and back.

The same rule serves training (box from ground-truth lips) and deployment (box from a detector's
mouth points), so the model never sees two different framings. The box side scales with the mouth
size, not with a fixed number of pixels, so a face's distance to the camera does not change the crop.

Coordinates: `points_in_crop` are normalised crop coordinates, (0, 0) at the crop centre and the crop
spanning [-0.5, 0.5) on both axes; pixel centres are at integer image coordinates throughout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from lipseg.data.landmarks import OUTER


@dataclass(frozen=True)
class CropGeometry:
    size: int = 40
    margin: float = 0.35  # extra space on each side, as a fraction of the mouth extent

    def box(self, lip_points: np.ndarray) -> tuple[np.ndarray, float]:
        """(centre (2,), side) of the square around the outer lip contour (or any mouth points)."""
        points = np.asarray(lip_points, np.float64)
        outer = points[OUTER] if len(points) == 56 else points
        low, high = outer.min(axis=0), outer.max(axis=0)
        extent = float(max(high[0] - low[0], high[1] - low[1], 1.0))
        return (low + high) / 2.0, extent * (1.0 + 2.0 * self.margin)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def image_to_crop_transform(centre: np.ndarray, side: float, angle_rad: float = 0.0, flip: bool = False) -> np.ndarray:
    """(2, 3) affine mapping image pixels to normalised crop coordinates."""
    cos, sin = math.cos(angle_rad), math.sin(angle_rad)
    # Rotate the image by -angle about the box centre, so a box rotated by +angle becomes upright.
    linear = np.array([[cos, sin], [-sin, cos]], np.float64) / side
    if flip:
        linear[0] *= -1.0
    offset = -linear @ np.asarray(centre, np.float64)
    return np.hstack([linear, offset[:, None]])


def apply_affine(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return (points @ transform[:, :2].T + transform[:, 2]).astype(np.float32)


def invert_affine(transform: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(transform, np.float64))


def crop_to_image(points_in_crop: np.ndarray, image_to_crop: np.ndarray) -> np.ndarray:
    """Map normalised crop points back to image pixels."""
    return apply_affine(invert_affine(image_to_crop), points_in_crop)


def crop_pixel_transform(image_to_crop: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) image pixels -> crop pixels of a `size` crop, integer coordinates at pixel centres on both
    sides: normalised 0 is the crop's central pixel-centre position."""
    pixel = np.asarray(image_to_crop, np.float64) * size
    pixel[:, 2] += (size - 1) / 2.0
    return pixel


def warp_crop(image: np.ndarray, image_to_crop: np.ndarray, size: int) -> np.ndarray:
    """Cut the crop out of `image`, area-averaging first when shrinking so small crops do not alias."""
    pixel = crop_pixel_transform(image_to_crop, size)
    scale = math.sqrt(abs(np.linalg.det(pixel[:, :2])))
    if scale < 0.75:
        # Shrink only the region the crop needs, with INTER_AREA, then warp with a residual scale ~1.
        corners = apply_affine(
            invert_affine(image_to_crop), np.array([[-0.6, -0.6], [0.6, -0.6], [0.6, 0.6], [-0.6, 0.6]])
        )
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        height, width = image.shape[:2]
        region = cv2.copyMakeBorder(
            image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)],
            max(-y0, 0),
            max(y1 - height, 0),
            max(-x0, 0),
            max(x1 - width, 0),
            cv2.BORDER_REPLICATE,
        )
        new_w = max(1, round(region.shape[1] * scale))
        new_h = max(1, round(region.shape[0] * scale))
        small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / region.shape[1], new_h / region.shape[0]
        # small pixel centre u = (x - x0 + 0.5) * fx - 0.5  ->  x = (u + 0.5) / fx - 0.5 + x0
        small_to_image = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + x0], [0, 1 / fy, 0.5 / fy - 0.5 + y0]])
        pixel = np.hstack(
            [pixel[:, :2] @ small_to_image[:, :2], (pixel[:, :2] @ small_to_image[:, 2] + pixel[:, 2])[:, None]]
        )
        image = small
    return cv2.warpAffine(image, pixel, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class FaceToMouth:
    """Where the mouth box sits in a face box, measured on training images (medians, robust to misses).

    It lets a face box alone give a first, loose mouth crop (the coarse-to-fine cascade's first pass).
    """

    dx: float  # (mouth centre x - face centre x) / face width
    dy: float  # (mouth centre y - face centre y) / face height
    scale: float  # mouth box side / face width
    samples: int = 0

    @classmethod
    def fit(cls, face_boxes: np.ndarray, centres: np.ndarray, sides: np.ndarray) -> FaceToMouth:
        boxes = np.asarray(face_boxes, np.float64)
        width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        face_centre = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        offsets = np.asarray(centres, np.float64) - face_centre
        return cls(
            float(np.median(offsets[:, 0] / width)),
            float(np.median(offsets[:, 1] / height)),
            float(np.median(np.asarray(sides) / width)),
            len(boxes),
        )

    def box(self, face_box: np.ndarray) -> tuple[np.ndarray, float]:
        x0, y0, x1, y1 = np.asarray(face_box, np.float64)
        centre = np.array([(x0 + x1) / 2 + self.dx * (x1 - x0), (y0 + y1) / 2 + self.dy * (y1 - y0)])
        return centre, self.scale * (x1 - x0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def box_differences(
    geometry: CropGeometry, detected: dict[str, np.ndarray], truth: dict[str, np.ndarray]
) -> dict[str, float]:
    """How a detector's mouth box differs from the ground-truth one: centre offset as a fraction of
    the GT side, and log side ratio (to compare with the training jitter)."""
    shifts, log_scales = [], []
    for name, points in detected.items():
        centre, side = geometry.box(points)
        gt_centre, gt_side = geometry.box(truth[name])
        shifts.append((centre - gt_centre) / gt_side)
        log_scales.append(math.log(side / gt_side))
    if not shifts:
        return {"samples": 0}
    shift_array, scale_array = np.asarray(shifts), np.asarray(log_scales)
    return {
        "samples": len(shifts),
        "shift_x_mean": float(shift_array[:, 0].mean()),
        "shift_y_mean": float(shift_array[:, 1].mean()),
        "shift_x_std": float(shift_array[:, 0].std()),
        "shift_y_std": float(shift_array[:, 1].std()),
        "log_scale_mean": float(scale_array.mean()),
        "log_scale_std": float(scale_array.std()),
    }
