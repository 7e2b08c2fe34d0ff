"""Cutting the TCNN's landmark crops from photos: a plain crop per face and jittered, mirrored copies."""

from __future__ import annotations

import numpy as np

from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.data.crops import CropSet, Jitter, crop_copies
from lipseg.data.geometry import CropGeometry, apply_affine
from lipseg.data.helen import Record
from lipseg.data.landmarks import (
    HELEN_LIPS,
    annotation_axis,
    flip_permutation,
    inter_ocular,
    respace_lips,
)
from lipseg.data.photos import read_record_images
from lipseg.data.rejects import Reject

_EMPTY_SHAPES = {"lips": (0, 56, 2), "image_to_crop": (0, 2, 3), "gt_lips_image": (0, 56, 2), "image_hw": (0, 2)}
_DTYPES = {
    "images": np.uint8,
    "lips": np.float32,
    "image_to_crop": np.float32,
    "names": str,
    "flipped": bool,
    "copy_index": np.int32,
    "gt_lips_image": np.float32,
    "inter_ocular": np.float32,
    "image_hw": np.int32,
}


def make_crops(
    records: list[Record],
    geometry: CropGeometry,
    jitter: Jitter | None = None,
    seed: int = 0,
    desc: str = "crop",
    progress: bool = True,
    box_points: dict[str, np.ndarray] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    annotation_offset: float = 0.0,
) -> CropSet:
    """Crops for `records`: one unjittered crop each, plus `jitter.copies` jittered ones.

    The crop box comes from the ground-truth lips, or from `box_points[name]` (e.g. a detector's mouth
    points) when given; a record missing from `box_points` is rejected, never silently GT-cropped.
    Records whose image cannot be used are rejected with the reason (`read_record_images`). Mirrored
    copies keep the annotations' frame: see lipseg.data.landmarks.annotation_axis.
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, list] = {key: [] for key in _DTYPES}
    rejects: list[Reject] = []
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        height, width = image.shape[:2]
        raw_lips = record.points[HELEN_LIPS]
        canonical = respace_lips(raw_lips)
        if box_points is not None and record.name not in box_points:
            rejects.append(Reject(record.name, str(record.image_path), "no face found by the detector"))
            continue
        centre, side = geometry.box(box_points[record.name] if box_points is not None else canonical)
        for copy, (transform, flip, crop) in enumerate(crop_copies(image, centre, side, geometry.size, jitter, rng)):
            lips_in_crop = apply_affine(transform, canonical)
            if flip:
                # The transform already mirrored x about the content's axis; the annotation frame's axis sits
                # annotation_offset mouth widths to the right, and reversing each contour block restores the order.
                lips_in_crop[:, 0] += 2.0 * annotation_axis(lips_in_crop, annotation_offset)
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
    arrays = {}
    for key, values in columns.items():
        empty = (0, geometry.size, geometry.size, 3) if key == "images" else _EMPTY_SHAPES.get(key, (0,))
        arrays[key] = np.asarray(values, dtype=_DTYPES[key]) if values else np.zeros(empty, _DTYPES[key])
    return CropSet(**arrays, rejects=rejects)
