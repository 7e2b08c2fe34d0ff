"""Five small pixel-wise segmenters for mouth crops: U-Net, PSPNet, SegNet, DeepLabv3+ and a plain U-Net.

Every network maps a normalised (B, in_channels, S, S) crop to per-pixel class logits (B, num_classes, S, S);
with the default 4 classes these are 0 background, 1 upper lip, 2 inner mouth, 3 lower lip. All four are built
from scratch in plain torch (no torchvision), sized for 96 px crops: 0.1-0.3 M parameters at the defaults and a
few milliseconds per crop on one CPU thread.

Three of them share one MobileNetV2-style encoder (inverted residual blocks): a full-resolution stem and `depth`
stages, each halving the resolution. SegNet keeps its own VGG-style encoder because its decoder needs the
max-pooling indices. Shapes in the comments are for the defaults: 96 px, width 12, depth 4, channels
[12, 24, 48, 72].

No file I/O and no normalisation here: callers feed float32 crops that are already normalised.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = ("unet", "pspnet", "segnet", "deeplabv3plus", "plain_unet")

# Stage widths are width * these: fast growth early, where maps are large and channels cost the most time,
# gentler later, where maps are small and channels cost parameters. Stages past the list repeat the last one.
DEFAULT_MULTIPLIERS = (1, 2, 4, 6, 8)
PSP_BINS = (1, 2, 3, 6)
# DeepLab's rates (6, 12, 18) are for 33x33 maps; ours are 6x6 to 24x24, so the rates shrink to match.
ASPP_RATES = (2, 4, 6)


@dataclass
class SegmenterConfig:
    arch: str = "unet"  # one of ARCHITECTURES
    num_classes: int = 4
    in_channels: int = 3
    input_size: int = 96  # side of the square crop; must be divisible by 2**depth
    width: int = 12  # channels of the first encoder stage (and of the full-resolution stem)
    depth: int = 4  # encoder stages, each halves the resolution
    # Per-stage width multipliers (stage i has width * channel_multipliers[i] channels), one per stage;
    # None means DEFAULT_MULTIPLIERS: width * [1, 2, 4, 6, 8, 8, ...].
    channel_multipliers: list[int] | None = None
    expansion: int = 4  # inverted-residual expansion ratio (MobileNetV2 uses 6; 4 is cheaper at these widths)
    dropout: float = 0.0  # before the classifier
    # Where the training annotations sit off the image content, in mouth widths (x): flip averaging mirrors
    # the probability maps back about that axis (lipseg.data.landmarks.annotation_axis).
    annotation_offset: float = 0.0

    def __post_init__(self) -> None:
        if self.channel_multipliers is not None:
            self.channel_multipliers = [int(m) for m in self.channel_multipliers]  # tuples from YAML/JSON
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on an impossible config (also called by build_segmenter, after any edits)."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown segmenter arch {self.arch!r}; expected one of {ARCHITECTURES}")
        for name in ("num_classes", "in_channels", "input_size", "width", "depth", "expansion"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.input_size % 2**self.depth:
            raise ValueError(
                f"input_size {self.input_size} must be divisible by 2**depth = {2**self.depth} "
                f"(depth {self.depth}): every encoder stage halves the resolution"
            )
        if self.channel_multipliers is not None:
            if len(self.channel_multipliers) != self.depth:
                raise ValueError(
                    f"channel_multipliers needs one entry per stage (depth {self.depth}), "
                    f"got {self.channel_multipliers}"
                )
            if min(self.channel_multipliers) < 1:
                raise ValueError(f"channel_multipliers must be positive, got {self.channel_multipliers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def stage_channels(self) -> list[int]:
        """Output channels of each encoder stage, shallowest first: [12, 24, 48, 72] by default."""
        multipliers = self.channel_multipliers
        if multipliers is None:
            multipliers = [DEFAULT_MULTIPLIERS[min(i, len(DEFAULT_MULTIPLIERS) - 1)] for i in range(self.depth)]
        return [self.width * m for m in multipliers]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SegmenterConfig:
        known = {key: values[key] for key in cls.__dataclass_fields__ if key in values}
        return cls(**known)


# ----------------------------------------------------------------------------------------------------------
# building blocks


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> ReLU6. The conv has no bias: BatchNorm's shift makes it redundant."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 3,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
    ):
        super().__init__()
        padding = dilation * (kernel - 1) // 2  # "same" size for odd kernels at any dilation
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1: a 3x3 conv's receptive field at a fraction of its cost (DeepLabv3+)."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1):
        super().__init__(ConvBNAct(in_ch, in_ch, 3, dilation=dilation, groups=in_ch), ConvBNAct(in_ch, out_ch, 1))


class PooledBranch(nn.Module):
    """Adaptive average pool to bins x bins -> 1x1 conv -> ReLU -> upsample back.

    No BatchNorm: a 1x1 pooled map has one value per channel and sample, so BatchNorm would fail to train
    on a batch of one and be noisy on small ones; a biased conv does the job.
    """

    def __init__(self, in_ch: int, out_ch: int, bins: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(bins)
        self.conv = nn.Conv2d(in_ch, out_ch, 1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.act(self.conv(self.pool(x)))  # (B, out_ch, bins, bins)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1 -> depthwise 3x3 -> linear project 1x1, plus the input when shapes match.

    The projection has no activation: ReLU on the narrow output would throw away information the next block
    cannot recover (the "linear bottleneck" argument of MobileNetV2).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expansion: int = 4, dilation: int = 1):
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [ConvBNAct(in_ch, hidden, 1)]
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden),
            ConvBNAct(hidden, out_ch, 1, act=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class InvertedResidualEncoder(nn.Module):
    """Full-resolution stem, then `depth` stages of (strided block, residual block).

    Returns every level's features, shallowest first, so each decoder picks what it needs:
    [(B, 12, 96, 96), (B, 12, 48, 48), (B, 24, 24, 24), (B, 48, 12, 12), (B, 72, 6, 6)].
    With dilated_stages=k the last k stages keep their input resolution and dilate instead (DeepLab's
    output stride): the receptive field still grows but the map stays fine enough to segment thin lips.
    """

    def __init__(self, config: SegmenterConfig, dilated_stages: int = 0):
        super().__init__()
        channels = config.stage_channels()
        self.channels = [config.width] + channels  # per returned level
        self.stem = ConvBNAct(config.in_channels, config.width, 3)
        self.stages = nn.ModuleList()
        in_ch, dilation = config.width, 1
        for index, out_ch in enumerate(channels):
            dilated = index >= config.depth - dilated_stages
            # a dilated stage's first block still works at the previous rate, as in DeepLab
            stride, first_dilation = (1, dilation) if dilated else (2, 1)
            dilation = dilation * 2 if dilated else 1
            # MobileNetV2's first bottleneck does not expand (t=1): on the largest maps a 4x wide depthwise conv
            # costs more CPU time than all the deeper stages together, for little accuracy
            expansion = 1 if index == 0 else config.expansion
            self.stages.append(
                nn.Sequential(
                    InvertedResidual(in_ch, out_ch, stride, expansion, first_dilation),
                    InvertedResidual(out_ch, out_ch, 1, expansion, dilation),
                )
            )
            in_ch = out_ch

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]  # (B, 12, 96, 96)
        for stage in self.stages:
            features.append(stage(features[-1]))  # (B, 12, 48, 48) ... (B, 72, 6, 6)
        return features


def upsample_like(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def classifier(in_ch: int, config: SegmenterConfig) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(config.dropout), nn.Conv2d(in_ch, config.num_classes, 1))


# ----------------------------------------------------------------------------------------------------------
# the four networks


class UNet(nn.Module):
    """U-Net on the inverted-residual encoder: at each level upsample, concat the encoder skip, convs."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.encoder = InvertedResidualEncoder(config)
        channels = self.encoder.channels  # [12, 12, 24, 48, 72]
        self.decoder = nn.ModuleList()
        below = channels[-1]
        for level in range(config.depth - 1, -1, -1):  # 3, 2, 1, 0: deepest skip first
            out_ch = channels[level]
            if level >= 2:
                # U-Net's double 3x3; plain dense convs, which at these widths run faster on CPU than an inverted
                # residual's wide depthwise conv
                convs = [ConvBNAct(below + out_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3)]
            else:
                # On the two largest maps a 3x3 straight on the wide concat is the slowest op of the whole net
                # (memory-bound), so a 1x1 fuses skip and upsampled features first and one 3x3 follows.
                convs = [ConvBNAct(below + out_ch, out_ch, 1), ConvBNAct(out_ch, out_ch, 3)]
            self.decoder.append(nn.Sequential(*convs))
            below = out_ch
        self.head = classifier(channels[0], config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]  # (B, 72, 6, 6)
        for block, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            y = block(torch.cat([upsample_like(y, skip), skip], dim=1))  # (B, 48, 12, 12) ... (B, 12, 96, 96)
        return self.head(y)  # (B, 4, 96, 96)


class PSPNet(nn.Module):
    """Inverted-residual encoder + pyramid pooling (bins 1, 2, 3, 6) on the deepest map, upsampled to input size.

    The pooled branches give every deep pixel the context of the whole crop (is the mouth open? where are the
    corners?), which the small encoder's receptive field alone would not reach.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.encoder = InvertedResidualEncoder(config)
        deep = self.encoder.channels[-1]
        branch = max(deep // len(PSP_BINS), 4)  # PSPNet's 1/N split keeps the concat at twice the input width
        self.pyramid = nn.ModuleList(PooledBranch(deep, branch, bins) for bins in PSP_BINS)
        self.fuse = ConvBNAct(deep + branch * len(PSP_BINS), deep, 3)
        self.head = classifier(deep, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.encoder(x)[-1]  # (B, 72, 6, 6)
        pooled = [deep] + [branch(deep) for branch in self.pyramid]  # 4 x (B, 18, 6, 6)
        logits = self.head(self.fuse(torch.cat(pooled, dim=1)))  # (B, 144, 6, 6) -> (B, 72, 6, 6) -> (B, 4, 6, 6)
        return upsample_like(logits, x)  # (B, 4, 96, 96)


class SegNet(nn.Module):
    """SegNet with skips: a VGG-style encoder that remembers its max-pooling indices, and a decoder that unpools
    with them (so boundaries land back where the maxima were) and adds the encoder's pre-pool features.

    The skip add is the "SegNet with skip connections" variant used for LFW Part Labels: unpooling alone leaves a
    sparse map, and the encoder features fill in the fine detail that pooling dropped. Since the skips carry that
    detail, each decoder level needs one 3x3 conv, not the encoder's two, which saves a third of the CPU time.

    torch lists max_unpool2d as nondeterministic (it is a scatter), so under use_deterministic_algorithms it warns
    (warn_only=True) or raises. With non-overlapping 2x2 windows every index is unique, so the result is exact anyway.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        channels = config.stage_channels()  # [12, 24, 48, 72]
        self.encoder = nn.ModuleList()
        in_ch = config.in_channels
        for out_ch in channels:
            self.encoder.append(nn.Sequential(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3)))
            in_ch = out_ch
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.decoder = nn.ModuleList()
        for level in range(config.depth - 1, -1, -1):
            # each decoder level ends at the width of the level above, so its output can be unpooled with
            # that level's indices (MaxUnpool needs matching channels)
            out_ch = channels[level - 1] if level > 0 else channels[0]
            self.decoder.append(ConvBNAct(channels[level], out_ch, 3))
        self.head = classifier(channels[0], config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        indices: list[torch.Tensor] = []
        for block in self.encoder:
            x = block(x)  # (B, 12, 96, 96) ... (B, 72, 12, 12)
            skips.append(x)
            x, index = self.pool(x)  # (B, 12, 48, 48) ... (B, 72, 6, 6)
            indices.append(index)
        for block, skip, index in zip(self.decoder, reversed(skips), reversed(indices), strict=True):
            x = self.unpool(x, index, output_size=skip.shape[-2:]) + skip  # (B, 72, 12, 12) ... (B, 12, 96, 96)
            x = block(x)  # (B, 48, 12, 12) ... (B, 12, 96, 96)
        return self.head(x)  # (B, 4, 96, 96)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated separable 3x3s and an image-pooling branch, fused 1x1."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(in_ch, out_ch, 1)]
            + [SeparableConv(in_ch, out_ch, dilation=rate) for rate in ASPP_RATES]
            + [PooledBranch(in_ch, out_ch, 1)]
        )
        self.project = nn.Sequential(ConvBNAct(out_ch * len(self.branches), out_ch, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(
            torch.cat([branch(x) for branch in self.branches], dim=1)
        )  # (B, 5*24, 12, 12) -> (B, 24, 12, 12)


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+: the encoder's last stage dilated (output stride 8 at depth 4), ASPP, and a decoder that
    merges the upsampled ASPP output with reduced low-level features at 1/4 resolution before the final upsample.
    """

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        # dilate only when something is left to stride: depth 1 would otherwise never downsample
        self.encoder = InvertedResidualEncoder(config, dilated_stages=1 if config.depth > 1 else 0)
        channels = self.encoder.channels
        # 1/4 resolution as in the paper when the encoder reaches it; the stage-1 map otherwise
        self.low_level = min(2, max(config.depth - 1, 1))
        head_ch, low_ch = 2 * config.width, config.width
        self.aspp = ASPP(channels[-1], head_ch, config.dropout)
        # reduced so the low-level detail informs, rather than outweighs, the semantic ASPP features
        self.reduce = ConvBNAct(channels[self.low_level], low_ch, 1)
        self.refine = nn.Sequential(SeparableConv(head_ch + low_ch, head_ch), SeparableConv(head_ch, head_ch))
        self.head = classifier(head_ch, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        context = self.aspp(features[-1])  # (B, 72, 12, 12) -> (B, 24, 12, 12)
        low = self.reduce(features[self.low_level])  # (B, 24, 24, 24) -> (B, 12, 24, 24)
        y = self.refine(torch.cat([upsample_like(context, low), low], dim=1))  # (B, 36, 24, 24) -> (B, 24, 24, 24)
        return upsample_like(self.head(y), x)  # (B, 4, 24, 24) -> (B, 4, 96, 96)


# ----------------------------------------------------------------------------------------------------------


class PlainUNet(nn.Module):
    """The plain U-Net: two dense 3x3 conv-BN-ReLU per level, max-pool down; up, the deeper map is resized
    bilinearly and projected by a 1x1 conv onto the skip, added, and two 3x3 convs follow. No depthwise
    convs: on a CPU they cost far more time than their FLOPs suggest at these sizes."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        channels = config.stage_channels()  # [12, 24, 48, 72]: one per resolution, 96 px down to 12 px

        def double(in_ch: int, out_ch: int) -> nn.Sequential:
            return nn.Sequential(ConvBNAct(in_ch, out_ch, 3), ConvBNAct(out_ch, out_ch, 3))

        self.down = nn.ModuleList(double(a, b) for a, b in zip([config.in_channels, *channels[:-1]], channels))
        self.project = nn.ModuleList(
            nn.Conv2d(deep, shallow, 1) for deep, shallow in zip(channels[:0:-1], channels[-2::-1])
        )
        self.up = nn.ModuleList(double(ch, ch) for ch in channels[-2::-1])
        self.head = classifier(channels[0], config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else F.max_pool2d(x, 2))  # (B, 12, 96, 96) ... (B, 72, 12, 12)
            skips.append(x)
        y = skips.pop()
        for project, block in zip(self.project, self.up, strict=True):
            skip = skips.pop()
            y = block(skip + project(upsample_like(y, skip)))  # (B, 48, 24, 24) ... (B, 12, 96, 96)
        return self.head(y)  # (B, 4, 96, 96)


MODELS: dict[str, type[nn.Module]] = {
    "unet": UNet,
    "pspnet": PSPNet,
    "segnet": SegNet,
    "deeplabv3plus": DeepLabV3Plus,
    "plain_unet": PlainUNet,
}


def init_weights(module: nn.Module) -> None:
    """He init for convs (fan_out, as torchvision's MobileNetV2), unit BatchNorm; explicit so that every
    architecture starts the same way whatever torch's defaults become."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_segmenter(config: SegmenterConfig) -> nn.Module:
    """forward: (B, in_channels, S, S) float32 (already normalised by the caller) -> logits (B, num_classes, S, S)."""
    config.validate()
    model = MODELS[config.arch](config)
    model.apply(init_weights)
    return model
