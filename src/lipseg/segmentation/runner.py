"""Segmenting the mouths of a photo: each face's crop placed on its TCNN lips, class probabilities from
the net (optionally flip-averaged), and the probabilities pasted back into a photo-sized label mask.
The net runs in torch or, with no torch import, in onnxruntime (lipseg.segmentation.onnx_runner)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lipseg.core.model_meta import ModelFolderError, read_model_meta
from lipseg.core.tta import average_with_mirror
from lipseg.data.geometry import (
    CropGeometry,
    apply_affine,
    crop_pixel_transform,
    image_to_crop_transform,
    warp_crop,
)
from lipseg.data.labels import BACKGROUND, NUM_CLASSES
from lipseg.data.landmarks import mouth_width

if TYPE_CHECKING:
    from lipseg.segmentation.model import SegmenterNet

ENGINES = ("torch", "onnx")


def unmirror_maps(maps: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Probability maps (F, C, S, S) predicted on mirrored crops, back in the plain crops' frame: mirrored,
    then moved `shifts` (F,) crop pixels right, where the annotation frame's axis sits off the content's
    (lipseg.data.landmarks.annotation_axis; 0: a plain mirror)."""
    back = np.ascontiguousarray(maps[..., ::-1])
    for index, shift in enumerate(shifts):
        if shift:
            move = np.float64([[1, 0, shift], [0, 1, 0]])
            channels = back[index].transpose(1, 2, 0)  # (S, S, C): cv2 warps channels last
            moved = cv2.warpAffine(
                channels, move, channels.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            back[index] = moved.reshape(channels.shape).transpose(2, 0, 1)
    return back


def batch_probabilities(
    run: Callable[[np.ndarray], np.ndarray],
    crops: np.ndarray,
    flip_average: bool = False,
    batch_size: int = 64,
    shifts: np.ndarray | None = None,
) -> np.ndarray:
    """(F, S, S, 3) uint8 crops -> (F, 4, S, S) float32 class probabilities, `run` giving them for a batch
    (torch or onnxruntime). Flip averaging adds the mirrored crop's, mirrored back about the annotation
    frame's axis (`shifts`: crop pixels per crop)."""
    shifts = np.zeros(len(crops)) if shifts is None else np.asarray(shifts, np.float64)
    out = []
    for start in range(0, len(crops), batch_size):
        batch = crops[start : start + batch_size]
        probabilities = run(batch)
        if flip_average:
            on_mirror = run(np.ascontiguousarray(batch[:, :, ::-1]))  # (B, S, S, 3): mirrored along the width
            moves = shifts[start : start + batch_size]
            probabilities = average_with_mirror(
                probabilities, on_mirror, lambda maps, moves=moves: unmirror_maps(maps, moves)
            )
        out.append(probabilities.astype(np.float32, copy=False))
    size = crops.shape[1] if crops.ndim == 4 else 0
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES, size, size), np.float32)


def torch_run(model: SegmenterNet) -> Callable[[np.ndarray], np.ndarray]:
    """A segmenter net as a batch function: uint8 crops (B, S, S, 3) -> probabilities (B, 4, S, S)."""
    import torch

    from lipseg.data.crops import images_to_tensor

    model.eval()
    device = next(model.parameters()).device

    def run(crops: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(images_to_tensor(crops).to(device)).softmax(dim=1).float().cpu().numpy()

    return run


def crop_probabilities(
    model: SegmenterNet,
    crops: np.ndarray,
    flip_average: bool = False,
    batch_size: int = 64,
    shifts: np.ndarray | None = None,
) -> np.ndarray:
    """`batch_probabilities` of a torch segmenter net."""
    return batch_probabilities(torch_run(model), crops, flip_average, batch_size, shifts)


def paste_probabilities(probabilities: np.ndarray, transforms: np.ndarray, height: int, width: int) -> np.ndarray:
    """Label mask (H, W) uint8 of the photo from per-face crop probabilities.

    Each class channel is warped into the image (image pixel centre -> crop pixel centre, bilinear),
    background is certain outside the crop, and the argmax is taken at image resolution. Where two
    faces' crops overlap, the face more sure that the pixel is mouth wins it."""
    mask = np.zeros((height, width), np.uint8)
    mouth_best = np.zeros((height, width), np.float32)  # 1 - P(background) of the face owning each pixel
    for face_probabilities, transform in zip(probabilities, transforms):
        size = face_probabilities.shape[-1]
        pixel = crop_pixel_transform(transform, size)
        corners = apply_affine(
            cv2.invertAffineTransform(pixel),
            np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]]),
        )
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [width, height])
        if x1 <= x0 or y1 <= y0:
            continue
        region = pixel.copy()
        region[:, 2] += pixel[:, :2] @ np.array([x0, y0], np.float64)  # region pixel (0, 0) is image pixel (x0, y0)
        channels = []
        for index, channel in enumerate(face_probabilities):
            channels.append(
                cv2.warpAffine(
                    channel,
                    region,
                    (int(x1 - x0), int(y1 - y0)),
                    flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=1.0 if index == BACKGROUND else 0.0,
                )
            )
        warped = np.stack(channels)  # (4, h, w)
        labels = warped.argmax(axis=0).astype(np.uint8)
        sureness = 1.0 - warped[BACKGROUND]
        window_best, window_mask = mouth_best[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        wins = sureness > window_best
        window_mask[wins], window_best[wins] = labels[wins], sureness[wins]
    return mask


class SegmenterRunner:
    """A segmenter folder ready for photos: the TCNN lips give each face's crop, the net labels it. The net
    runs in torch, or in onnxruntime with no torch import (`engine="onnx"`: the folder's shipped export,
    or one made once and cached). `ensemble`: more segmenter folders (same crop geometry) whose
    probabilities are averaged in."""

    def __init__(
        self,
        folder: Path,
        flip_average: bool = False,
        threads: int | None = None,
        ensemble: tuple[Path, ...] = (),
        engine: str = "torch",
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.folder, self.flip_average, self.engine = Path(folder), flip_average, engine
        self.meta = self._meta(self.folder)
        self.geometry = CropGeometry(**self.meta["geometry"])
        self.annotation_offset = float(self.meta["config"].get("annotation_offset", 0.0))
        self.model = None  # the torch net (engine "torch")
        if engine == "torch":
            from lipseg.core.runtime import set_threads
            from lipseg.segmentation.model import load_segmenter

            set_threads(threads or 0)
            self.model = load_segmenter(self.folder)[0]
            self.runs = [torch_run(self.model)]
        else:
            from lipseg.segmentation.onnx_runner import OnnxSegmenter

            self.runs = [OnnxSegmenter(self.folder, threads or 1)]
        for other in ensemble:
            meta = self._meta(Path(other))
            offset = float(meta["config"].get("annotation_offset", 0.0))
            if CropGeometry(**meta["geometry"]) != self.geometry or offset != self.annotation_offset:
                raise ValueError(f"{other}: an ensemble needs one crop geometry, as {folder}'s")
            if engine == "torch":
                self.runs.append(torch_run(load_segmenter(Path(other))[0]))
            else:
                self.runs.append(OnnxSegmenter(Path(other), threads or 1))

    @staticmethod
    def _meta(folder: Path) -> dict:
        meta = read_model_meta(folder)
        if meta.get("family") != "segmenter":
            raise ModelFolderError(f"{folder} holds a {meta.get('family')!r} model, not a 'segmenter' one")
        return meta

    def transforms(self, faces_lips: list[np.ndarray]) -> np.ndarray:
        return np.array([image_to_crop_transform(*self.geometry.box(lips)) for lips in faces_lips], np.float64).reshape(
            -1, 2, 3
        )

    def label_mask(self, image: np.ndarray, faces_lips: list[np.ndarray]) -> np.ndarray:
        height, width = image.shape[:2]
        if not len(faces_lips):
            return np.zeros((height, width), np.uint8)
        transforms = self.transforms(faces_lips)
        size = self.geometry.size
        crops = np.stack([warp_crop(image, transform, size) for transform in transforms])
        # Mirror back about the annotation frame's axis: 2 offsets, in crop pixels of each face's mouth width.
        shifts = np.array(
            [
                2.0 * self.annotation_offset * mouth_width(apply_affine(crop_pixel_transform(transform, size), lips))
                for transform, lips in zip(transforms, faces_lips)
            ]
        )
        probabilities = np.mean(
            [batch_probabilities(run, crops, self.flip_average, shifts=shifts) for run in self.runs], axis=0
        )
        return paste_probabilities(probabilities, transforms, height, width)
