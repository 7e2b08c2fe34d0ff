"""The segmenters' loss: cross-entropy + soft Dice + soft Jaccard over the lip classes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from lipseg.core.params import Section, param
from lipseg.data.labels import IGNORE, NUM_CLASSES


@dataclass(frozen=True)
class LossWeights(Section):
    ce: float = param(1.0, low=0)
    dice: float = param(1.0, low=0)
    jaccard: float = param(0.0, low=0)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Cross-entropy + soft Dice + soft Jaccard (both 1 - mean over the lip classes, pooled over the
    batch as the metrics pool over images); IGNORE pixels count in none of them."""
    valid = labels != IGNORE  # (B, S, S)
    loss = (
        weights.ce * F.cross_entropy(logits, labels.long(), ignore_index=IGNORE) if weights.ce else logits.new_zeros(())
    )
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
