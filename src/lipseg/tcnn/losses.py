"""Landmark losses and the error they are judged by, all in mouth widths so that face size drops out."""

from __future__ import annotations

import math

import torch

from lipseg.data.landmarks import OUTER


def mouth_width_torch(lips: torch.Tensor) -> torch.Tensor:
    """(B, 56, 2) -> (B,): left corner to the farthest outer point, as landmarks.mouth_width."""
    outer = lips[:, OUTER]
    return (outer - outer[:, :1]).norm(dim=-1).amax(dim=1)


def mouth_normalised_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared point error divided by the squared mouth width: scale-free across faces."""
    squared = ((predicted - target) ** 2).sum(dim=-1).mean(dim=1)  # (B,)
    return (squared / mouth_width_torch(target).clamp_min(1e-6) ** 2).mean()


def wing_loss(
    predicted: torch.Tensor, target: torch.Tensor, width: float = 0.2, curvature: float = 0.04
) -> torch.Tensor:
    """Wing loss (Feng et al., CVPR 2018) on point offsets in mouth widths: log-shaped for small errors,
    so the already-close points keep pulling, and linear for large ones, so outliers do not dominate."""
    scale = mouth_width_torch(target).clamp_min(1e-6)[:, None, None]
    error = ((predicted - target) / scale).abs()
    constant = width - width * math.log1p(width / curvature)
    loss = torch.where(error < width, width * torch.log1p(error / curvature), error - constant)
    return loss.sum(dim=-1).mean()


LOSSES = {"mse": mouth_normalised_mse, "wing": wing_loss}


def mouth_normalised_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample NME: mean point-to-point distance / mouth width, (B,)."""
    distance = (predicted - target).norm(dim=-1).mean(dim=1)
    return distance / mouth_width_torch(target).clamp_min(1e-6)
