"""Lips (and features) from crops in torch, the one inference call that training, evaluation and
deployment share (lipseg.tcnn.export runs the same model in onnxruntime)."""

from __future__ import annotations

import numpy as np
import torch

from lipseg.core.tta import average_with_mirror, mirrored
from lipseg.data.crops import images_to_tensor
from lipseg.tcnn.crop_points import CropPredictions, unmirror
from lipseg.tcnn.model import TCNN, TweakedTCNN, VanillaTCNN


@torch.no_grad()
def predict_crops(
    model: TCNN, images: np.ndarray, batch_size: int = 256, flip_average: bool = False
) -> CropPredictions:
    """Lips (normalised crop coordinates) and the head used for each crop. `flip_average` also runs the
    mirrored crop through the same head and averages the two (test-time augmentation)."""
    model.eval()
    device = next(model.parameters()).device
    lips, clusters = [], []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size]).to(device)
        if isinstance(model, TweakedTCNN):
            points, chosen = model.forward_with_clusters(batch)
        else:
            points, chosen = model(batch), torch.full((len(batch),), -1)
        points = points.cpu().numpy()
        if flip_average:  # the mirror image goes through the same head: the gate decides once per face
            if isinstance(model, TweakedTCNN):
                on_mirror = model.forward_with_clusters(mirrored(batch), chosen)[0]
            else:
                on_mirror = model(mirrored(batch))
            points = average_with_mirror(
                points, on_mirror.cpu().numpy(), lambda lips: unmirror(lips, model.config.annotation_offset)
            )
        lips.append(points)
        clusters.append(chosen.cpu().numpy())
    if not lips:
        return CropPredictions(np.zeros((0, 56, 2), np.float32), np.zeros(0, np.int64))
    return CropPredictions(np.concatenate(lips).astype(np.float32), np.concatenate(clusters).astype(np.int64))


@torch.no_grad()
def trunk_and_fc5(model: VanillaTCNN, images: np.ndarray, batch_size: int = 512) -> tuple[torch.Tensor, np.ndarray]:
    """Flattened conv features (N, F) and FC5 features (N, D) of uint8 crops, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    trunk_parts, fc5_parts = [], []
    for start in range(0, len(images), batch_size):
        batch = images_to_tensor(images[start : start + batch_size]).to(device)
        trunk = model.trunk_features(batch)
        trunk_parts.append(trunk.cpu())
        fc5_parts.append(model.head.features(trunk).cpu())
    if not trunk_parts:
        return torch.zeros(0, model.trunk.out_features), np.zeros((0, model.config.fc5), np.float32)
    return torch.cat(trunk_parts), torch.cat(fc5_parts).numpy()
