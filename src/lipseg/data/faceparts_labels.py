"""Face-parsing label files (LaPa, CelebAMask-HQ, LFW Part Labels) read into lip-class label masks
through a class table, and LaPa's landmark files (the layouts: lipseg.data.faceparts)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from lipseg.core.images import DEFAULT_MAX_PIXELS, ImageError, image_size, read_image
from lipseg.data.faceparts import (
    CELEBAMASK_PARTS,
    CELEBAMASK_PRECEDENCE,
    LAPA_CLASSES,
    LAPA_NUM_POINTS,
    LFW_CLASSES,
    MASK_NAME,
    PartsRecord,
    validate_class_table,
)
from lipseg.data.helen import AnnotationError


def _decode(path: Path, flags: int, image_shape: tuple[int, int]) -> np.ndarray:
    # The project's one reader (truncation checks, a pixel limit); a label that fails is an annotation
    # error. Its image already passed the stage's limit, and a label may be as large as its image, so a
    # raised crop.max_pixels reaches the labels too.
    try:
        return read_image(path, max_pixels=max(DEFAULT_MAX_PIXELS, image_shape[0] * image_shape[1]), flags=flags)
    except ImageError as error:
        raise AnnotationError(f"{path}: cannot decode label file ({error})") from None


def _image_shape(record: PartsRecord, image_shape: tuple[int, ...] | None) -> tuple[int, int]:
    if image_shape is not None:
        height, width = (int(v) for v in tuple(image_shape)[:2])
        return height, width
    # The header's size is the decoded size: read_image ignores EXIF orientation, as the crops do.
    try:
        return image_size(record.image_path)
    except ImageError as error:
        raise AnnotationError(f"{record.image_path}: cannot read the image size ({error})") from None


def _check_size(path: Path, label: np.ndarray, shape: tuple[int, int]) -> None:
    if label.shape[:2] != shape:
        raise AnnotationError(f"{path}: label is {label.shape[1]}x{label.shape[0]}, image is {shape[1]}x{shape[0]}")


def _lapa_mask(record: PartsRecord, table: dict[str, int], shape: tuple[int, int]) -> np.ndarray:
    path = record.label_paths[0]
    label = _decode(path, cv2.IMREAD_UNCHANGED, shape)
    if label.ndim == 3:
        # Some re-saved copies carry the ids in three equal channels; different channels mean a colour image.
        if not all(np.array_equal(label[..., 0], label[..., c]) for c in range(1, label.shape[2])):
            raise AnnotationError(f"{path}: expected a single-channel label-id image, got {label.shape[2]} channels")
        label = label[..., 0]
    if label.dtype != np.uint8:
        raise AnnotationError(f"{path}: expected 8-bit label ids, got {label.dtype}")
    _check_size(path, label, shape)
    if int(label.max()) >= len(LAPA_CLASSES):  # max first: np.unique sorts, and is only needed for the message
        unknown = ", ".join(str(value) for value in np.unique(label[label >= len(LAPA_CLASSES)]).tolist())
        raise AnnotationError(f"{path}: label id(s) {unknown} are not LaPa classes (0..{len(LAPA_CLASSES) - 1})")
    lut = np.zeros(256, np.uint8)
    for index, name in enumerate(LAPA_CLASSES):
        lut[index] = table[name]
    return lut[label]


def _celebamask_mask(record: PartsRecord, table: dict[str, int], shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    out = np.zeros(shape, np.uint8)
    by_part: dict[str, Path] = {}
    for path in record.label_paths:
        match = MASK_NAME.match(path.name)
        if match is None or match.group(2) not in CELEBAMASK_PARTS:
            raise AnnotationError(f"{path}: not a CelebAMask-HQ part mask (<id:05d>_<part>.png)")
        by_part[match.group(2)] = path
    for part in CELEBAMASK_PRECEDENCE:
        if part not in by_part:
            continue
        mask = _decode(by_part[part], cv2.IMREAD_GRAYSCALE, shape)
        if mask.shape != shape:
            # Nearest neighbour keeps the masks binary and the part borders where the annotator put them.
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        out[mask >= 128] = table[part]
    return out


def _lfw_mask(record: PartsRecord, table: dict[str, int], shape: tuple[int, int]) -> np.ndarray:
    path = record.label_paths[0]
    label = _decode(path, cv2.IMREAD_COLOR, shape)
    _check_size(path, label, shape)
    channel = np.argmax(label[..., ::-1], axis=2)  # BGR -> RGB so index 0, 1, 2 = hair, face, background
    lut = np.array([table[name] for name in LFW_CLASSES], np.uint8)
    return lut[channel]


def read_label_mask(
    record: PartsRecord, class_table: Mapping[str, int], image_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """(H, W) uint8 label mask of `record` in lip classes (0..3, 255 ignore), at the image's size.

    `image_shape` ((H, W) or an image's full shape) saves decoding the image when the caller has it.
    AnnotationError (a ValueError) on label files that cannot be decoded or do not fit the image.
    """
    table = validate_class_table(record.format, class_table)
    if not record.label_paths:
        raise AnnotationError(f"{record.name}: record has no label files")
    shape = _image_shape(record, image_shape)
    if record.format == "lapa":
        return _lapa_mask(record, table, shape)
    if record.format == "celebamask_hq":
        return _celebamask_mask(record, table, shape)
    return _lfw_mask(record, table, shape)


def read_landmarks_lapa(path: Path) -> np.ndarray:
    """(106, 2) float32 points of a LaPa landmark file (line 1 = point count, then one 'x y' per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read landmark file ({error.strerror or error})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise AnnotationError(f"{path}: empty landmark file")
    try:
        count = int(lines[0])
    except ValueError:
        raise AnnotationError(f"{path}: line 1 should be the point count, got {lines[0][:40]!r}") from None
    if count != LAPA_NUM_POINTS:
        raise AnnotationError(f"{path}: point count is {count}, LaPa has {LAPA_NUM_POINTS}")
    if len(lines) - 1 != count:
        raise AnnotationError(f"{path}: header says {count} points, found {len(lines) - 1} lines")
    points = np.empty((count, 2), np.float32)
    for index, line in enumerate(lines[1:]):
        parts = line.split()
        if len(parts) != 2:
            raise AnnotationError(f"{path}: point {index + 1}: expected 'x y', got {line[:40]!r}")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise AnnotationError(f"{path}: point {index + 1}: non-numeric value {line[:40]!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AnnotationError(f"{path}: point {index + 1}: non-finite value {line[:40]!r}")
        points[index] = (x, y)
    return points
