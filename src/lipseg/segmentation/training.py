"""Training a segmenter with the one fit loop: random mirroring per batch, early stopping on the
validation lips F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lipseg.core.checkpoint import content_digest
from lipseg.core.fit import FitTask
from lipseg.data.crops import SegmentCrops, images_to_tensor
from lipseg.data.labels import BACKGROUND, IGNORE
from lipseg.evaluation.pixels import PixelCounts
from lipseg.segmentation.loss import LossWeights, segmentation_loss


class SegmentationTask(FitTask):
    """Crops (B, 3, S, S) -> logits (B, 4, S, S) against label masks (B, S, S)."""

    monitor = "val_f1_lips"
    mode = "max"

    def __init__(self, weights: LossWeights, val: SegmentCrops, flip: bool = True, batch_size: int = 128):
        if len(val) == 0:
            raise ValueError("need validation crops (got none)")
        self.weights, self.val, self.flip, self.batch_size = weights, val, flip, batch_size

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(predicted, target, self.weights)

    def augment(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.flip:  # mirroring keeps every class (upper lip stays upper lip), so labels just mirror too
            flips = torch.rand(len(inputs), generator=generator) < 0.5
            inputs[flips], targets[flips] = inputs[flips].flip(dims=[3]), targets[flips].flip(dims=[2])
        return inputs, targets

    @torch.no_grad()
    def validate(self, module: nn.Module, device: torch.device) -> dict[str, float]:
        """Mean loss and pooled lips F1 on the validation crops (IGNORE pixels scored as background on both sides)."""
        module.eval()
        images, masks = self.val.images, self.val.masks
        counts, loss_sum = PixelCounts(), 0.0
        for start in range(0, len(images), self.batch_size):
            batch = images_to_tensor(images[start : start + self.batch_size]).to(device)
            labels = torch.from_numpy(masks[start : start + self.batch_size]).to(device)
            logits = module(batch)
            loss_sum += float(segmentation_loss(logits, labels, self.weights)) * len(batch)
            predicted = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            for predicted_mask, true_mask in zip(predicted, masks[start : start + self.batch_size]):
                scored = true_mask != IGNORE
                counts.add(np.where(scored, predicted_mask, BACKGROUND), np.where(scored, true_mask, BACKGROUND))
        return {"val_loss": loss_sum / len(images), "val_f1_lips": float(counts.pooled()["lips"]["f1"])}

    def settings(self) -> dict[str, Any]:
        return {
            "weights": self.weights.to_dict(),
            "flip": self.flip,
            "validation": content_digest(self.val.images, self.val.masks),
        }
