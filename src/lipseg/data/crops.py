"""Training crops as arrays (`CropSet` for landmarks, `SegmentCrops` for masks), the one jitter both are
drawn with, their normalisation statistics, and the train/validation split.

A jittered copy moves, scales and turns the crop box and changes brightness and contrast; the box moves
either uniformly within a range (the TCNN's augmentation) or the way a locator's boxes are measured to
miss the truth (`LocatorSpread`, the segmenters' crops), with the range as a floor.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import torch

from lipseg.core.files import load_npz, write_npz_atomic
from lipseg.core.params import Section, param
from lipseg.data.geometry import image_to_crop_transform, warp_crop
from lipseg.data.rejects import Reject


class CropArrays:
    """Named arrays of one split, saved as one npz (no pickle). Subclasses are dataclasses whose fields
    are (N, ...) arrays, plus `rejects`, which is reported by the stage and not saved."""

    rejects: list[Reject]

    def arrays(self) -> dict[str, np.ndarray]:
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "rejects"}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Self:
        return cls(**{item.name: arrays[item.name] for item in dataclasses.fields(cls) if item.name != "rejects"})

    def save(self, path: Path) -> None:
        write_npz_atomic(path, **self.arrays())

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls.from_arrays(load_npz(path))

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[attr-defined]

    def concatenate(self, other: Self) -> Self:
        joined = {key: np.concatenate([value, getattr(other, key)]) for key, value in self.arrays().items()}
        return type(self)(**joined, rejects=self.rejects + other.rejects)


@dataclass
class CropSet(CropArrays):
    """Landmark crops of one split, with everything needed to map predictions back to the photo."""

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


@dataclass
class SegmentCrops(CropArrays):
    """Mouth crops and their label masks (0..3, 255 = ignore) for the segmenters."""

    images: np.ndarray  # (N, S, S, 3) uint8 BGR
    masks: np.ndarray  # (N, S, S) uint8 labels
    names: np.ndarray  # (N,) str
    copy_index: np.ndarray  # (N,) int32, 0 = plain crop
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class FaceSources(CropArrays):
    """Per training face, a patch around its mouth with room for any jittered box: the segmenters' training
    crops are cut from it anew at every step, each with a fresh jitter (lipseg.segmentation.crops)."""

    images: np.ndarray  # (N, P, P, 3) uint8 BGR at the plain crop's scale, centred on it: its box is S px there
    lips: np.ndarray  # (N, 56, 2) float32 Helen lip points in patch pixels; NaN for faces labelled by masks
    labels: np.ndarray  # (N, P, P) uint8 label masks (0..3, 255 ignore) for faces without points, else 0
    names: np.ndarray  # (N,) str
    copy_index: np.ndarray  # (N,) int32, all 0: one source per face
    rejects: list[Reject] = field(default_factory=list)


@dataclass(frozen=True)
class Jitter(Section):
    """Jittered copies of each crop: box shift and log-scale (fractions of the box side; a range for
    uniform draws, a floor on a measured `LocatorSpread`), rotation, brightness/contrast and mirroring."""

    copies: int = param(4, low=0)  # jittered copies per face, on top of the plain crop
    shift: float = param(0.05, low=0, high=0.5)  # at 0.5 the mouth's centre reaches the crop's edge
    scale: float = param(0.10, low=0, high=1)  # log scale: 1 is e = 2.7 times larger or smaller
    rotate_deg: float = param(10.0, low=0, high=180)
    brightness: float = param(0.2, low=0, high=1)
    flip: bool = True


@dataclass(frozen=True)
class LocatorSpread:
    """How the box around located lips differs from the ground-truth box: centre offset as a fraction of
    the ground-truth side and log side ratio, means and spreads (geometry.box_differences measures it)."""

    shift_x_mean: float = 0.0
    shift_y_mean: float = 0.0
    shift_x_std: float = 0.0
    shift_y_std: float = 0.0
    log_scale_mean: float = 0.0
    log_scale_std: float = 0.0
    samples: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> LocatorSpread:
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


def jittered_transform(
    centre: np.ndarray, side: float, jitter: Jitter, rng: np.random.Generator, spread: LocatorSpread | None = None
) -> tuple[np.ndarray, bool]:
    """(image -> crop affine, mirrored?) of one jittered box. Without `spread` the shift and log-scale are
    uniform in +-jitter.shift / +-jitter.scale; with it they are normal around the measured means, with
    the measured spreads floored at jitter.shift / jitter.scale."""
    if spread is None:
        shift = rng.uniform(-jitter.shift, jitter.shift, size=2) * side
        side = side * math.exp(rng.uniform(-jitter.scale, jitter.scale))
    else:
        shift_std = np.maximum([spread.shift_x_std, spread.shift_y_std], jitter.shift)
        shift = rng.normal([spread.shift_x_mean, spread.shift_y_mean], shift_std) * side
        side = side * math.exp(rng.normal(spread.log_scale_mean, max(spread.log_scale_std, jitter.scale)))
    angle = math.radians(rng.uniform(-jitter.rotate_deg, jitter.rotate_deg))
    flip = bool(jitter.flip and rng.random() < 0.5)
    return image_to_crop_transform(np.asarray(centre, np.float64) + shift, side, angle, flip), flip


def jitter_brightness(crop: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    contrast = 1.0 + rng.uniform(-amount, amount)
    brightness = rng.uniform(-amount, amount) * 128.0
    return np.clip(crop.astype(np.float32) * contrast + brightness, 0, 255).astype(np.uint8)


def crop_copies(
    image: np.ndarray,
    centre: np.ndarray,
    side: float,
    size: int,
    jitter: Jitter | None,
    rng: np.random.Generator,
    spread: LocatorSpread | None = None,
) -> Iterator[tuple[np.ndarray, bool, np.ndarray]]:
    """(image -> crop affine, mirrored?, crop) for the plain box and then `jitter.copies` jittered ones."""
    for copy_index in range(1 + (jitter.copies if jitter else 0)):
        if copy_index == 0:
            transform, flipped = image_to_crop_transform(centre, side), False
        else:
            transform, flipped = jittered_transform(centre, side, jitter, rng, spread)
        crop = warp_crop(image, transform, size)
        if copy_index > 0 and jitter.brightness > 0:
            crop = jitter_brightness(crop, jitter.brightness, rng)
        yield transform, flipped, crop


def normalisation_images(images: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and std images (S, S, 3) float32 of the training crops, as the TCNN paper uses."""
    data = images.astype(np.float64)
    return data.mean(axis=0).astype(np.float32), np.maximum(data.std(axis=0), min_std).astype(np.float32)


def channel_normalisation(images: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (3,) float32 of the training crops (the segmenters')."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(axis=0).astype(np.float32), np.maximum(pixels.std(axis=0), min_std).astype(np.float32)


def photo_of(name: str, pattern: str) -> str:
    """The photo a face belongs to: `pattern`'s first group when the name matches it (Helen names a face
    `<photo>_<n>`), else the name itself (a photo of its own)."""
    match = re.fullmatch(pattern, name)
    return match.group(1) if match else name


def split_train_val(
    records: list, val_fraction: float, seed: int, photo_pattern: str = r"(.+)_\d{1,2}"
) -> tuple[list, list]:
    """Carve a validation split from train by a seeded shuffle of whole photos, so two faces of one photo
    never sit on both sides (the test split is never used for tuning). About `val_fraction` of the faces."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"crop.val_fraction must be in (0, 1), got {val_fraction}")
    photos = list(dict.fromkeys(photo_of(record.name, photo_pattern) for record in records))
    sizes = Counter(photo_of(record.name, photo_pattern) for record in records)
    wanted = max(1, round(len(records) * val_fraction)) if len(photos) > 1 else 0
    val_photos: set[str] = set()
    for index in np.random.default_rng(seed).permutation(len(photos)):
        if sum(sizes[photo] for photo in val_photos) >= wanted:
            break
        val_photos.add(photos[index])
    train = [record for record in records if photo_of(record.name, photo_pattern) not in val_photos]
    val = [record for record in records if photo_of(record.name, photo_pattern) in val_photos]
    return train, val


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 BGR crops -> (B, 3, S, S) float32 in [0, 255], the networks' input layout."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float()
