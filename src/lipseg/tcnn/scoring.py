"""Scoring trained models on a split of crops: predictions back in photo pixels, lipeval-equal metrics,
prediction files in the EVALUATION.md format, per-cluster breakdowns and overlay tiles."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipseg.core.files import write_text_atomic
from lipseg.core.images import DEFAULT_MAX_PIXELS, read_image
from lipseg.data.crops import CropSet
from lipseg.data.geometry import crop_to_image
from lipseg.data.helen import Record
from lipseg.data.landmarks import HELEN_LIPS, mouth_widths, respace_lips
from lipseg.evaluation.masks import label_mask_from_lips
from lipseg.evaluation.overlays import crop_around, overlay
from lipseg.evaluation.points import ced_curve, nme
from lipseg.evaluation.report import GroundTruthFace, headline_metrics, summarise
from lipseg.tcnn.predict import CropPredictions


@dataclass
class ModelScore:
    lips_image: np.ndarray  # (N, 56, 2) predictions in image pixels
    clusters: np.ndarray  # (N,)
    summary: dict[str, Any]  # metrics.summarise report (lipeval keys)
    headline: dict[str, float]
    nme_io: np.ndarray  # (N,) against the original Helen points, as lipeval
    nme_io_respaced: np.ndarray  # (N,) against the arc-length re-spaced ground truth
    nme_mw_respaced: np.ndarray


def to_image(predictions: CropPredictions, crops: CropSet) -> np.ndarray:
    return (
        np.stack([crop_to_image(points, transform) for points, transform in zip(predictions.lips, crops.image_to_crop)])
        if len(crops)
        else np.zeros((0, 56, 2), np.float32)
    )


def crop_boxes(crops: CropSet) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 of each crop's square in image pixels (axis-aligned bound)."""
    corners = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    boxes = []
    for transform in crops.image_to_crop:
        points = crop_to_image(corners, transform)
        boxes.append([*points.min(axis=0), *points.max(axis=0)])
    return np.asarray(boxes, np.float32).reshape(-1, 4)


def score(
    predictions: CropPredictions,
    crops: CropSet,
    truth: list[GroundTruthFace],
    fail_threshold: float,
    missed: list[GroundTruthFace] = (),
) -> ModelScore:
    """Predictions on unjittered crops (one per image, in `truth` order) scored as lipeval would; `missed`
    faces (no crop: the detector found no face there) count as predictions of no face, i.e. failures."""
    lips_image = to_image(predictions, crops)
    summary = summarise(
        [[lips] for lips in lips_image] + [[] for _ in missed], [*truth, *missed], fail_threshold=fail_threshold
    )
    gt_lips = np.stack([face.points[HELEN_LIPS] for face in truth])
    respaced = np.stack([respace_lips(lips) for lips in gt_lips])
    inter_ocular = crops.inter_ocular.astype(np.float64)
    return ModelScore(
        lips_image=lips_image,
        clusters=predictions.clusters,
        summary=summary,
        headline=headline_metrics(summary),
        nme_io=nme(lips_image, gt_lips, inter_ocular),
        nme_io_respaced=nme(lips_image, respaced, inter_ocular),
        nme_mw_respaced=nme(lips_image, respaced, mouth_widths(respaced)),
    )


def score_metrics(model_score: ModelScore) -> dict[str, float]:
    """The metrics.json entry of one model on one split: lipeval's headline figures plus the NMEs
    against the re-spaced ground truth."""
    return {
        **model_score.headline,
        "nme_io_respaced": float(np.nanmean(model_score.nme_io_respaced)),
        "nme_mw_respaced": float(np.nanmean(model_score.nme_mw_respaced)),
    }


def ground_truth_for(crops: CropSet, records: dict[str, Record]) -> list[GroundTruthFace]:
    return [
        GroundTruthFace(points=records[str(name)].points, height=int(hw[0]), width=int(hw[1]), name=str(name))
        for name, hw in zip(crops.names, crops.image_hw)
    ]


def write_prediction_files(folder: Path, crops: CropSet, model_score: ModelScore) -> None:
    """One `<name>.json` per image in the EVALUATION.md format (lipeval reads these directly)."""
    boxes = crop_boxes(crops)
    for index, name in enumerate(crops.names):
        face = {
            "lips": model_score.lips_image[index].astype(np.float64).tolist(),  # exact: lipeval must agree
            "box": np.round(boxes[index].astype(np.float64), 2).tolist(),
            "cluster": int(model_score.clusters[index]),
        }
        write_text_atomic(folder / f"{name}.json", json.dumps({"faces": [face]}) + "\n")


def per_cluster(base: ModelScore, tweaked: ModelScore) -> dict[str, dict[str, float]]:
    """Base vs tweaked NME on the test images the gate sends to each head."""
    breakdown = {}
    for cluster in np.unique(tweaked.clusters):
        members = tweaked.clusters == cluster
        breakdown[f"cluster_{int(cluster)}"] = {
            "images": int(members.sum()),
            "base_nme_io": float(base.nme_io[members].mean()),
            "tweaked_nme_io": float(tweaked.nme_io[members].mean()),
            "base_nme_mw_respaced": float(base.nme_mw_respaced[members].mean()),
            "tweaked_nme_mw_respaced": float(tweaked.nme_mw_respaced[members].mean()),
        }
    return breakdown


def ced_table(
    scores: dict[str, ModelScore], max_threshold: float, steps: int = 61
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    thresholds = None
    curves = {}
    for label, model_score in scores.items():
        thresholds, curves[label] = ced_curve(model_score.nme_io, max_threshold, steps)
    return thresholds, curves


def overlay_tiles(
    crops: CropSet,
    records: dict[str, Record],
    scores: dict[str, ModelScore],
    count: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[np.ndarray], list[str]]:
    """Mouth close-ups, one row per image: ground truth, then each model's mask and points (the photos
    made crops, so they read: `max_pixels` must be the crop stage's)."""
    tiles, captions = [], []
    for index in range(min(count, len(crops))):
        name = str(crops.names[index])
        image = read_image(records[name].image_path, max_pixels)
        height, width = image.shape[:2]
        gt_lips = records[name].points[HELEN_LIPS]
        rows = [("ground truth", gt_lips)] + [(label, s.lips_image[index]) for label, s in scores.items()]
        for label, lips in rows:
            painted = overlay(image, label_mask_from_lips(lips, height, width), lips)
            tile, _ = crop_around(painted, gt_lips, margin=0.35)
            tiles.append(tile)
            captions.append(f"{name} {label}")
    return tiles, captions


SUMMARY_COLUMNS = (
    ("lips", "f1_lips"),
    ("upper", "f1_upper_lip"),
    ("lower", "f1_lower_lip"),
    ("inner", "f1_inner_mouth"),
    ("mouth", "f1_mouth"),
    ("NME_io", "nme_io"),
    ("NME_io*", "nme_io_respaced"),
    ("NME_mw", "nme_mw"),
    ("FR@0.1", "failure_rate"),
)


def format_summary(metrics: dict[str, Any]) -> str:
    """A readable table of metrics.json: F1 per class, NMEs and failure rate for base and tweaked."""
    lines = [
        f"test images: {metrics['test_images']} (crops from {metrics['crops_from']}), K = {metrics['k']}",
        f"{'model':8s}" + "".join(f"{title:>9s}" for title, _ in SUMMARY_COLUMNS),
    ]
    for model in ("base", "tweaked"):
        lines.append(f"{model:8s}" + "".join(f"{metrics[model][key]:9.4f}" for _, key in SUMMARY_COLUMNS))
    if "val" in metrics:  # the split settings are chosen on
        lines.append(f"validation split ({metrics['val']['images']} images, carved from train):")
        for model in ("base", "tweaked"):
            lines.append(f"{model:8s}" + "".join(f"{metrics['val'][model][key]:9.4f}" for _, key in SUMMARY_COLUMNS))
    lines.append("F1 = pooled pixel F1 (EVALUATION.md); NME_io* = against the arc-length re-spaced ground truth")
    lines.append(
        f"tweaked / base NME_io* = {metrics['tweaked']['nme_io_respaced'] / metrics['base']['nme_io_respaced']:.3f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(
        format_summary(
            json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "metrics.json").read_text(encoding="utf-8"))
        )
    )
