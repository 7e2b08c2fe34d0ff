"""The self-contained model folder: weights (safetensors), config, crop geometry, schema version.

Also batched prediction on crops, the one inference call training, evaluation and deployment share.

The mean/std images and the GMM gate are buffers inside the weights, so the folder alone reproduces
predictions; nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lipseg import __version__
from lipseg.crop import CropGeometry
from lipseg.landmarks import flip_lips
from lipseg.io import write_json_atomic
from lipseg.model import TCNNConfig, TweakedTCNN, VanillaTCNN, images_to_tensor

SCHEMA = "lipseg-tcnn/1"
KNOWN_SCHEMAS = (SCHEMA,)
WEIGHTS_FILE = "model.safetensors"
META_FILE = "lipseg_model.json"


class ModelFolderError(RuntimeError):
    """A model folder that is missing, incomplete, or of an unknown schema."""


def save_model_folder(
    folder: Path, model: VanillaTCNN | TweakedTCNN, geometry: CropGeometry, extra: dict | None = None
) -> None:
    """Write weights and metadata into `folder` (the caller makes the folder itself atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = "tweaked" if isinstance(model, TweakedTCNN) else "vanilla"
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"schema": SCHEMA})
    meta = {
        "schema": SCHEMA,
        "lipseg_version": __version__,
        "kind": kind,
        "config": model.config.to_dict(),
        "components": len(model.heads) if kind == "tweaked" else 0,
        "geometry": geometry.to_dict(),
        "points": "56 Helen lip points (58..113 order), each contour re-spaced by arc length",
        "input": "BGR uint8 crops (B, S, S, 3) -> float (B, 3, S, S) in [0, 255]",
        **(extra or {}),
    }
    write_json_atomic(folder / META_FILE, meta)


def read_model_meta(folder: Path) -> dict:
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise ModelFolderError(f"{folder} is not a lipseg model folder (no {META_FILE})")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("schema") not in KNOWN_SCHEMAS:
        raise ModelFolderError(
            f"{folder}: unknown model schema {meta.get('schema')!r}; this lipseg ({__version__}) reads {KNOWN_SCHEMAS}"
        )
    return meta


def load_model_folder(folder: Path) -> tuple[VanillaTCNN | TweakedTCNN, CropGeometry, dict]:
    folder = Path(folder)
    meta = read_model_meta(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFolderError(f"{folder}: {WEIGHTS_FILE} is missing")
    config = TCNNConfig.from_dict(meta["config"])
    model: VanillaTCNN | TweakedTCNN
    model = TweakedTCNN(config, meta["components"]) if meta["kind"] == "tweaked" else VanillaTCNN(config)
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), CropGeometry(**meta["geometry"]), meta


@dataclass
class CropPredictions:
    lips: np.ndarray  # (N, 56, 2) normalised crop coordinates
    clusters: np.ndarray  # (N,) head used; -1 for a vanilla model


@torch.no_grad()
def predict_crops(model: VanillaTCNN | TweakedTCNN, images: np.ndarray, batch_size: int = 256, flip_average: bool = False) -> CropPredictions:
    """Lips (normalised crop coordinates) and the head used for each crop. `flip_average` also runs the
    mirrored crop and averages the two (test-time augmentation; the head is the plain crop's)."""
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
        if flip_average:
            mirrored = model(torch.flip(batch, dims=[3])).cpu().numpy()
            points = (points + flip_lips(mirrored)) / 2.0
        lips.append(points)
        clusters.append(chosen.cpu().numpy())
    if not lips:
        return CropPredictions(np.zeros((0, 56, 2), np.float32), np.zeros(0, np.int64))
    return CropPredictions(np.concatenate(lips).astype(np.float32), np.concatenate(clusters).astype(np.int64))
