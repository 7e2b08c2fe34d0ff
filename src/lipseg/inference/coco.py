"""COCO-style lip masks (`lipseg predict --format coco`): one `annotations.json` per run with the photos,
one annotation per face and lip class (polygons and compressed RLE), and the lip classes as categories."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lipseg.core.files import write_text_atomic
from lipseg.data.labels import INNER_MOUTH, LOWER_LIP, UPPER_LIP

COCO_FILE = "annotations.json"
# Category ids are the label values of the PNG masks, so both outputs name a class by the same number.
CATEGORIES = (
    {"id": UPPER_LIP, "name": "upper_lip", "supercategory": "mouth"},
    {"id": INNER_MOUTH, "name": "inner_mouth", "supercategory": "mouth"},
    {"id": LOWER_LIP, "name": "lower_lip", "supercategory": "mouth"},
)
OWNER_CHUNK = 65536  # labelled pixels per distance step: bounds memory on photos with huge mouths


def rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a binary mask in column-major order, starting with a (possibly empty) run of 0s,
    as COCO stores them."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """COCO's compressed RLE text (pycocotools' rleToString): each count, less the count two before it
    from the fourth on, as little-endian 5-bit groups with a continuation bit, offset into printable ASCII."""
    text = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: a negative difference ends at -1
            more = value != -1 if group & 0x10 else value != 0
            text.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(text)


def encode_rle(mask: np.ndarray) -> dict:
    """{"size": [height, width], "counts": compressed RLE}: what pycocotools.mask.encode gives."""
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_string(rle_counts(mask))}


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer contours of a binary mask as COCO polygons [x0, y0, x1, y1, ...], with at least three
    points each. OpenCV traces pixel centres; COCO's coordinates put a pixel's centre at +0.5."""
    contours, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(contour.reshape(-1, 2) + 0.5).ravel().tolist() for contour in contours if len(contour) >= 3]


def bbox(mask: np.ndarray) -> list[int]:
    """[x, y, width, height] of the mask's pixels, [0, 0, 0, 0] when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]


def face_owners(mask: np.ndarray, faces_lips: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the index of the face whose lip points lie nearest (-1 on background): the label mask
    holds every face at once, a COCO annotation belongs to one."""
    owners = np.full(mask.shape, -1, np.int32)
    rows, cols = np.nonzero(mask)
    if len(faces_lips) == 1:
        owners[rows, cols] = 0
        return owners
    for start in range(0, rows.size, OWNER_CHUNK):
        pixels = np.stack([cols[start : start + OWNER_CHUNK], rows[start : start + OWNER_CHUNK]], 1).astype(float)
        distances = np.stack(
            [
                np.linalg.norm(pixels[:, None] - np.asarray(lips, float)[None], axis=2).min(axis=1)
                for lips in faces_lips
            ],
            1,
        )
        owners[rows[start : start + OWNER_CHUNK], cols[start : start + OWNER_CHUNK]] = distances.argmin(axis=1)
    return owners


def photo_annotations(mask: np.ndarray, faces_lips: list[np.ndarray]) -> list[dict]:
    """One annotation (without ids) per face and lip class present in the label mask."""
    if not faces_lips or not mask.any():
        return []
    owners = face_owners(mask, faces_lips)
    annotations = []
    for face in range(len(faces_lips)):
        for category in CATEGORIES:
            region = (owners == face) & (mask == category["id"])
            if not region.any():
                continue
            annotations.append(
                {
                    "category_id": category["id"],
                    "face": face,
                    "segmentation": mask_polygons(region),
                    "rle": encode_rle(region),
                    "area": int(region.sum()),
                    "bbox": bbox(region),
                    "iscrowd": 0,
                }
            )
    return annotations


@dataclass
class CocoPhoto:
    """One photo's entry, made in whichever process predicted it; ids are given when the file is written."""

    order: int  # the photo's place among the inputs: the file lists photos in input order
    file_name: str
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)


def coco_document(photos: list[CocoPhoto], description: str) -> dict:
    """The COCO instances document of the predicted photos: images, annotations and categories."""
    images, annotations = [], []
    for image_id, photo in enumerate(sorted(photos, key=lambda photo: photo.order), start=1):
        images.append({"id": image_id, "file_name": photo.file_name, "width": photo.width, "height": photo.height})
        for annotation in photo.annotations:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    return {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": list(CATEGORIES),
    }


def write_coco(path: Path, photos: list[CocoPhoto], version: str) -> None:
    """The run's COCO file, written whole or not at all; photos that failed are not in it."""
    write_text_atomic(path, json.dumps(coco_document(photos, f"lip masks by lipseg {version} predict")) + "\n")
