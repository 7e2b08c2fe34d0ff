"""Flip test-time averaging: a prediction averaged with the prediction on the mirror image, mirrored back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Batch = TypeVar("Batch", np.ndarray, "torch.Tensor")


def mirrored(batch: Batch) -> Batch:
    """The batch's images mirrored left to right (along the last axis: width in (B, C, H, W)). NumPy
    arrays need no torch (the ONNX engine runs without it)."""
    if isinstance(batch, np.ndarray):
        return batch[..., ::-1]
    import torch

    return torch.flip(batch, dims=[batch.dim() - 1])


def average_with_mirror(plain: Batch, on_mirrored: Batch, mirror_back: Callable[[Batch], Batch]) -> Batch:
    """(plain + mirror_back(on_mirrored)) / 2: `on_mirrored` is the output for the mirrored input, and
    `mirror_back` maps it into the plain image's frame (reversed x for points, flipped maps for masks)."""
    return (plain + mirror_back(on_mirrored)) / 2.0
