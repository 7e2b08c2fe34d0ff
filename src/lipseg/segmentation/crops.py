"""Cutting the segmenters' training crops from photos, with label masks, jittered the way the TCNN's
located boxes miss the ground-truth ones (`locate_lips` and geometry.box_differences measure that).

The segmenter never finds the mouth itself: at inference the TCNN's lips give the crop box
(CropGeometry.box), so training crops are drawn from the locator's error distribution.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.data.crops import FaceSources, Jitter, LocatorSpread, SegmentCrops, crop_copies
from lipseg.data.faceparts import PartsRecord
from lipseg.data.faceparts_labels import read_label_mask
from lipseg.data.geometry import CropGeometry, apply_affine, crop_pixel_transform, image_to_crop_transform, warp_crop
from lipseg.data.helen import AnnotationError, Record
from lipseg.data.labels import BACKGROUND, IGNORE
from lipseg.data.landmarks import HELEN_LIPS, LIP_COUNT, mouth_width
from lipseg.data.photos import read_record_images
from lipseg.data.rejects import Reject
from lipseg.evaluation.masks import label_mask_from_lips
from lipseg.evaluation.report import pick_face


def locate_lips(
    predictor, records: list[Record], progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, np.ndarray]:
    """The lips `predictor` (a LipPredictor) finds for each record's annotated face, by name; a photo
    where no found face lies within a mouth width of the annotated mouth is left out (a statistic: the
    caller's crops of the same photos report the ones that cannot be read)."""
    located = {}
    for record, image in read_record_images(records, [], max_pixels, "locate lips", progress):
        faces = [face.lips for face in predictor.predict(image).faces]
        if not faces:
            continue
        truth = record.points[HELEN_LIPS]
        nearest = pick_face(faces, truth)
        if np.linalg.norm(nearest.mean(axis=0) - truth.mean(axis=0)) <= np.ptp(truth[:, 0]):
            located[record.name] = nearest
    return located


class _Rows:
    """Crops and masks of several faces, gathered into one SegmentCrops."""

    def __init__(self, size: int):
        self.size, self.images, self.masks, self.names, self.copy_index = size, [], [], [], []

    def add(
        self,
        name: str,
        image: np.ndarray,
        centre: np.ndarray,
        side: float,
        jitter: Jitter | None,
        rng: np.random.Generator,
        spread: LocatorSpread,
        mask_for: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """The plain crop and the jittered copies of one face; `mask_for` draws the labels for an
        image-pixel -> crop-pixel transform."""
        for copy, (transform, _, crop) in enumerate(crop_copies(image, centre, side, self.size, jitter, rng, spread)):
            self.images.append(crop)
            self.masks.append(mask_for(crop_pixel_transform(transform, self.size)))
            self.names.append(name)
            self.copy_index.append(copy)

    def crops(self, rejects: list[Reject]) -> SegmentCrops:
        size = self.size
        if not self.images:
            return SegmentCrops(
                np.zeros((0, size, size, 3), np.uint8),
                np.zeros((0, size, size), np.uint8),
                np.zeros(0, str),
                np.zeros(0, np.int32),
                rejects,
            )
        return SegmentCrops(
            np.stack(self.images),
            np.stack(self.masks),
            np.asarray(self.names),
            np.asarray(self.copy_index, np.int32),
            rejects,
        )


def make_segment_crops(
    records: list[Record],
    geometry: CropGeometry,
    spread: LocatorSpread,
    jitter: Jitter | None,
    seed: int = 0,
    desc: str = "segment crops",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SegmentCrops:
    """A plain crop per face (box from the ground-truth lips) plus `jitter.copies` crops with boxes drawn
    from the locator spread; label masks are the EVALUATION.md polygons drawn in crop pixels."""
    rng = np.random.default_rng(seed)
    rows, rejects = _Rows(geometry.size), []
    size = geometry.size
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        lips = record.points[HELEN_LIPS]
        rows.add(
            record.name,
            image,
            *geometry.box(lips),
            jitter,
            rng,
            spread,
            lambda pixel, lips=lips: label_mask_from_lips(apply_affine(pixel, lips), size, size),
        )
    return rows.crops(rejects)


def make_face_sources(
    records: list[Record],
    geometry: CropGeometry,
    context: float = 1.8,
    desc: str = "face sources",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FaceSources:
    """A patch per face, `context` times the plain crop's side and at its scale, with the lips in patch
    pixels: enough room for any jittered box, so training crops can be cut from patches at every step."""
    size = round(geometry.size * context)
    images, lips, names, rejects = [], [], [], []
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        points = record.points[HELEN_LIPS]
        centre, side = geometry.box(points)
        to_patch = image_to_crop_transform(centre, side * size / geometry.size)
        images.append(warp_crop(image, to_patch, size))
        lips.append(apply_affine(crop_pixel_transform(to_patch, size), points))
        names.append(record.name)
    count = len(images)
    return FaceSources(
        np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        np.stack(lips).astype(np.float32) if lips else np.zeros((0, LIP_COUNT, 2), np.float32),
        np.zeros((count, size, size), np.uint8),
        np.asarray(names, str),
        np.zeros(count, np.int32),
        rejects,
    )


def make_parts_sources(
    records: list[PartsRecord],
    class_table: dict[str, int],
    geometry: CropGeometry,
    context: float = 1.8,
    desc: str = "parts sources",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FaceSources:
    """The same patches from a face-parsing set (LaPa, CelebAMask-HQ, ...): the box comes from the labelled
    mouth pixels, and the label mask is warped with nearest-neighbour sampling (no points: NaN lips)."""
    size = round(geometry.size * context)
    images, labels, names, rejects = [], [], [], []
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        try:
            mask = read_label_mask(record, class_table, image.shape[:2])
        except AnnotationError as error:  # one bad label file is that face's reject, not the stage's end
            file = str(record.label_paths[0]) if record.label_paths else ""
            rejects.append(Reject(record.name, file, f"bad label: {error}"))
            continue
        ys, xs = np.nonzero((mask > BACKGROUND) & (mask != IGNORE))
        if len(xs) == 0:
            rejects.append(Reject(record.name, str(record.label_paths[0]), "no mouth pixels under this class table"))
            continue
        centre, side = geometry.box(np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float64))
        pixel = crop_pixel_transform(image_to_crop_transform(centre, side * size / geometry.size), size)
        images.append(warp_crop(image, image_to_crop_transform(centre, side * size / geometry.size), size))
        labels.append(
            cv2.warpAffine(
                mask,
                pixel,
                (size, size),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=BACKGROUND,
            )
        )
        names.append(record.name)
    count = len(images)
    return FaceSources(
        np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        np.full((count, LIP_COUNT, 2), np.nan, np.float32),
        np.stack(labels) if labels else np.zeros((0, size, size), np.uint8),
        np.asarray(names, str),
        np.zeros(count, np.int32),
        rejects,
    )


def draw_crops(
    sources: FaceSources,
    indices: np.ndarray,
    size: int,
    spread: LocatorSpread,
    jitter: Jitter,
    draws: np.ndarray,
    annotation_offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh training crops (B, S, S, 3) and label masks (B, S, S) of the faces `indices`, each cut from its
    source with a box drawn from the locator spread (jitter's shift/scale as floors), a rotation, mirroring
    and a brightness/contrast change. `draws` (B, 8): 3 standard normals then 5 uniforms in [0, 1), so the
    caller's seeded generator decides every crop. Mirrored masks keep the annotations' frame (lipseg.data.
    landmarks.annotation_axis); faces labelled by masks are warped with nearest-neighbour sampling."""
    crops = np.empty((len(indices), size, size, 3), np.uint8)
    masks = np.empty((len(indices), size, size), np.uint8)
    patch = sources.images.shape[1]
    centre = np.full(2, (patch - 1) / 2.0)
    shift_std = np.maximum([spread.shift_x_std, spread.shift_y_std], jitter.shift)
    scale_std = max(spread.log_scale_std, jitter.scale)
    for row, (index, draw) in enumerate(zip(indices, draws)):
        shift = (np.array([spread.shift_x_mean, spread.shift_y_mean]) + shift_std * draw[:2]) * size
        side = size * np.exp(spread.log_scale_mean + scale_std * draw[2])
        angle = np.radians((2 * draw[3] - 1) * jitter.rotate_deg)
        flip = bool(jitter.flip and draw[4] < 0.5)
        pixel = crop_pixel_transform(image_to_crop_transform(centre + shift, side, angle, flip), size)
        crop = cv2.warpAffine(
            sources.images[index], pixel, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if jitter.brightness > 0:
            contrast = 1.0 + (2 * draw[5] - 1) * jitter.brightness
            offset = (2 * draw[6] - 1) * jitter.brightness * 128.0
            crop = np.clip(crop.astype(np.float32) * contrast + offset, 0, 255).astype(np.uint8)
        crops[row] = crop
        lips = sources.lips[index]
        if np.isnan(lips).any():
            masks[row] = cv2.warpAffine(
                sources.labels[index],
                pixel,
                (size, size),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=BACKGROUND,
            )
            continue
        points = apply_affine(pixel, lips)
        if flip:  # mirrored about the annotation frame's axis, as an annotator would have labelled the mirror image
            points[:, 0] += 2.0 * annotation_offset * mouth_width(points)
        masks[row] = label_mask_from_lips(points, size, size)
    return crops, masks
