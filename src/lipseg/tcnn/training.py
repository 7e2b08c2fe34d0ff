"""Training the TCNN's landmark regression with the one fit loop: the loss by name, validation NME."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lipseg.core.checkpoint import content_digest
from lipseg.core.fit import FitTask
from lipseg.tcnn.losses import LOSSES, mouth_normalised_error


@dataclass(frozen=True)
class BaseTraining:
    """How the base model was trained, recorded in its model folder (`training`): the heads are
    fine-tuned with the same loss, weight decay and learning-rate schedule."""

    loss: str
    weight_decay: float
    lr_schedule: str
    lr_patience: int
    lr_factor: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> BaseTraining:
        recorded = meta.get("training")
        if not isinstance(recorded, dict):
            raise ValueError(
                "the base model folder records no training recipe (`training`); retrain it with train_base"
            )
        return cls(**{key: recorded[key] for key in cls.__dataclass_fields__})


class LandmarkTask(FitTask):
    """(B, ...) inputs -> (B, 56, 2) points in crop coordinates, trained with `loss` (wing or mse) and
    early-stopped on the validation NME in mouth widths; `val_loss` is the same loss on validation."""

    monitor = "val_nme"
    mode = "min"

    def __init__(self, loss: str, val_inputs: torch.Tensor, val_targets: torch.Tensor, batch_size: int = 256):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}")
        if len(val_inputs) == 0:
            raise ValueError("need validation data (got none)")
        self.loss_name, self.loss_function = loss, LOSSES[loss]
        self.val_inputs, self.val_targets, self.batch_size = val_inputs, val_targets, batch_size

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_function(predicted, target)

    @torch.no_grad()
    def validate(self, module: nn.Module, device: torch.device) -> dict[str, float]:
        module.eval()
        loss_sum, nme_sum = 0.0, 0.0
        for start in range(0, len(self.val_inputs), self.batch_size):
            batch = self.val_inputs[start : start + self.batch_size].to(device)
            target = self.val_targets[start : start + self.batch_size].to(device)
            predicted = module(batch)
            loss_sum += float(self.loss_function(predicted, target)) * len(batch)
            nme_sum += float(mouth_normalised_error(predicted, target).sum())
        return {"val_loss": loss_sum / len(self.val_inputs), "val_nme": nme_sum / len(self.val_inputs)}

    def settings(self) -> dict[str, Any]:
        return {"loss": self.loss_name, "validation": content_digest(self.val_inputs, self.val_targets)}
