"""Training a segmenter with the one fit loop: random mirroring per batch, early stopping on the
validation lips F1."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lipseg.core.checkpoint import content_digest
from lipseg.core.fit import FitTask
from lipseg.data.crops import FaceSources, Jitter, LocatorSpread, SegmentCrops, images_to_tensor
from lipseg.data.labels import BACKGROUND, IGNORE
from lipseg.evaluation.pixels import PixelCounts
from lipseg.segmentation.crops import draw_crops
from lipseg.segmentation.loss import LossWeights, distillation_loss, segmentation_loss


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


class OnlineSegmentationTask(SegmentationTask):
    """Training crops cut anew from each face's source patch at every step (`draw_crops`): every epoch sees
    fresh boxes, rotations, mirrorings and lighting, which ~500 faces need more than more epochs. The loop's
    inputs are face indices; its seeded generator draws every crop, so a resumed run draws the same.

    With a `teacher` (a trained segmenter, frozen), each batch's targets also carry the teacher's class
    probabilities on the same crops: (B, 1 + 4, S, S), labels first; the loss adds `weights.distill` x KL."""

    def __init__(
        self,
        weights: LossWeights,
        val: SegmentCrops,
        sources: FaceSources,
        size: int,
        spread: LocatorSpread,
        jitter: Jitter,
        annotation_offset: float = 0.0,
        batch_size: int = 128,
        teacher: nn.Module | None = None,
    ):
        super().__init__(weights, val, flip=False, batch_size=batch_size)
        self.sources, self.size, self.spread, self.jitter = sources, size, spread, jitter
        self.annotation_offset = annotation_offset
        if teacher is not None and not weights.distill:
            raise ValueError("a teacher needs loss_weights.distill > 0")
        if weights.distill and teacher is None:
            raise ValueError("loss_weights.distill > 0 needs a teacher")
        self.teacher = teacher.eval() if teacher is not None else None

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return segmentation_loss(predicted, target, self.weights)
        labels, teacher_probabilities = target[:, 0].to(torch.uint8), target[:, 1:]
        return segmentation_loss(predicted, labels, self.weights) + self.weights.distill * distillation_loss(
            predicted, teacher_probabilities, labels
        )

    def augment(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        draws = torch.cat(
            [torch.randn(len(inputs), 3, generator=generator), torch.rand(len(inputs), 5, generator=generator)], dim=1
        )
        crops, masks = draw_crops(
            self.sources,
            inputs.numpy(),
            self.size,
            self.spread,
            self.jitter,
            draws.numpy().astype(np.float64),
            self.annotation_offset,
        )
        inputs, labels = images_to_tensor(crops), torch.from_numpy(masks)
        if self.teacher is None:
            return inputs, labels
        with torch.no_grad():
            device = next(self.teacher.parameters()).device
            teacher_probabilities = self.teacher(inputs.to(device)).float().softmax(dim=1).cpu()  # (B, 4, S, S)
        return inputs, torch.cat([labels.unsqueeze(1).float(), teacher_probabilities], dim=1)

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "size": self.size,
            "spread": vars(self.spread),
            "jitter": self.jitter.to_dict(),
            "annotation_offset": self.annotation_offset,
            "sources": content_digest(self.sources.images, self.sources.lips),
            "teacher": content_digest(*self.teacher.state_dict().values()) if self.teacher is not None else None,
        }
