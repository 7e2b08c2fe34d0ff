"""The segmenter as a saved model: one of the nets behind the normalisation of its training crops, so a
model folder alone runs it (as with the TCNN)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from lipseg.core.model_folder import SavableModel, load_model_folder, parameter_count
from lipseg.data.geometry import CropGeometry
from lipseg.data.labels import LABELS
from lipseg.segmentation.nets import SegmenterConfig, build_segmenter


class SegmenterNet(SavableModel):
    """BGR uint8-valued crops (B, 3, S, S) as float in [0, 255] -> logits (B, 4, S, S)."""

    family = "segmenter"

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.network = build_segmenter(config)
        self.register_buffer("mean", torch.zeros(1, config.in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, config.in_channels, 1, 1))

    def set_normalisation(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)  # (B, 4, S, S)

    def folder_meta(self) -> dict[str, Any]:
        return {
            "parameters": parameter_count(self.network),
            "classes": {str(label): name.replace("_", " ") for label, name in LABELS.items()},
            "input": "BGR uint8 mouth crops (B, S, S, 3) -> float (B, 3, S, S) in [0, 255]; "
            "box = geometry.box(TCNN lips)",
        }

    @classmethod
    def from_folder_meta(cls, meta: dict[str, Any]) -> SegmenterNet:
        return cls(SegmenterConfig.from_dict(meta["config"]))


class MeanProbabilities(torch.nn.Module):
    """Several segmenters as one: the log of their mean class probabilities, so that a softmax of the
    output is the ensemble's probabilities (a teacher made of an ensemble)."""

    def __init__(self, members: list[SegmenterNet]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([member(images).softmax(dim=1) for member in self.members]).mean(dim=0)
        return mean.clamp_min(1e-12).log()  # (B, 4, S, S)


def load_segmenter(folder: Path) -> tuple[SegmenterNet, CropGeometry, dict[str, Any]]:
    """(model in eval mode, the crop geometry it was trained with, metadata) of a segmenter model folder."""
    model, meta = load_model_folder(folder, SegmenterNet)
    return model, CropGeometry(**meta["geometry"]), meta


def load_pretrained(model: SegmenterNet, path: Path) -> tuple[int, list[str]]:
    """Start `model`'s network from a safetensors file (a segmenter folder's weights, or a bare network
    state dict, e.g. trained on a face-parsing set). Tensors whose name or shape does not match (a head
    with another class count, say) keep their initialisation; the normalisation of our crops is kept.
    Returns (tensors loaded, names left as initialised)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained_weights: {path} does not exist")
    state = {
        key.removeprefix("network."): value for key, value in load_file(str(path)).items() if key not in ("mean", "std")
    }
    own = model.network.state_dict()
    usable = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    model.network.load_state_dict(usable, strict=False)
    return len(usable), sorted(set(own) - set(usable))
