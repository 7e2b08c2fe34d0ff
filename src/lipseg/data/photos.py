"""Reading the photos of dataset records: each through the one image reader, every failure a reject."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from tqdm import tqdm

from lipseg.core.images import DEFAULT_MAX_PIXELS, ImageError, read_image
from lipseg.data.helen import Record
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.data.rejects import Reject

LIPS_OUTSIDE = "lip points lie outside the image"


def lips_outside_image(lips: np.ndarray, height: int, width: int) -> bool:
    """True when annotated lips reach well beyond the image (10% of its size): a wrong annotation or the
    wrong image, and a crop of it would be border padding."""
    slack = 0.1 * max(height, width)
    return bool((lips < -slack).any() or (lips[:, 0] > width + slack).any() or (lips[:, 1] > height + slack).any())


def read_record_images(
    records: list,
    rejects: list[Reject],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "read",
    progress: bool = True,
) -> Iterator[tuple[Any, np.ndarray]]:
    """(record, BGR image) for each record whose image reads (lipseg.core.images.read_image, `max_pixels`)
    and, for Helen records, whose lips lie in the image; every other record becomes a reject with the reason."""
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
