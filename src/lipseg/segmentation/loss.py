"""The segmenters' loss: cross-entropy + soft Dice + soft Jaccard over the lip classes, and the distillation
term that pulls a small net's class probabilities toward a larger teacher's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lipseg.core.params import ParamsError, Section, param
from lipseg.data.labels import IGNORE, NUM_CLASSES


@dataclass(frozen=True)
class LossWeights(Section):
    ce: float = param(1.0, low=0)
    dice: float = param(1.0, low=0)
    jaccard: float = param(0.0, low=0)
    boundary: float = param(0.0, low=0)  # extra cross-entropy weight on pixels within a pixel of a class border
    distill: float = param(0.0, low=0)  # KL divergence from a teacher's probabilities (train_segmenter <arch>.teacher)

    def check(self, name: str) -> None:
        if not (self.ce or self.dice or self.jaccard or self.distill):
            raise ParamsError(f"params.yaml: {name} needs ce, dice, jaccard or distill above 0 (all are 0)")
        if self.boundary and not self.ce:
            raise ParamsError(f"params.yaml: {name}.boundary weights cross-entropy up: it needs {name}.ce > 0")


def class_borders(labels: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool: pixels whose 3x3 neighbourhood holds another label (IGNORE counts as background)."""
    one_hot = F.one_hot(torch.where(labels == IGNORE, 0, labels).long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
    highest = F.max_pool2d(one_hot, 3, stride=1, padding=1)
    lowest = -F.max_pool2d(-one_hot, 3, stride=1, padding=1)
    return (highest - lowest).amax(dim=1) > 0


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Cross-entropy (border pixels weighted up by `weights.boundary`) + soft Dice + soft Jaccard (both 1 - mean
    over the lip classes, pooled over the batch as the metrics pool over images); IGNORE pixels count in none."""
    valid = labels != IGNORE  # (B, S, S)
    loss = logits.new_zeros(())
    if weights.ce and weights.boundary:
        # The thin upper lip is mostly border: weighting the pixels next to a class change makes the outline,
        # which decides F1 there, count more than the easy interiors.
        per_pixel = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE, reduction="none")  # (B, S, S)
        pixel_weights = (1.0 + weights.boundary * class_borders(labels).float()) * valid.float()
        loss = weights.ce * (per_pixel * pixel_weights).sum() / pixel_weights.sum().clamp_min(1.0)
    elif weights.ce:
        loss = weights.ce * F.cross_entropy(logits, labels.long(), ignore_index=IGNORE)
    if weights.dice or weights.jaccard:
        probabilities = logits.float().softmax(dim=1)[:, 1:]  # (B, 3, S, S): background is the complement
        one_hot = F.one_hot(torch.where(valid, labels, 0).long(), NUM_CLASSES).permute(0, 3, 1, 2)[:, 1:].float()
        keep = valid.unsqueeze(1).float()
        probabilities, one_hot = probabilities * keep, one_hot * keep
        intersection = (probabilities * one_hot).sum(dim=(0, 2, 3))
        total = probabilities.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
        smooth = 1.0  # keeps a class absent from the batch (closed mouths: no inner mouth) from dividing by 0
        if weights.dice:
            loss = loss + weights.dice * (1 - ((2 * intersection + smooth) / (total + smooth)).mean())
        if weights.jaccard:
            loss = loss + weights.jaccard * (1 - ((intersection + smooth) / (total - intersection + smooth)).mean())
    return loss


def distillation_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel KL(teacher || student) over the non-IGNORE pixels: the teacher's soft outlines carry
    where it is unsure (the thin upper lip's edge), which the hard labels cannot."""
    valid = (labels != IGNORE).float()  # (B, S, S)
    log_student = logits.float().log_softmax(dim=1)
    per_pixel = (teacher_probabilities * (teacher_probabilities.clamp_min(1e-8).log() - log_student)).sum(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0)
