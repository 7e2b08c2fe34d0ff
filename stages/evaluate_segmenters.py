"""Stage `evaluate_segmenters`: every segmenter and the TCNN's landmark polygons, end to end on photos
(dlib face, TCNN lips, then each mask source on the TCNN-located crop), scored with one evaluator.

The best segmenter, and whether it beats the polygons, is decided on the validation photos (carved from
train); the test photos are only reported. Writes label-mask PNGs of the test photos that
../shared/tools/lipeval.py can score, the comparison table, a figure with one row per model, and
models/segmenters/best.json (what `lipseg predict --mask-source auto` follows)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lipseg.datasets.helen import load_split, reject_rows, report_rejects, require_usable
from lipseg.io import atomic_directory, load_params, write_json_atomic, write_png_atomic, write_text_atomic
from lipseg.masks import overlay_grid
from lipseg.predictor import LipPredictor
from lipseg.segment import LANDMARKS, SegmenterRunner, compare_mask_sources, comparison_table
from lipseg.segmenters import ARCHITECTURES
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CROPS_MANIFEST = Path("data/crops/manifest.json")
TCNN_DIR = Path("models/tcnn")
SEGMENTERS_DIR = Path("models/segmenters")
BEST = SEGMENTERS_DIR / "best.json"
REPORT_DIR = Path("reports/evaluate_segmenters")
METRICS = Path("metrics_segmenters.json")


def main() -> None:
    params = load_params("evaluate_segmenters")
    torch.set_num_threads(int(params["threads"]))  # the ms per face are one-thread figures
    test_records, list_rejects = load_split(RAW_DIR, "test")
    crops_manifest = json.loads(CROPS_MANIFEST.read_text(encoding="utf-8"))
    max_pixels = int(crops_manifest["max_pixels"])  # the crop stage's limit (crop.max_pixels)
    val_names = set(crops_manifest["names"]["val"])
    val_records = [record for record in load_split(RAW_DIR, "train")[0] if record.name in val_names]
    predictor = LipPredictor(TCNN_DIR, str(params["detector"]), int(params["detector_upsample"]), engine="torch",
                             flip_average=bool(params["locator_flip_tta"]))
    runners = {arch: SegmenterRunner(SEGMENTERS_DIR / arch, flip_average=bool(params["flip_tta"])) for arch in ARCHITECTURES}
    figure_names = frozenset(record.name for record in test_records[: int(params["figure_faces"])])
    with stage_run("evaluate_segmenters", params) as run:
        val_rejects, test_rejects = [], []
        val_scores, _, val_no_face = compare_mask_sources(val_records, predictor, runners, desc="validation photos",
                                                          rejects=val_rejects, max_pixels=max_pixels)
        val = {name: scores.summary() for name, scores in val_scores.items()}
        with atomic_directory(REPORT_DIR) as staging:
            scores, tiles, no_face = compare_mask_sources(test_records, predictor, runners, staging / "pred_test", figure_names,
                                                          desc="test photos", rejects=test_rejects, max_pixels=max_pixels)
            rejects = reject_rows("val", val_rejects) + reject_rows("test", list_rejects + test_rejects)
            reject_counts = report_rejects("evaluate_segmenters", rejects, staging / "rejects.csv", run)
            # Zero photos would score a perfect F1 of 1.0. On failure the staging folder goes, so the log has the list.
            require_usable("evaluate_segmenters", {"val": len(val_records) - len(val_rejects), "test": len(test_records) - len(test_rejects)},
                           reject_counts, "the log above, and rejects.csv in the MLflow run")
            best_arch = max(runners, key=lambda arch: val[arch]["f1_lips"])
            summaries = {name: mask_scores.summary() for name, mask_scores in scores.items()}
            for arch, runner in runners.items():
                summaries[arch] |= {"parameters": runner.meta["parameters"], "train_minutes": runner.meta["train_minutes"],
                                    "best_val_f1_lips": runner.meta["best_val_f1_lips"]}
            table = comparison_table(summaries)
            captions = [name if index == 0 else "" for name, row in tiles.items() for index in range(len(row))]
            write_png_atomic(staging / "models.png", overlay_grid([tile for row in tiles.values() for tile in row],
                                                                  columns=max(1, len(figure_names)), tile_size=128, captions=captions))
            write_text_atomic(staging / "comparison.md", table + "\n")
        metrics = {"models": summaries, "best_segmenter": best_arch, "chosen_on": "validation photos",
                   "test_images": len(test_records) - len(test_rejects), "rejected": reject_counts,
                   "no_face": no_face, "val": {"models": val, "images": len(val_records), "no_face": val_no_face},
                   "flip_tta": bool(params["flip_tta"]), "mask_step_threads": int(params["threads"])}
        write_json_atomic(METRICS, metrics)
        write_json_atomic(BEST, {
            "arch": best_arch, "folder": str(SEGMENTERS_DIR / best_arch), "chosen_on": "validation photos",
            "val_f1_lips": val[best_arch]["f1_lips"], "val_landmarks_f1_lips": val[LANDMARKS]["f1_lips"],
            "beats_landmarks": val[best_arch]["f1_lips"] > val[LANDMARKS]["f1_lips"],
        })
        for name in summaries:
            key = name.replace(" ", "_")
            run.log_metrics({f"{key}.{metric}": value for metric, value in summaries[name].items() if isinstance(value, (int, float))}, to_parent=True)
            run.log_metrics({f"val.{key}.{metric}": value for metric, value in val[name].items() if isinstance(value, (int, float))})
        run.log_artifact(METRICS)
        run.log_artifact(REPORT_DIR / "models.png")
        run.log_artifact(REPORT_DIR / "comparison.md")
    print(table)
    print(f"evaluate_segmenters: best segmenter on the {len(val_records)} validation photos: {best_arch} "
          f"(lips F1 {val[best_arch]['f1_lips']:.3f}, landmark polygons {val[LANDMARKS]['f1_lips']:.3f}); "
          f"{no_face} of {metrics['test_images']} test photos without a face")


if __name__ == "__main__":
    main()
