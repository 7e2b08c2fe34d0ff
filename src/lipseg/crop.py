"""Crop geometry: a square around the lips, warped to a small fixed-size crop, and back.

The same rule serves training (box from ground-truth lips) and deployment (box from a detector's
mouth points), so the model never sees two different framings. The box side scales with the mouth
size, not with a fixed number of pixels, so a face's distance to the camera does not change the crop.

Coordinates: `points_in_crop` are normalised crop coordinates, (0, 0) at the crop centre and the crop
spanning [-0.5, 0.5) on both axes; pixel centres are at integer image coordinates throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from lipseg.datasets.helen import Record, Reject
from lipseg.io import DEFAULT_MAX_PIXELS, ImageError, read_image
from lipseg.landmarks import HELEN_LIPS, OUTER, flip_permutation, inter_ocular, respace_lips


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


def image_to_crop_transform(
    centre: np.ndarray, side: float, angle_rad: float = 0.0, flip: bool = False
) -> np.ndarray:
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
        corners = apply_affine(invert_affine(image_to_crop), np.array([[-0.6, -0.6], [0.6, -0.6], [0.6, 0.6], [-0.6, 0.6]]))
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        height, width = image.shape[:2]
        region = cv2.copyMakeBorder(
            image[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)],
            max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0), cv2.BORDER_REPLICATE,
        )
        new_w = max(1, round(region.shape[1] * scale))
        new_h = max(1, round(region.shape[0] * scale))
        small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / region.shape[1], new_h / region.shape[0]
        # small pixel centre u = (x - x0 + 0.5) * fx - 0.5  ->  x = (u + 0.5) / fx - 0.5 + x0
        small_to_image = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + x0], [0, 1 / fy, 0.5 / fy - 0.5 + y0]])
        pixel = np.hstack([pixel[:, :2] @ small_to_image[:, :2], (pixel[:, :2] @ small_to_image[:, 2] + pixel[:, 2])[:, None]])
        image = small
    return cv2.warpAffine(image, pixel, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class Augmentation:
    """Training jitter: shift/scale as fractions of the box side, rotation in degrees."""

    copies: int = 4  # augmented copies per image, on top of the unjittered one
    shift: float = 0.05
    scale: float = 0.10
    rotate_deg: float = 10.0
    brightness: float = 0.2
    flip: bool = True


@dataclass
class CropSet:
    """Crops of one split, with everything needed to map predictions back to the photo."""

    images: np.ndarray  # (N, S, S, 3) uint8, BGR
    lips: np.ndarray  # (N, 56, 2) float32, canonical (re-spaced) lips in normalised crop coordinates
    image_to_crop: np.ndarray  # (N, 2, 3) float32
    names: np.ndarray  # (N,) str
    flipped: np.ndarray  # (N,) bool
    copy_index: np.ndarray  # (N,) int, 0 = unjittered
    gt_lips_image: np.ndarray  # (N, 56, 2) float32, original Helen lip points in image pixels
    inter_ocular: np.ndarray  # (N,) float32
    image_hw: np.ndarray  # (N, 2) int32
    rejects: list[Reject] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: value for key, value in vars(self).items() if key != "rejects"}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> CropSet:
        return cls(**{key: arrays[key] for key in cls.__dataclass_fields__ if key != "rejects"})

    def __len__(self) -> int:
        return len(self.images)


def _jittered_transform(
    centre: np.ndarray, side: float, augmentation: Augmentation, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    shift = rng.uniform(-augmentation.shift, augmentation.shift, size=2) * side
    side = side * math.exp(rng.uniform(-augmentation.scale, augmentation.scale))
    angle = math.radians(rng.uniform(-augmentation.rotate_deg, augmentation.rotate_deg))
    flip = bool(augmentation.flip and rng.random() < 0.5)
    return image_to_crop_transform(centre + shift, side, angle, flip), flip


def jitter_brightness(crop: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    contrast = 1.0 + rng.uniform(-amount, amount)
    brightness = rng.uniform(-amount, amount) * 128.0
    return np.clip(crop.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)


LIPS_OUTSIDE = "lip points lie outside the image"


def lips_outside_image(lips: np.ndarray, height: int, width: int) -> bool:
    """True when annotated lips reach well beyond the image (10% of its size): a wrong annotation or the
    wrong image, and a crop of it would be border padding."""
    slack = 0.1 * max(height, width)
    return bool((lips < -slack).any() or (lips[:, 0] > width + slack).any() or (lips[:, 1] > height + slack).any())


def read_record_images(records: list, rejects: list[Reject], max_pixels: int = DEFAULT_MAX_PIXELS, desc: str = "read",
                       progress: bool = True) -> Iterator[tuple[Any, np.ndarray]]:
    """(record, BGR image) for each record whose image reads (lipseg.io.read_image, `max_pixels`) and,
    for Helen records, whose lips lie in the image; every other record becomes a reject with the reason."""
    for record in tqdm(records, desc=desc, unit="img", disable=not progress, leave=False):
        try:
            image = read_image(record.image_path, max_pixels)
        except ImageError as error:
            rejects.append(Reject(record.name, str(record.image_path), str(error)))
            continue
        if isinstance(record, Record) and lips_outside_image(record.points[HELEN_LIPS], *image.shape[:2]):
            rejects.append(Reject(record.name, str(record.annotation_path), LIPS_OUTSIDE))
            continue
        yield record, image


def make_crops(
    records: list[Record],
    geometry: CropGeometry,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    desc: str = "crop",
    progress: bool = True,
    box_points: dict[str, np.ndarray] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CropSet:
    """Crops for `records`: one unjittered crop each, plus `augmentation.copies` jittered ones.

    The crop box comes from the ground-truth lips, or from `box_points[name]` (e.g. a detector's mouth
    points) when given; a record missing from `box_points` is rejected, never silently GT-cropped.
    Records whose image cannot be used are rejected with the reason (`read_record_images`).
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {key: [] for key in CropSet.__dataclass_fields__ if key != "rejects"}
    rejects: list[Reject] = []
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        height, width = image.shape[:2]
        raw_lips = record.points[HELEN_LIPS]
        canonical = respace_lips(raw_lips)
        if box_points is not None and record.name not in box_points:
            rejects.append(Reject(record.name, str(record.image_path), "no face found by the detector"))
            continue
        centre, side = geometry.box(box_points[record.name] if box_points is not None else canonical)
        copies = 1 + (augmentation.copies if augmentation else 0)
        for copy in range(copies):
            if copy == 0:
                transform, flip = image_to_crop_transform(centre, side), False
            else:
                transform, flip = _jittered_transform(centre, side, augmentation, rng)
            crop = warp_crop(image, transform, geometry.size)
            if copy > 0 and augmentation.brightness > 0:
                crop = jitter_brightness(crop, augmentation.brightness, rng)
            lips_in_crop = apply_affine(transform, canonical)
            if flip:
                # The transform already mirrored x; reversing each contour block restores the order.
                lips_in_crop = lips_in_crop[flip_permutation()]
            columns["images"].append(crop)
            columns["lips"].append(lips_in_crop)
            columns["image_to_crop"].append(transform.astype(np.float32))
            columns["names"].append(record.name)
            columns["flipped"].append(flip)
            columns["copy_index"].append(copy)
            columns["gt_lips_image"].append(raw_lips.astype(np.float32))
            columns["inter_ocular"].append(inter_ocular(record.points))
            columns["image_hw"].append((height, width))
    size = geometry.size
    empty_shapes = {"images": (0, size, size, 3), "lips": (0, 56, 2), "image_to_crop": (0, 2, 3), "gt_lips_image": (0, 56, 2), "image_hw": (0, 2)}
    dtypes = {"images": np.uint8, "lips": np.float32, "image_to_crop": np.float32, "names": str, "flipped": bool,
              "copy_index": np.int32, "gt_lips_image": np.float32, "inter_ocular": np.float32, "image_hw": np.int32}
    arrays = {}
    for key, values in columns.items():
        arrays[key] = np.asarray(values, dtype=dtypes[key]) if values else np.zeros(empty_shapes.get(key, (0,)), dtypes[key])
    return CropSet(**arrays, rejects=rejects)


def normalisation_images(images: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std images (S, S, 3) float32 of the training crops, as the TCNN paper uses."""
    data = images.astype(np.float64)
    mean = data.mean(axis=0)
    std = np.maximum(data.std(axis=0), min_std)
    return mean.astype(np.float32), std.astype(np.float32)


def split_train_val(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Carve a validation split from train by a seeded shuffle (the test split is never used for tuning)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"crop.val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(records))
    val_count = max(1, round(len(records) * val_fraction)) if len(records) > 1 else 0
    val_index = set(order[:val_count].tolist())
    train = [record for index, record in enumerate(records) if index not in val_index]
    val = [record for index, record in enumerate(records) if index in val_index]
    return train, val


def augmentation_from_params(values: dict) -> Augmentation:
    return Augmentation(**{key: values[key] for key in Augmentation.__dataclass_fields__ if key in values})


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
        return cls(float(np.median(offsets[:, 0] / width)), float(np.median(offsets[:, 1] / height)),
                   float(np.median(np.asarray(sides) / width)), len(boxes))

    def box(self, face_box: np.ndarray) -> tuple[np.ndarray, float]:
        x0, y0, x1, y1 = np.asarray(face_box, np.float64)
        centre = np.array([(x0 + x1) / 2 + self.dx * (x1 - x0), (y0 + y1) / 2 + self.dy * (y1 - y0)])
        return centre, self.scale * (x1 - x0)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def box_differences(geometry: CropGeometry, detected: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
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
        "shift_x_mean": float(shift_array[:, 0].mean()), "shift_y_mean": float(shift_array[:, 1].mean()),
        "shift_x_std": float(shift_array[:, 0].std()), "shift_y_std": float(shift_array[:, 1].std()),
        "log_scale_mean": float(scale_array.mean()), "log_scale_std": float(scale_array.std()),
    }
