from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipseg.core.model_folder import parameter_count
from lipseg.segmentation.nets import ARCHITECTURES, SegmenterConfig, build_segmenter


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(module for module in model.modules() if isinstance(module, nn.Conv2d))


def mouth_batch(count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy mouths: an inner-mouth ellipse between an upper and a lower lip band, at random places and sizes.

    Each class has its own colour plus noise, so the task is learnable but the net must still find the shapes.
    Returns normalised images (count, 3, size, size) and labels (count, size, size).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    labels = torch.zeros(count, size, size, dtype=torch.long)
    for index in range(count):
        cy, cx = (size * (0.4 + 0.2 * torch.rand(2, generator=generator))).tolist()
        ry, rx = (size * (0.08 + 0.06 * torch.rand(2, generator=generator))).tolist()
        rx += size * 0.1
        ellipse = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
        band = (cols >= cx - rx) & (cols <= cx + rx)
        thickness = size * 0.1
        labels[index][band & (rows >= cy - ry - thickness) & (rows < cy - ry)] = 1
        labels[index][band & (rows > cy + ry) & (rows <= cy + ry + thickness)] = 3
        labels[index][ellipse] = 2
    colours = torch.tensor([[0.8, 0.6, 0.5], [0.7, 0.2, 0.3], [0.1, 0.05, 0.1], [0.8, 0.3, 0.35]])
    images = colours[labels].permute(0, 3, 1, 2) + 0.15 * torch.randn(count, 3, size, size, generator=generator)
    return (images - 0.5) / 0.25, labels


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(
    "settings",
    [
        {"input_size": 96, "depth": 4},
        {"input_size": 64, "depth": 4},  # 4x4 deepest map: the 6-bin pyramid pools overlap, still valid
        {"input_size": 40, "depth": 3, "width": 8, "channel_multipliers": [1, 3, 4]},
    ],
)
def test_shapes_finite_and_gradients_reach_the_first_conv(arch: str, settings: dict) -> None:
    torch.manual_seed(0)
    config = SegmenterConfig(arch=arch, **settings)
    model = build_segmenter(config)
    size = config.input_size
    images = torch.randn(2, 3, size, size)
    logits = model(images)
    assert logits.shape == (2, 4, size, size)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.square().mean().backward()
    conv = first_conv(model)
    assert conv.in_channels == 3  # really the conv that sees the image
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.inference_mode():
        assert model(images[:1]).shape == (1, 4, size, size)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trains_on_a_batch_of_one_and_follows_the_config(arch: str) -> None:
    # A batch of one must train: BatchNorm on a 1x1 pooled map would raise here.
    model = build_segmenter(
        SegmenterConfig(arch=arch, input_size=32, depth=2, num_classes=3, in_channels=1, dropout=0.2)
    )
    logits = model(torch.randn(1, 1, 32, 32))
    assert logits.shape == (1, 3, 32, 32)
    logits.mean().backward()


def test_defaults_are_small() -> None:
    for arch in ARCHITECTURES:
        model = build_segmenter(SegmenterConfig(arch=arch))
        count = parameter_count(model)
        assert count == sum(p.numel() for p in model.parameters())
        assert 100_000 <= count <= 1_500_000, (arch, count)
    wider = build_segmenter(SegmenterConfig(width=16))
    assert parameter_count(wider) > parameter_count(build_segmenter(SegmenterConfig()))
    assert parameter_count(nn.Linear(3, 2)) == 8


def test_invalid_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown segmenter arch 'fcn'"):
        SegmenterConfig(arch="fcn")
    with pytest.raises(ValueError, match=r"input_size 90 must be divisible by 2\*\*depth = 16"):
        SegmenterConfig(input_size=90)
    with pytest.raises(ValueError, match="divisible"):
        SegmenterConfig(input_size=96, depth=6)
    with pytest.raises(ValueError, match="one entry per stage"):
        SegmenterConfig(channel_multipliers=[1, 2])
    config = SegmenterConfig()
    config.arch = "mask-rcnn"  # edits after construction are caught when building
    with pytest.raises(ValueError, match="unknown segmenter arch"):
        build_segmenter(config)


def test_config_round_trip() -> None:
    config = SegmenterConfig(
        arch="segnet", num_classes=5, input_size=64, width=8, depth=3, channel_multipliers=[1, 2, 3], dropout=0.1
    )
    values = json.loads(json.dumps(config.to_dict()))  # what a params file or MLflow tag gives back
    assert SegmenterConfig.from_dict(values) == config
    assert SegmenterConfig.from_dict({**values, "learning_rate": 0.01}) == config  # unknown keys ignored
    assert SegmenterConfig.from_dict({}) == SegmenterConfig()
    assert SegmenterConfig.from_dict({"channel_multipliers": (1, 2, 4, 8)}).channel_multipliers == [1, 2, 4, 8]
    assert SegmenterConfig().stage_channels() == [12, 24, 48, 72]
    assert SegmenterConfig(width=4, depth=3, input_size=32, channel_multipliers=[1, 1, 3]).stage_channels() == [
        4,
        4,
        12,
    ]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_same_seed_same_model(arch: str) -> None:
    config = SegmenterConfig(arch=arch, input_size=32, depth=3, width=8)
    images = torch.randn(2, 3, 32, 32)
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = build_segmenter(config).eval()
        with torch.inference_mode():
            outputs.append(model(images))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.allclose(outputs[0], outputs[2])  # the seed really drives the init


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_overfits_a_tiny_batch(arch: str) -> None:
    torch.manual_seed(0)
    images, labels = mouth_batch(4, 48)
    assert set(labels.unique().tolist()) == {0, 1, 2, 3}
    background = (labels == 0).float().mean().item()  # the accuracy of always answering "background", about 0.85
    model = build_segmenter(SegmenterConfig(arch=arch, input_size=48, depth=3, width=8))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    final = sum(losses[-3:]) / 3
    assert final < 0.5 * losses[0], (arch, losses[0], final)
    # and it learned the shapes, not just the class prior: at least half of the prior's errors are gone
    accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    assert accuracy > background + 0.5 * (1 - background), (arch, background, accuracy)
