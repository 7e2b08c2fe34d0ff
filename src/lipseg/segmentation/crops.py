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
from lipseg.data.crops import Jitter, LocatorSpread, SegmentCrops, crop_copies
from lipseg.data.faceparts import PartsRecord
from lipseg.data.faceparts_labels import read_label_mask
from lipseg.data.geometry import CropGeometry, apply_affine, crop_pixel_transform
from lipseg.data.helen import AnnotationError, Record
from lipseg.data.labels import BACKGROUND, IGNORE
from lipseg.data.landmarks import HELEN_LIPS
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


def make_parts_crops(
    records: list[PartsRecord],
    class_table: dict[str, int],
    geometry: CropGeometry,
    spread: LocatorSpread,
    jitter: Jitter | None,
    seed: int = 0,
    desc: str = "parts crops",
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SegmentCrops:
    """The same crops from a face-parsing set (LaPa, CelebAMask-HQ, ...): the box comes from the
    labelled mouth pixels and the label mask is warped with nearest-neighbour sampling."""
    rng = np.random.default_rng(seed)
    rows, rejects = _Rows(geometry.size), []
    size = geometry.size
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        try:
            labels = read_label_mask(record, class_table, image.shape[:2])
        except AnnotationError as error:  # one bad label file is that face's reject, not the stage's end
            rejects.append(
                Reject(record.name, str(record.label_paths[0]) if record.label_paths else "", f"bad label: {error}")
            )
            continue
        ys, xs = np.nonzero((labels > BACKGROUND) & (labels != IGNORE))
        if len(xs) == 0:
            rejects.append(Reject(record.name, str(record.label_paths[0]), "no mouth pixels under this class table"))
            continue
        corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float64)
        rows.add(
            record.name,
            image,
            *geometry.box(corners),
            jitter,
            rng,
            spread,
            lambda pixel, labels=labels: cv2.warpAffine(
                labels,
                pixel,
                (size, size),
                flags=cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=BACKGROUND,
            ),
        )
    return rows.crops(rejects)
