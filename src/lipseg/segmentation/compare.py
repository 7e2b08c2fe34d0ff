"""Every mask source on the same photos, end to end: dlib face, TCNN lips, then the landmark polygons and
each segmenter on the TCNN-located crop, scored by one evaluator (the EVALUATION.md classes), with the
cost of each mask step and mouth close-ups for a figure."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipseg.core.files import write_png_atomic
from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.data.helen import Record
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.data.photos import read_record_images
from lipseg.data.rejects import Reject
from lipseg.evaluation.masks import label_mask_from_faces, label_mask_from_lips
from lipseg.evaluation.overlays import crop_around, overlay
from lipseg.evaluation.pixels import PixelCounts
from lipseg.evaluation.report import pick_face
from lipseg.segmentation.runner import SegmenterRunner


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
            out |= {
                f"f1_{name}": values["f1"],
                f"dice_{name}": values["f1"],
                f"iou_{name}": values["iou"],
                f"precision_{name}": values["precision"],
                f"recall_{name}": values["recall"],
            }
        out["pixel_accuracy_mouth_region"] = self.correct / self.region if self.region else None
        out["mean_image_f1_lips"] = self.counts.mean_image_f1("lips")
        out["images"] = self.counts.n_images
        out["ms_per_face"] = float(np.median(self.milliseconds)) if self.milliseconds else None
        return out


LANDMARKS = "tcnn landmarks"  # the mask source that fills the TCNN's polygons


def _mask(
    source: str, image: np.ndarray, faces_lips: list[np.ndarray], runners: dict[str, SegmenterRunner]
) -> np.ndarray:
    if source == LANDMARKS:
        return label_mask_from_faces(faces_lips, *image.shape[:2])
    return runners[source].label_mask(image, faces_lips)


@dataclass
class Comparison:
    """Each mask source's scores two ways, mouth close-ups for a figure and the photos without a face."""

    nearest: dict[str, MaskScores]  # the face nearest the annotated mouth alone (lipeval's choice for JSON)
    as_predicted: dict[str, MaskScores]  # every face found, exactly the PNG `lipseg predict` writes
    tiles: dict[str, list[np.ndarray]]
    no_face: int


def compare_mask_sources(
    records: list[Record],
    predictor,
    runners: dict[str, SegmenterRunner],
    prediction_dir: Path | None = None,
    figure_names: frozenset[str] = frozenset(),
    desc: str = "mask sources",
    progress: bool = True,
    rejects: list[Reject] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Comparison:
    """Every mask source on the same faces: `predictor` (a LipPredictor) finds the faces and their TCNN
    lips, then the landmark polygons and each segmenter label them. Scored two ways: the face nearest the
    annotated mouth alone (other faces of a photo may be unannotated, and would count as false positives),
    and every face, as `lipseg predict` writes it. With `prediction_dir`, writes what predict writes as
    <dir>/<source>/<name>.png for lipeval. Photos that cannot be used are appended to `rejects`."""
    names = [LANDMARKS, *runners]
    nearest, as_predicted = {name: MaskScores() for name in names}, {name: MaskScores() for name in names}
    tiles: dict[str, list[np.ndarray]] = {name: [] for name in ["ground truth", *names]}
    no_face = 0
    for record, image in read_record_images(records, [] if rejects is None else rejects, max_pixels, desc, progress):
        height, width = image.shape[:2]
        gt_lips = record.points[HELEN_LIPS]
        truth = label_mask_from_lips(gt_lips, height, width)
        faces = [face.lips for face in predictor.predict(image).faces]
        no_face += not faces
        chosen = [pick_face(faces, gt_lips)] if faces else []

        for name in names:
            started = time.perf_counter()
            mask = _mask(name, image, chosen, runners)
            if chosen:
                nearest[name].milliseconds.append((time.perf_counter() - started) * 1000)
            nearest[name].add(mask, truth, gt_lips)
            everyone = mask if len(faces) <= 1 else _mask(name, image, faces, runners)
            as_predicted[name].add(everyone, truth, gt_lips)
            if prediction_dir is not None:
                write_png_atomic(prediction_dir / name.replace(" ", "_") / f"{record.name}.png", everyone)
            if record.name in figure_names:
                points = chosen[0] if chosen and name == LANDMARKS else None
                tiles[name].append(crop_around(overlay(image, mask, points), gt_lips, 0.35)[0])
        if record.name in figure_names:
            tiles["ground truth"].append(crop_around(overlay(image, truth, gt_lips), gt_lips, 0.35)[0])
    return Comparison(nearest, as_predicted, tiles, no_face)


def comparison_table(summaries: dict[str, dict]) -> str:
    """Markdown table: one row per mask source, F1 per class, lips IoU, pixel accuracy, cost and size."""
    lines = [
        "| model | lips F1 | upper lip | lower lip | inner mouth | mouth | lips IoU | pixel acc. (mouth region) "
        "| ms/face (1 thread) | parameters | training min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def number(value: float | int | None, digits: int = 3) -> str:
        return "-" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}")

    for name, summary in summaries.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                [
                    number(summary["f1_lips"]),
                    number(summary["f1_upper_lip"]),
                    number(summary["f1_lower_lip"]),
                    number(summary["f1_inner_mouth"]),
                    number(summary["f1_mouth"]),
                    number(summary["iou_lips"]),
                    number(summary["pixel_accuracy_mouth_region"]),
                    number(summary["ms_per_face"], 2),
                    number(summary.get("parameters")),
                    number(summary.get("train_minutes"), 1),
                ]
            )
            + " |"
        )
    return "\n".join(lines)
