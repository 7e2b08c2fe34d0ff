"""Pixel-wise lip segmentation on mouth crops: training crops with label masks, the CE + Dice + Jaccard
loss, the training loop, the model folder, and pasting per-class probabilities back into the photo.

The segmenter never finds the mouth itself: the TCNN's lips give the crop box (CropGeometry.box), so
training crops are jittered the way TCNN-located boxes differ from ground-truth ones (measured on the
validation photos, see `locator_spread`). The networks themselves are in segmenters.py.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from lipseg.crop import (
    CropGeometry, apply_affine, crop_pixel_transform, image_to_crop_transform, jitter_brightness, read_record_images, warp_crop,
)
from lipseg.datasets.faceparts import IGNORE, PartsRecord, read_label_mask  # IGNORE: never scored, never trained on
from lipseg.datasets.helen import AnnotationError, Record, Reject
from lipseg.io import DEFAULT_MAX_PIXELS, write_json_atomic
from lipseg.landmarks import HELEN_LIPS
from lipseg.masks import BACKGROUND, label_mask_from_lips
from lipseg.metrics import PixelCounts, pick_face
from lipseg.model import images_to_tensor
from lipseg.segmenters import SegmenterConfig, build_segmenter, parameter_count
from lipseg.checkpoint import save_checkpoint
from lipseg.train import content_digest, fingerprint, read_resumable_checkpoint, resolve_device

NUM_CLASSES = 4  # 0 background, 1 upper lip, 2 inner mouth, 3 lower lip (EVALUATION.md)
SCHEMA = "lipseg-segmenter/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "lipseg_segmenter.json"


class SegmenterFolderError(RuntimeError):
    """A segmenter model folder is missing, incomplete or of an unknown schema."""


# ----------------------------------------------------------------------------------------------------
# Training crops


@dataclass(frozen=True)
class LocatorSpread:
    """How the box around TCNN-located lips differs from the ground-truth box: centre offset as a
    fraction of the GT side and log side ratio (means and spreads), as crop.box_differences measures."""

    shift_x_mean: float = 0.0
    shift_y_mean: float = 0.0
    shift_x_std: float = 0.0
    shift_y_std: float = 0.0
    log_scale_mean: float = 0.0
    log_scale_std: float = 0.0
    samples: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> LocatorSpread:
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass(frozen=True)
class SegmentJitter:
    """Training jitter on top of the measured locator spread (which sets the box shift and scale)."""

    copies: int = 6  # jittered copies per face, on top of the plain crop
    rotate_deg: float = 10.0
    brightness: float = 0.2
    min_shift: float = 0.02  # spread floors, so a very good locator still leaves the net some variety
    min_scale: float = 0.03

    @classmethod
    def from_params(cls, values: dict) -> SegmentJitter:
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


@dataclass
class SegmentCrops:
    images: np.ndarray  # (N, S, S, 3) uint8 BGR
    masks: np.ndarray  # (N, S, S) uint8 labels 0..3 (255 = ignore)
    names: np.ndarray  # (N,) str
    copy_index: np.ndarray  # (N,) int32, 0 = plain crop
    rejects: list[Reject] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: value for key, value in vars(self).items() if key != "rejects"}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SegmentCrops:
        return cls(**{key: arrays[key] for key in ("images", "masks", "names", "copy_index")})

    def __len__(self) -> int:
        return len(self.images)


def jittered_box(centre: np.ndarray, side: float, spread: LocatorSpread, jitter: SegmentJitter,
                 rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """A box drawn from the locator's measured error distribution (normal, with floors): centre, side, angle."""
    shift_std = np.maximum([spread.shift_x_std, spread.shift_y_std], jitter.min_shift)
    shift = rng.normal([spread.shift_x_mean, spread.shift_y_mean], shift_std) * side
    log_scale = rng.normal(spread.log_scale_mean, max(spread.log_scale_std, jitter.min_scale))
    angle = math.radians(rng.uniform(-jitter.rotate_deg, jitter.rotate_deg))
    return np.asarray(centre, np.float64) + shift, side * math.exp(log_scale), angle


def _crop_copies(image: np.ndarray, centre: np.ndarray, side: float, size: int, spread: LocatorSpread,
                 jitter: SegmentJitter | None, rng: np.random.Generator,
                 mask_for: Callable[[np.ndarray], np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(crop, label mask) for the plain box and `jitter.copies` boxes drawn from the locator spread;
    `mask_for` draws the labels for an image-pixel -> crop-pixel transform."""
    out = []
    for copy_index in range(1 + (jitter.copies if jitter else 0)):
        if copy_index == 0:
            transform = image_to_crop_transform(centre, side)
        else:
            transform = image_to_crop_transform(*jittered_box(centre, side, spread, jitter, rng))
        crop = warp_crop(image, transform, size)
        if copy_index > 0 and jitter.brightness > 0:
            crop = jitter_brightness(crop, jitter.brightness, rng)
        out.append((crop, mask_for(crop_pixel_transform(transform, size))))
    return out


def _collect(rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray]]]], size: int, rejects: list[Reject]) -> SegmentCrops:
    images = [crop for _, pairs in rows for crop, _ in pairs]
    if not images:
        return SegmentCrops(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
                            np.zeros(0, str), np.zeros(0, np.int32), rejects)
    return SegmentCrops(np.stack(images), np.stack([mask for _, pairs in rows for _, mask in pairs]),
                        np.asarray([name for name, pairs in rows for _ in pairs]),
                        np.asarray([index for _, pairs in rows for index in range(len(pairs))], np.int32), rejects)


def make_segment_crops(records: list[Record], geometry: CropGeometry, spread: LocatorSpread, jitter: SegmentJitter | None,
                       seed: int = 0, desc: str = "segment crops", progress: bool = True,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> SegmentCrops:
    """A plain crop per face (box from the ground-truth lips) plus `jitter.copies` crops with boxes drawn
    from the locator spread; label masks are the EVALUATION.md polygons drawn in crop pixels."""
    rng = np.random.default_rng(seed)
    rows, rejects = [], []
    size = geometry.size
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        lips = record.points[HELEN_LIPS]
        rows.append((record.name, _crop_copies(image, *geometry.box(lips), size, spread, jitter, rng,
                                               lambda pixel: label_mask_from_lips(apply_affine(pixel, lips), size, size))))
    return _collect(rows, size, rejects)


def make_parts_crops(records: list[PartsRecord], class_table: dict[str, int], geometry: CropGeometry, spread: LocatorSpread,
                     jitter: SegmentJitter | None, seed: int = 0, desc: str = "parts crops", progress: bool = True,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> SegmentCrops:
    """The same crops from a face-parsing set (LaPa, CelebAMask-HQ, ...): the box comes from the
    labelled mouth pixels and the label mask is warped with nearest-neighbour sampling."""
    rng = np.random.default_rng(seed)
    rows, rejects = [], []
    size = geometry.size
    for record, image in read_record_images(records, rejects, max_pixels, desc, progress):
        try:
            labels = read_label_mask(record, class_table, image.shape[:2])
        except AnnotationError as error:  # one bad label file is that face's reject, not the stage's end
            rejects.append(Reject(record.name, str(record.label_paths[0]) if record.label_paths else "", f"bad label: {error}"))
            continue
        ys, xs = np.nonzero((labels > BACKGROUND) & (labels != IGNORE))
        if len(xs) == 0:
            rejects.append(Reject(record.name, str(record.label_paths[0]), "no mouth pixels under this class table"))
            continue
        corners = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float64)
        rows.append((record.name, _crop_copies(image, *geometry.box(corners), size, spread, jitter, rng, lambda pixel: cv2.warpAffine(
            labels, pixel, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND))))
    return _collect(rows, size, rejects)


def merge_crops(first: SegmentCrops, second: SegmentCrops) -> SegmentCrops:
    return SegmentCrops(*(np.concatenate([getattr(first, key), getattr(second, key)]) for key in ("images", "masks", "names", "copy_index")),
                        rejects=first.rejects + second.rejects)


def locate_lips(predictor, records: list[Record], progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, np.ndarray]:
    """The lips `predictor` (a LipPredictor) finds for each record's annotated face, by name; a photo
    where no found face lies within a mouth width of the annotated mouth is left out (a statistic: the
    caller's crops of the same photos report the ones that cannot be read)."""
    located = {}
    for record, image in read_record_images(records, [], max_pixels, "locate lips", progress):
        faces = [face.lips for face in predictor.predict(image).faces]
        if not faces:
            continue
        truth = record.points[HELEN_LIPS]
        nearest = pick_face(faces, truth)
        if np.linalg.norm(nearest.mean(axis=0) - truth.mean(axis=0)) <= np.ptp(truth[:, 0]):
            located[record.name] = nearest
    return located


# ----------------------------------------------------------------------------------------------------
# The network wrapper and its loss


class SegmenterNet(nn.Module):
    """BGR uint8-valued crops (B, 3, S, S) as float in [0, 255] -> logits (B, 4, S, S).

    Normalisation lives inside the module (per-channel mean/std of the training crops), so a model
    folder alone is enough to run it, as with the TCNN."""

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


def channel_normalisation(images: np.ndarray, min_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return pixels.mean(axis=0).astype(np.float32), np.maximum(pixels.std(axis=0), min_std).astype(np.float32)


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    dice: float = 1.0
    jaccard: float = 0.0


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, weights: LossWeights) -> torch.Tensor:
    """Cross-entropy + soft Dice + soft Jaccard (both 1 - mean over the lip classes, pooled over the
    batch as the metrics pool over images); IGNORE pixels count in none of them."""
    valid = labels != IGNORE  # (B, S, S)
    loss = weights.ce * F.cross_entropy(logits, labels.long(), ignore_index=IGNORE) if weights.ce else logits.new_zeros(())
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


# ----------------------------------------------------------------------------------------------------
# Training


@dataclass
class SegmentFitConfig:
    optimizer: str = "adamw"  # adamw | sgd (momentum)
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_epochs: int = 40
    patience: int = 8  # early stopping on validation lips F1
    lr_patience: int = 3  # ReduceLROnPlateau on validation lips F1
    lr_factor: float = 0.5
    flip: bool = True
    loss: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    device: str = "auto"


@dataclass
class SegmentEpoch:
    epoch: int
    train_loss: float
    val_loss: float
    val_f1_lips: float
    lr: float
    seconds: float


@dataclass
class SegmentFitResult:
    history: list[SegmentEpoch] = field(default_factory=list)
    best_epoch: int = 0
    best_val_f1_lips: float = -1.0
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    seconds: float = 0.0


def _optimiser(parameters: list[nn.Parameter], config: SegmentFitConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    raise ValueError(f"optimizer must be adamw or sgd, got {config.optimizer!r}")


@torch.no_grad()
def _validate(model: SegmenterNet, images: np.ndarray, masks: np.ndarray, config: SegmentFitConfig,
              device: torch.device) -> tuple[float, float]:
    """(mean loss, pooled lips F1) on the validation crops."""
    model.eval()
    counts, loss_sum = PixelCounts(), 0.0
    for start in range(0, len(images), 128):
        batch = images_to_tensor(images[start : start + 128]).to(device)
        labels = torch.from_numpy(masks[start : start + 128]).to(device)
        logits = model(batch)
        loss_sum += float(segmentation_loss(logits, labels, config.loss)) * len(batch)
        predicted = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
        for predicted_mask, true_mask in zip(predicted, masks[start : start + 128]):
            scored = true_mask != IGNORE
            counts.add(np.where(scored, predicted_mask, BACKGROUND), np.where(scored, true_mask, BACKGROUND))
    return loss_sum / len(images), float(counts.pooled()["lips"]["f1"])


def fit_segmenter(model: SegmenterNet, train: SegmentCrops, val: SegmentCrops, config: SegmentFitConfig,
                  checkpoint_path: Path | None = None, run_fingerprint: str = "",
                  on_epoch: Callable[[SegmentEpoch], None] | None = None, desc: str = "segmenter",
                  progress: bool = True) -> SegmentFitResult:
    """Train with random flips, keep the weights of the best validation lips F1 (early stopping), and
    checkpoint every epoch so a killed run resumes; mixed precision and pinned memory on a GPU."""
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"need training and validation crops (got {len(train)} and {len(val)})")
    device = resolve_device(config.device)
    model.to(device)
    optimiser = _optimiser([p for p in model.parameters() if p.requires_grad], config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="max", factor=config.lr_factor, patience=config.lr_patience)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    shuffler = torch.Generator().manual_seed(config.seed)
    result = SegmentFitResult()
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs, start_epoch = 0, 1
    tag = fingerprint(run_fingerprint, asdict(config), device.type,
                      content_digest(train.images, train.masks, val.images, val.masks, *model.state_dict().values()))
    # Loaded on the CPU: the shuffler's state must stay a CPU tensor; load_state_dict moves the rest.
    if (state := read_resumable_checkpoint(checkpoint_path, tag)) is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the run was on a CPU (the scaler was off)
            scaler.load_state_dict(state["scaler"])
        shuffler.set_state(state["shuffler"])
        best_state, bad_epochs, start_epoch = state["best_state"], state["bad_epochs"], state["epoch"] + 1
        result.history = [SegmentEpoch(**record) for record in state["history"]]
        result.best_epoch, result.best_val_f1_lips = state["best_epoch"], state["best_val_f1_lips"]
        result.stopped_early, result.resumed_from_epoch = state["stopped_early"], state["epoch"]
        if state["finished"]:
            start_epoch = config.max_epochs + 1
    pin = device.type == "cuda"
    train_images, train_masks = images_to_tensor(train.images), torch.from_numpy(train.masks)
    epochs = tqdm(range(start_epoch, config.max_epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in epochs:
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_images), generator=shuffler)
        loss_sum = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch, labels = train_images[index], train_masks[index]
            if config.flip:  # mirroring keeps every class (upper lip stays upper lip), so labels just mirror too
                flips = torch.rand(len(index), generator=shuffler) < 0.5
                batch[flips], labels[flips] = batch[flips].flip(dims=[3]), labels[flips].flip(dims=[2])
            if pin:
                batch, labels = batch.pin_memory(), labels.pin_memory()
            batch, labels = batch.to(device, non_blocking=pin), labels.to(device, non_blocking=pin)
            with torch.autocast(device.type, enabled=use_amp):
                loss = segmentation_loss(model(batch), labels, config.loss)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            loss_sum += loss.item() * len(index)
        val_loss, val_f1 = _validate(model, val.images, val.masks, config, device)
        scheduler.step(val_f1)
        record = SegmentEpoch(epoch, loss_sum / len(order), val_loss, val_f1, optimiser.param_groups[0]["lr"], time.perf_counter() - started)
        result.history.append(record)
        if val_f1 > result.best_val_f1_lips:
            result.best_val_f1_lips, result.best_epoch, bad_epochs = val_f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        finished = bad_epochs >= config.patience or epoch == config.max_epochs
        result.stopped_early = bad_epochs >= config.patience
        epochs.set_postfix(loss=f"{record.train_loss:.4f}", val_f1=f"{val_f1:.4f}")
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "fingerprint": tag, "epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "shuffler": shuffler.get_state(),
                "best_state": best_state, "bad_epochs": bad_epochs, "history": [asdict(item) for item in result.history],
                "best_epoch": result.best_epoch, "best_val_f1_lips": result.best_val_f1_lips,
                "stopped_early": result.stopped_early, "finished": finished,
            })
        if finished:
            break
    result.seconds = sum(record.seconds for record in result.history)
    model.load_state_dict(best_state)
    return result


# ----------------------------------------------------------------------------------------------------
# Model folder


def save_segmenter_folder(folder: Path, model: SegmenterNet, geometry: CropGeometry, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    from lipseg import __version__

    folder.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"schema": SCHEMA})
    write_json_atomic(folder / META_FILE, {
        "schema": SCHEMA, "lipseg_version": __version__, "config": model.config.to_dict(), "geometry": geometry.to_dict(),
        "parameters": parameter_count(model.network),
        "classes": {"0": "background", "1": "upper lip", "2": "inner mouth", "3": "lower lip"},
        "input": "BGR uint8 mouth crops (B, S, S, 3) -> float (B, 3, S, S) in [0, 255]; box = geometry.box(TCNN lips)",
        **(extra or {}),
    })


def load_pretrained(model: SegmenterNet, path: Path) -> tuple[int, list[str]]:
    """Start `model`'s network from a safetensors file (a segmenter folder's weights, or a bare network
    state dict, e.g. trained on a face-parsing set). Tensors whose name or shape does not match (a head
    with another class count, say) keep their initialisation; the normalisation of our crops is kept.
    Returns (tensors loaded, names left as initialised)."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained_weights: {path} does not exist")
    state = {key.removeprefix("network."): value for key, value in load_file(str(path)).items() if key not in ("mean", "std")}
    own = model.network.state_dict()
    usable = {key: value for key, value in state.items() if key in own and own[key].shape == value.shape}
    model.network.load_state_dict(usable, strict=False)
    return len(usable), sorted(set(own) - set(usable))


def load_segmenter_folder(folder: Path) -> tuple[SegmenterNet, CropGeometry, dict]:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise SegmenterFolderError(f"{folder} is not a lipseg segmenter folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("schema") != SCHEMA:
        raise SegmenterFolderError(f"{folder}: unknown segmenter schema {meta.get('schema')!r}, this lipseg reads {SCHEMA!r}")
    if not (folder / WEIGHTS_FILE).is_file():
        raise SegmenterFolderError(f"{folder}: {WEIGHTS_FILE} is missing")
    model = SegmenterNet(SegmenterConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval(), CropGeometry(**meta["geometry"]), meta


# ----------------------------------------------------------------------------------------------------
# Inference: crops from TCNN lips, probabilities, paste-back


@torch.no_grad()
def crop_probabilities(model: SegmenterNet, crops: np.ndarray, flip_average: bool = False, batch_size: int = 64) -> np.ndarray:
    """(F, S, S, 3) uint8 crops -> (F, 4, S, S) float32 class probabilities (flip TTA averages the
    mirrored crop's, mirrored back)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(crops), batch_size):
        batch = images_to_tensor(crops[start : start + batch_size]).to(device)
        probabilities = model(batch).softmax(dim=1)
        if flip_average:
            probabilities = (probabilities + model(batch.flip(dims=[3])).softmax(dim=1).flip(dims=[3])) / 2
        out.append(probabilities.float().cpu().numpy())
    size = model.config.input_size
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES, size, size), np.float32)


def paste_probabilities(probabilities: np.ndarray, transforms: np.ndarray, height: int, width: int) -> np.ndarray:
    """Label mask (H, W) uint8 of the photo from per-face crop probabilities.

    Each class channel is warped into the image (image pixel centre -> crop pixel centre, bilinear),
    background is certain outside the crop, and the argmax is taken at image resolution. Where two
    faces' crops overlap, the face more sure that the pixel is mouth wins it."""
    mask = np.zeros((height, width), np.uint8)
    mouth_best = np.zeros((height, width), np.float32)  # 1 - P(background) of the face owning each pixel
    for face_probabilities, transform in zip(probabilities, transforms):
        size = face_probabilities.shape[-1]
        pixel = crop_pixel_transform(transform, size)
        corners = apply_affine(cv2.invertAffineTransform(pixel), np.array([[-0.5, -0.5], [size - 0.5, -0.5], [size - 0.5, size - 0.5], [-0.5, size - 0.5]]))
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [width, height])
        if x1 <= x0 or y1 <= y0:
            continue
        region = pixel.copy()
        region[:, 2] += pixel[:, :2] @ np.array([x0, y0], np.float64)  # region pixel (0, 0) is image pixel (x0, y0)
        channels = []
        for index, channel in enumerate(face_probabilities):
            channels.append(cv2.warpAffine(channel, region, (int(x1 - x0), int(y1 - y0)), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=1.0 if index == BACKGROUND else 0.0))
        warped = np.stack(channels)  # (4, h, w)
        labels = warped.argmax(axis=0).astype(np.uint8)
        sureness = 1.0 - warped[BACKGROUND]
        window_best, window_mask = mouth_best[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        wins = sureness > window_best
        window_mask[wins], window_best[wins] = labels[wins], sureness[wins]
    return mask


class SegmenterRunner:
    """A segmenter folder ready for photos: the TCNN lips give each face's crop, the net labels it."""

    def __init__(self, folder: Path, flip_average: bool = False, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.model, self.geometry, self.meta = load_segmenter_folder(folder)
        self.folder, self.flip_average = Path(folder), flip_average

    def transforms(self, faces_lips: list[np.ndarray]) -> np.ndarray:
        return np.array([image_to_crop_transform(*self.geometry.box(lips)) for lips in faces_lips], np.float64).reshape(-1, 2, 3)

    def label_mask(self, image: np.ndarray, faces_lips: list[np.ndarray]) -> np.ndarray:
        height, width = image.shape[:2]
        if not len(faces_lips):
            return np.zeros((height, width), np.uint8)
        transforms = self.transforms(faces_lips)
        crops = np.stack([warp_crop(image, transform, self.geometry.size) for transform in transforms])
        return paste_probabilities(crop_probabilities(self.model, crops, self.flip_average), transforms, height, width)


# ----------------------------------------------------------------------------------------------------
# End-to-end comparison of mask sources on photos


@dataclass
class MaskScores:
    """One mask source's pooled scores over the test photos (the EVALUATION.md classes), plus pixel
    accuracy near the mouth and the cost of its mask step."""

    counts: PixelCounts = field(default_factory=PixelCounts)
    correct: int = 0  # pixels with the right 4-class label inside the mouth region
    region: int = 0
    milliseconds: list[float] = field(default_factory=list)  # per face: crop + network + paste-back

    def add(self, predicted: np.ndarray, truth: np.ndarray, gt_lips: np.ndarray) -> None:
        self.counts.add(predicted, truth)
        # Over whole photos any model scores ~0.999 (background dominates), so pixel accuracy is taken
        # inside the ground-truth mouth box grown to twice its size.
        low, high = gt_lips.min(axis=0), gt_lips.max(axis=0)
        centre, half = (low + high) / 2, (high - low)
        x0, y0 = np.maximum(np.floor(centre - half).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(centre + half).astype(int) + 1, [truth.shape[1], truth.shape[0]])
        self.correct += int((predicted[y0:y1, x0:x1] == truth[y0:y1, x0:x1]).sum())
        self.region += int(max(0, (y1 - y0)) * max(0, (x1 - x0)))

    def summary(self) -> dict[str, float | int | None]:
        pooled = self.counts.pooled()
        out: dict[str, float | int | None] = {}
        for name, values in pooled.items():
            out |= {f"f1_{name}": values["f1"], f"dice_{name}": values["f1"], f"iou_{name}": values["iou"],
                    f"precision_{name}": values["precision"], f"recall_{name}": values["recall"]}
        out["pixel_accuracy_mouth_region"] = self.correct / self.region if self.region else None
        out["mean_image_f1_lips"] = self.counts.mean_image_f1("lips")
        out["images"] = self.counts.n_images
        out["ms_per_face"] = float(np.median(self.milliseconds)) if self.milliseconds else None
        return out


LANDMARKS = "tcnn landmarks"  # the mask source that fills the TCNN's polygons


def compare_mask_sources(records: list[Record], predictor, runners: dict[str, SegmenterRunner], prediction_dir: Path | None = None,
                         figure_names: frozenset[str] = frozenset(), desc: str = "mask sources",
                         progress: bool = True, rejects: list[Reject] | None = None,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict[str, MaskScores], dict[str, list[np.ndarray]], int]:
    """Every mask source on the same faces: `predictor` (a LipPredictor) finds the faces and their TCNN
    lips, then the landmark polygons and each segmenter label the face nearest the annotated mouth
    (lipeval's choice for JSON predictions; a PNG has no faces, or the other faces would count as false
    positives). Returns the scores, mouth close-ups for `figure_names` (ground truth first) and the
    number of photos without a face; with `prediction_dir`, writes <dir>/<source>/<name>.png for lipeval.
    Photos that cannot be used are appended to `rejects` with the reason."""
    from lipseg.io import write_png_atomic
    from lipseg.masks import crop_around, overlay

    scores = {name: MaskScores() for name in [LANDMARKS, *runners]}
    tiles: dict[str, list[np.ndarray]] = {name: [] for name in ["ground truth", *scores]}
    no_face = 0
    for record, image in read_record_images(records, [] if rejects is None else rejects, max_pixels, desc, progress):
        height, width = image.shape[:2]
        gt_lips = record.points[HELEN_LIPS]
        truth = label_mask_from_lips(gt_lips, height, width)
        faces = [face.lips for face in predictor.predict(image).faces]
        no_face += not faces
        chosen = [pick_face(faces, gt_lips)] if faces else []
        for name, mask_scores in scores.items():
            started = time.perf_counter()
            if name == LANDMARKS:
                mask = label_mask_from_lips(chosen[0], height, width) if chosen else np.zeros((height, width), np.uint8)
            else:
                mask = runners[name].label_mask(image, chosen)
            if chosen:
                mask_scores.milliseconds.append((time.perf_counter() - started) * 1000)
            mask_scores.add(mask, truth, gt_lips)
            if prediction_dir is not None:
                write_png_atomic(prediction_dir / name.replace(" ", "_") / f"{record.name}.png", mask)
            if record.name in figure_names:
                points = chosen[0] if chosen and name == LANDMARKS else None
                tiles[name].append(crop_around(overlay(image, mask, points), gt_lips, 0.35)[0])
        if record.name in figure_names:
            tiles["ground truth"].append(crop_around(overlay(image, truth, gt_lips), gt_lips, 0.35)[0])
    return scores, tiles, no_face


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table: one row per mask source, F1 per class, lips IoU, pixel accuracy, cost and size."""
    lines = ["| model | lips F1 | upper lip | lower lip | inner mouth | mouth | lips IoU | pixel acc. (mouth region) "
             "| ms/face (1 thread) | parameters | training min |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def number(value: float | int | None, digits: int = 3) -> str:
        return "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}")

    for name, summary in summaries.items():
        lines.append(f"| {name} | " + " | ".join([
            number(summary["f1_lips"]), number(summary["f1_upper_lip"]), number(summary["f1_lower_lip"]),
            number(summary["f1_inner_mouth"]), number(summary["f1_mouth"]), number(summary["iou_lips"]),
            number(summary["pixel_accuracy_mouth_region"]), number(summary["ms_per_face"], 2),
            number(summary.get("parameters")), number(summary.get("train_minutes"), 1)]) + " |")
    return "\n".join(lines)
