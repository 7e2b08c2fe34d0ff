"""Stage `evaluate`: base and tweaked TCNN on the test crops, scored with the EVALUATION.md metrics."""

from __future__ import annotations

import json
from pathlib import Path

from lipseg.crop import CropSet
from lipseg.datasets.helen import load_split
from lipseg.evaluation import (
    ced_table, format_summary, ground_truth_for, overlay_tiles, per_cluster, score, score_metrics, write_prediction_files,
)
from lipseg.io import atomic_directory, load_npz, load_params, write_json_atomic, write_png_atomic, write_text_atomic
from lipseg.masks import overlay_grid
from lipseg.plots import ced_curves
from lipseg.model_folder import load_model_folder, predict_crops
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CROPS_DIR = Path("data/crops")
MODELS = {"base": Path("models/base"), "tweaked": Path("models/tcnn")}
METRICS = Path("metrics.json")
CED_CSV = Path("reports/evaluate_ced.csv")
REPORT_DIR = Path("reports/evaluate")


def main() -> None:
    params = load_params("evaluate")
    test = CropSet.from_arrays(load_npz(CROPS_DIR / "test.npz"))
    val = CropSet.from_arrays(load_npz(CROPS_DIR / "val.npz"))
    records = {record.name: record for record in load_split(RAW_DIR, "test")[0]}
    truth = ground_truth_for(test, records)
    val_truth = ground_truth_for(val, {record.name: record for record in load_split(RAW_DIR, "train")[0]})
    flip_average, fail_threshold = bool(params["flip_tta"]), float(params["fail_threshold"])
    with stage_run("evaluate", params) as run:
        scores, val_scores, meta, crop_predictions = {}, {}, {}, {}
        for label, folder in MODELS.items():
            model, _, meta[label] = load_model_folder(folder)
            crop_predictions[label] = predict_crops(model, test.images, flip_average=flip_average)
            scores[label] = score(crop_predictions[label], test, truth, fail_threshold)
            # The validation split (carved from train) is what settings are chosen on; test is only reported.
            val_scores[label] = score(predict_crops(model, val.images, flip_average=flip_average), val, val_truth, fail_threshold)
        thresholds, curves = ced_table(scores, float(params["ced_max"]))
        metrics = {label: score_metrics(model_score) for label, model_score in scores.items()}
        metrics["val"] = {label: score_metrics(model_score) for label, model_score in val_scores.items()}
        metrics["val"]["images"] = len(val)
        metrics["k"] = int(meta["tweaked"]["components"])
        metrics["test_images"] = len(test)
        metrics["crops_from"] = "ground-truth landmarks"
        metrics["tweaked_vs_base_nme_io"] = metrics["tweaked"]["nme_io"] / metrics["base"]["nme_io"]
        metrics["per_cluster"] = per_cluster(scores["base"], scores["tweaked"])
        write_json_atomic(METRICS, metrics)
        write_text_atomic(CED_CSV, "threshold," + ",".join(curves) + "\n" + "".join(
            f"{t:.4f}," + ",".join(f"{curves[label][i]:.4f}" for label in curves) + "\n" for i, t in enumerate(thresholds)))
        with atomic_directory(REPORT_DIR) as staging:
            for label, model_score in scores.items():
                write_prediction_files(staging / "pred_test" / label, test, model_score)
                write_json_atomic(staging / f"report_{label}.json", model_score.summary)
            ced_curves(thresholds, curves, staging / "ced.png", "NME (inter-ocular)")
            # The crop stage's pixel limit (crop.max_pixels): these photos passed it there.
            max_pixels = int(json.loads((CROPS_DIR / "manifest.json").read_text(encoding="utf-8"))["max_pixels"])
            tiles, captions = overlay_tiles(test, records, scores, int(params["overlay_count"]), max_pixels)
            write_png_atomic(staging / "overlays.png", overlay_grid(tiles, columns=6, tile_size=160, captions=captions))
        for label in scores:
            run.log_metrics({f"{label}.{key}": value for key, value in metrics[label].items()}, to_parent=True)
            run.log_metrics({f"val.{label}.{key}": value for key, value in metrics["val"][label].items()}, to_parent=True)
        run.log_metrics({"tweaked_vs_base_nme_io": metrics["tweaked_vs_base_nme_io"]}, to_parent=True)
        run.log_artifact(METRICS)
        run.log_artifact(REPORT_DIR / "ced.png")
        run.log_artifact(REPORT_DIR / "overlays.png")
        if params["register_model"]:
            example = test.images[: min(4, len(test))]
            version = run.register_tcnn(MODELS["tweaked"], example, crop_predictions["tweaked"].lips[: len(example)])
            print(f"evaluate: registered lipseg-tcnn version {version} (alias champion)")
    print(format_summary(metrics))


if __name__ == "__main__":
    main()
