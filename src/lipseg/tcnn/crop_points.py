"""What the TCNN gives for a batch of crops, whichever engine ran it (torch or onnxruntime)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lipseg.data.landmarks import annotation_axis, flip_lips


@dataclass
class CropPredictions:
    lips: np.ndarray  # (N, 56, 2) normalised crop coordinates
    clusters: np.ndarray  # (N,) head used; -1 for a vanilla model


def unmirror(lips: np.ndarray, annotation_offset: float) -> np.ndarray:
    """Lips predicted on mirrored crops (B, 56, 2) back in the plain crops' frame: mirrored about the
    annotation frame's axis, as the network was trained (lipseg.data.landmarks.annotation_axis)."""
    return flip_lips(lips, annotation_axis(lips, annotation_offset))
