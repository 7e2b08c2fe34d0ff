"""The Tweaked CNN (Wu et al., "Facial Landmark Detection with Tweaked Convolutional Neural Networks").

VanillaTCNN regresses the 56 lip points from a small crop. TweakedTCNN keeps its convolutions and
adds K fully connected heads, one per lip state; a Gaussian mixture over the vanilla FC5 features
(the gate) picks the head for each crop. Both live in model folders (lipseg.core.model_folder).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipseg.core.model_folder import SavableModel, load_model_folder
from lipseg.data.geometry import CropGeometry
from lipseg.data.landmarks import LIP_COUNT

# Far more heads than a mixture over a few thousand training crops can support: a folder claiming more is
# damaged, and building millions of heads would keep the loader busy for hours (even on the meta device).
MAX_HEADS = 1024


@dataclass
class TCNNConfig:
    input_size: int = 40
    in_channels: int = 3
    conv_channels: list[int] = field(default_factory=lambda: [16, 48, 64, 64])
    conv_kernels: list[int] = field(default_factory=lambda: [5, 3, 3, 2])
    fc5: int = 100
    batch_norm: bool = False  # BatchNorm after each conv: faster, steadier training (not in the paper)
    conv_activation: str = "abs_tanh"  # abs_tanh (the paper's) | relu; FC5 always uses |tanh| for the GMM
    num_points: int = LIP_COUNT
    # Where the training annotations sit off the image content, in mouth widths (x): flip averaging mirrors
    # about that axis (lipseg.data.landmarks.annotation_axis). 0 for exact annotations.
    annotation_offset: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TCNNConfig:
        known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
        return cls(**known)


class AbsTanh(nn.Module):
    """|tanh(x)|: the TCNN paper's activation; rectified like ReLU but bounded, which keeps FC5
    features in [0, 1) and so well suited to a Gaussian mixture."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(torch.tanh(x))


CONV_ACTIVATIONS: dict[str, type[nn.Module]] = {"abs_tanh": AbsTanh, "relu": nn.ReLU}


class Normaliser(nn.Module):
    """Subtracts the training mean image and divides by the std image, so callers feed raw pixels."""

    def __init__(self, size: int, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, size, size))
        self.register_buffer("std", torch.ones(channels, size, size))

    def set_images(self, mean_hwc: np.ndarray, std_hwc: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(np.ascontiguousarray(mean_hwc.transpose(2, 0, 1))))
        self.std.copy_(torch.from_numpy(np.ascontiguousarray(std_hwc.transpose(2, 0, 1))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class ConvTrunk(nn.Module):
    """conv 16@5x5, pool; conv 48@3x3, pool; conv 64@3x3, pool; conv 64@2x2 (sizes from the config)."""

    def __init__(self, config: TCNNConfig):
        super().__init__()
        if config.conv_activation not in CONV_ACTIVATIONS:
            raise ValueError(
                f"conv_activation must be one of {tuple(CONV_ACTIVATIONS)}, got {config.conv_activation!r}"
            )
        layers: list[nn.Module] = []
        channels = config.in_channels
        last = len(config.conv_channels) - 1
        for index, (width, kernel) in enumerate(zip(config.conv_channels, config.conv_kernels, strict=True)):
            layers.append(nn.Conv2d(channels, width, kernel, bias=not config.batch_norm))
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(CONV_ACTIVATIONS[config.conv_activation]())
            if index < last:  # the last conv is not pooled, as in the paper
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.layers = nn.Sequential(*layers)
        with torch.no_grad():
            probe = torch.zeros(1, config.in_channels, config.input_size, config.input_size)
            self.out_features = int(self.layers(probe).numel())

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        # (B, 3, 40, 40) -> (B, 16, 36, 36) -> (B, 16, 18, 18) -> (B, 48, 16, 16) -> (B, 48, 8, 8)
        # -> (B, 64, 6, 6) -> (B, 64, 3, 3) -> (B, 64, 2, 2) -> (B, 256)
        return self.layers(normalised).flatten(1)


class LandmarkHead(nn.Module):
    """FC5 + FC6: the part the tweak copies once per cluster."""

    def __init__(self, in_features: int, config: TCNNConfig):
        super().__init__()
        self.fc5 = nn.Linear(in_features, config.fc5)
        self.act5 = AbsTanh()
        self.fc6 = nn.Linear(config.fc5, config.num_points * 2)
        self.num_points = config.num_points

    def features(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.act5(self.fc5(trunk_features))  # (B, 100)

    def forward(self, trunk_features: torch.Tensor) -> torch.Tensor:
        return self.fc6(self.features(trunk_features)).view(-1, self.num_points, 2)  # (B, 56, 2)


class TCNN(SavableModel):
    """What both TCNNs share in a model folder: the family, and rebuilding either kind from its metadata."""

    family = "tcnn"
    config: TCNNConfig

    def folder_meta(self) -> dict[str, Any]:
        tweaked = isinstance(self, TweakedTCNN)
        return {
            "kind": "tweaked" if tweaked else "vanilla",
            "components": len(self.heads) if tweaked else 0,
            "points": "56 Helen lip points (58..113 order), each contour re-spaced by arc length",
            "input": "BGR uint8 crops (B, S, S, 3) -> float (B, 3, S, S) in [0, 255]",
        }

    @classmethod
    def from_folder_meta(cls, meta: dict[str, Any]) -> TCNN:
        config = TCNNConfig.from_dict(meta["config"])
        if meta["kind"] == "tweaked":
            components = meta["components"]
            if isinstance(components, bool) or not isinstance(components, int) or not 1 <= components <= MAX_HEADS:
                raise ValueError(f"components must be an integer from 1 to {MAX_HEADS}, got {components!r}")
            return TweakedTCNN(config, components)
        if meta["kind"] == "vanilla":
            return VanillaTCNN(config)
        raise ValueError(f"unknown TCNN kind {meta['kind']!r} (expected vanilla or tweaked)")


def load_tcnn(folder: Path) -> tuple[TCNN, CropGeometry, dict[str, Any]]:
    """(model in eval mode, the crop geometry it was trained with, metadata) of a TCNN model folder."""
    model, meta = load_model_folder(folder, TCNN)
    return model, CropGeometry(**meta["geometry"]), meta


class VanillaTCNN(TCNN):
    def __init__(self, config: TCNNConfig):
        super().__init__()
        self.config = config
        self.normaliser = Normaliser(config.input_size, config.in_channels)
        self.trunk = ConvTrunk(config)
        self.head = LandmarkHead(self.trunk.out_features, config)

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.normaliser(images))

    def fc5_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.features(self.trunk_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk_features(images))


class GaussianGate(nn.Module):
    """Picks the most probable mixture component for each FC5 feature vector.

    The mixture is fitted with scikit-learn (gmm.py); here it is re-expressed with Cholesky factors of
    the precision matrices, so gating runs in torch (and exports to ONNX) without scikit-learn.
    """

    def __init__(self, components: int, dimensions: int):
        super().__init__()
        self.register_buffer("means", torch.zeros(components, dimensions))
        self.register_buffer("precision_cholesky", torch.eye(dimensions).repeat(components, 1, 1))
        self.register_buffer("log_weights", torch.full((components,), -float(np.log(components))))

    def set_mixture(self, weights: np.ndarray, means: np.ndarray, precision_cholesky: np.ndarray) -> None:
        self.means.copy_(torch.from_numpy(means.astype(np.float32)))
        self.precision_cholesky.copy_(torch.from_numpy(precision_cholesky.astype(np.float32)))
        self.log_weights.copy_(torch.from_numpy(np.log(weights).astype(np.float32)))

    def log_joint(self, features: torch.Tensor) -> torch.Tensor:
        """log p(x, k) up to the constant -D/2 log(2 pi), which does not change the argmax: (B, K)."""
        centred = features[:, None, :] - self.means[None]  # (B, K, D)
        projected = torch.einsum("bkd,kde->bke", centred, self.precision_cholesky)  # (B, K, D)
        log_det = torch.log(torch.diagonal(self.precision_cholesky, dim1=1, dim2=2)).sum(dim=1)  # (K,)
        return self.log_weights + log_det - 0.5 * (projected**2).sum(dim=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.log_joint(features).argmax(dim=1)  # (B,)


def select_heads(heads: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """(B, K, P, 2) lips of every head -> (B, P, 2) those of each crop's cluster."""
    index = clusters.view(-1, 1, 1, 1).expand(-1, 1, *heads.shape[2:])
    return heads.gather(1, index).squeeze(1)


class TweakedTCNN(TCNN):
    """Shared conv trunk, the vanilla head for gating features, and K fine-tuned heads."""

    def __init__(self, config: TCNNConfig, components: int):
        super().__init__()
        self.config = config
        self.normaliser = Normaliser(config.input_size, config.in_channels)
        self.trunk = ConvTrunk(config)
        self.base_head = LandmarkHead(self.trunk.out_features, config)
        self.heads = nn.ModuleList(LandmarkHead(self.trunk.out_features, config) for _ in range(components))
        self.gate = GaussianGate(components, config.fc5)

    @classmethod
    def from_vanilla(cls, vanilla: VanillaTCNN, components: int) -> TweakedTCNN:
        model = cls(vanilla.config, components)
        model.normaliser.load_state_dict(vanilla.normaliser.state_dict())
        model.trunk.load_state_dict(vanilla.trunk.state_dict())
        model.base_head.load_state_dict(vanilla.head.state_dict())
        for head in model.heads:
            head.load_state_dict(vanilla.head.state_dict())
        return model

    def all_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(every head's lips (B, K, 56, 2), the gate's cluster (B,))."""
        trunk_features = self.trunk(self.normaliser(images))  # (B, 256)
        clusters = self.gate(self.base_head.features(trunk_features))  # (B,)
        # Every head runs on every crop: K small matmuls beat a data-dependent split at these sizes,
        # and the graph stays static for export.
        return torch.stack([head(trunk_features) for head in self.heads], dim=1), clusters

    def forward_with_clusters(
        self, images: torch.Tensor, clusters: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lips (B, 56, 2), cluster (B,)): each crop through the head its gate picks, or through the head
        `clusters` names (the mirror image in flip averaging uses the plain crop's head)."""
        heads, gated = self.all_heads(images)
        clusters = gated if clusters is None else clusters.to(gated.device)
        return select_heads(heads, clusters), clusters

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_clusters(images)[0]
