"""Stage `evaluate_segmenters`: every segmenter and the TCNN's landmark polygons, end to end on the
test photos (dlib face, TCNN lips, then each mask source on the TCNN-located crop), scored with one
evaluator. Writes label-mask PNGs that ../shared/tools/lipeval.py can score, the comparison table, a
figure with one row per model, and models/segmenters/best.json (what `lipseg predict` uses)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from lipseg.crop import read_image
from lipseg.datasets.helen import load_split
from lipseg.io import atomic_directory, load_params, write_json_atomic, write_png_atomic, write_text_atomic
from lipseg.landmarks import HELEN_LIPS
from lipseg.masks import crop_around, label_mask_from_lips, overlay, overlay_grid
from lipseg.metrics import pick_face
from lipseg.predictor import LipPredictor
from lipseg.segment import MaskScores, SegmenterRunner, comparison_table
from lipseg.segmenters import ARCHITECTURES
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
TCNN_DIR = Path("models/tcnn")
SEGMENTERS_DIR = Path("models/segmenters")
BEST = SEGMENTERS_DIR / "best.json"
REPORT_DIR = Path("reports/evaluate_segmenters")
METRICS = Path("metrics_segmenters.json")
LANDMARKS = "tcnn landmarks"


def main() -> None:
    params = load_params("evaluate_segmenters")
    torch.set_num_threads(int(params["threads"]))  # the ms per face are one-thread figures
    records, _ = load_split(RAW_DIR, "test")
    predictor = LipPredictor(TCNN_DIR, str(params["detector"]), int(params["detector_upsample"]), engine="torch",
                             flip_average=bool(params["locator_flip_tta"]))
    runners = {arch: SegmenterRunner(SEGMENTERS_DIR / arch, flip_average=bool(params["flip_tta"])) for arch in ARCHITECTURES}
    scores = {name: MaskScores() for name in [LANDMARKS, *runners]}
    figure_names = {record.name for record in records[: int(params["figure_faces"])]}
    tiles: dict[str, list[np.ndarray]] = {name: [] for name in ["ground truth", *scores]}
    no_face = 0
    with stage_run("evaluate_segmenters", params) as run:
        with atomic_directory(REPORT_DIR) as staging:
            for record in records:
                image = read_image(record.image_path)
                if image is None:
                    continue
                height, width = image.shape[:2]
                gt_lips = record.points[HELEN_LIPS]
                truth = label_mask_from_lips(gt_lips, height, width)
                faces = [face.lips for face in predictor.predict(image).faces]
                no_face += not faces
                # lipeval scores the face nearest the annotated mouth from a JSON file; a PNG has no faces,
                # so the same face is chosen here, or the other faces would count as false positives.
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
                    write_png_atomic(staging / "pred_test" / name.replace(" ", "_") / f"{record.name}.png", mask)
                    if record.name in figure_names:
                        tiles[name].append(crop_around(overlay(image, mask, chosen[0] if chosen and name == LANDMARKS else None), gt_lips, 0.35)[0])
                if record.name in figure_names:
                    tiles["ground truth"].append(crop_around(overlay(image, truth, gt_lips), gt_lips, 0.35)[0])
            summaries = {name: mask_scores.summary() for name, mask_scores in scores.items()}
            for arch, runner in runners.items():
                summaries[arch] |= {"parameters": runner.meta["parameters"], "train_minutes": runner.meta["train_minutes"],
                                    "best_val_f1_lips": runner.meta["best_val_f1_lips"]}
            best_arch = max(runners, key=lambda arch: summaries[arch]["f1_lips"])
            metrics = {"models": summaries, "best_segmenter": best_arch, "test_images": len(records), "no_face": no_face,
                       "flip_tta": bool(params["flip_tta"]), "mask_step_threads": int(params["threads"])}
            grid_tiles = [tile for row in tiles.values() for tile in row]
            captions = [name if index == 0 else "" for name, row in tiles.items() for index in range(len(row))]
            write_png_atomic(staging / "models.png", overlay_grid(grid_tiles, columns=max(1, len(figure_names)), tile_size=128, captions=captions))
            table = comparison_table(summaries)
            write_text_atomic(staging / "comparison.md", table + "\n")
        write_json_atomic(METRICS, metrics)
        write_json_atomic(BEST, {
            "arch": best_arch, "folder": str(SEGMENTERS_DIR / best_arch), "f1_lips": summaries[best_arch]["f1_lips"],
            "landmarks_f1_lips": summaries[LANDMARKS]["f1_lips"],
            "beats_landmarks": summaries[best_arch]["f1_lips"] > summaries[LANDMARKS]["f1_lips"],
        })
        for name, summary in summaries.items():
            run.log_metrics({f"{name.replace(' ', '_')}.{key}": value for key, value in summary.items()
                             if isinstance(value, (int, float))}, to_parent=True)
        run.log_artifact(METRICS)
        run.log_artifact(REPORT_DIR / "models.png")
        run.log_artifact(REPORT_DIR / "comparison.md")
    print(table)
    print(f"evaluate_segmenters: best segmenter {best_arch}; {no_face} of {len(records)} test photos without a face")


if __name__ == "__main__":
    main()
