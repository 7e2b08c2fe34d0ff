"""Stage `evaluate`: base and tweaked TCNN on the test crops, scored with the EVALUATION.md metrics."""

from __future__ import annotations

import json
from dataclasses import dataclass

from lipseg.core import paths
from lipseg.core.files import (
    atomic_directory,
    write_json_atomic,
    write_png_atomic,
    write_text_atomic,
)
from lipseg.core.params import Section, load_params, param, run_stage
from lipseg.core.tracking import MODEL_NAME, Merit, stage_run, validation_data
from lipseg.data.crops import CropSet
from lipseg.data.helen import load_split
from lipseg.evaluation.overlays import overlay_grid
from lipseg.evaluation.plots import ced_csv, ced_curves
from lipseg.evaluation.report import face_truth
from lipseg.inference.pyfunc import crop_model_package
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import predict_crops
from lipseg.tcnn.scoring import (
    ced_table,
    format_summary,
    ground_truth_for,
    overlay_tiles,
    per_cluster,
    score,
    score_metrics,
    write_prediction_files,
)

MODELS = {"base": paths.BASE_MODEL, "tweaked": paths.TCNN_MODEL}
CED_CSV = paths.REPORTS / "evaluate_ced.csv"
REPORT_DIR = paths.REPORTS / "evaluate"


@dataclass(frozen=True)
class EvaluateParams(Section):
    fail_threshold: float = param(0.10, low=0, low_open=True)  # NME_io above this counts as a failure (FR@0.1)
    ced_max: float = param(0.15, low=0, low_open=True)
    overlay_count: int = param(16, low=0)
    flip_tta: bool = True  # average each crop's prediction with its mirror image's (as lipseg predict)
    register_model: bool = True  # register the tweaked model as lipseg-tcnn (champion only when better)


def main() -> None:
    section = load_params("evaluate")
    params = EvaluateParams.from_params(section, "evaluate")
    test = CropSet.load(paths.CROPS / "test.npz")
    val = CropSet.load(paths.CROPS / "val.npz")
    records = {record.name: record for record in load_split(paths.RAW, "test")[0]}
    train_records = {record.name: record for record in load_split(paths.RAW, "train")[0]}
    truth = ground_truth_for(test, records)
    val_truth = ground_truth_for(val, train_records)
    manifest = json.loads((paths.CROPS / "manifest.json").read_text(encoding="utf-8"))
    # Faces the detector missed (crop.box_source: detector) have no crop: they are scored as failures.
    missed = {
        split: [face_truth(records_of[name]) for name in manifest.get("detector_misses", {}).get(split, [])]
        for split, records_of in (("test", records), ("val", train_records))
    }
    with stage_run("evaluate", section) as run:
        scores, val_scores, meta, crop_predictions = {}, {}, {}, {}
        for label, folder in MODELS.items():
            model, _, meta[label] = load_tcnn(folder)
            crop_predictions[label] = predict_crops(model, test.images, flip_average=params.flip_tta)
            scores[label] = score(crop_predictions[label], test, truth, params.fail_threshold, missed["test"])
            # The validation split (carved from train) is what settings are chosen on; test is only reported.
            val_predictions = predict_crops(model, val.images, flip_average=params.flip_tta)
            val_scores[label] = score(val_predictions, val, val_truth, params.fail_threshold, missed["val"])
        thresholds, curves = ced_table(scores, params.ced_max)
        metrics = {label: score_metrics(model_score) for label, model_score in scores.items()}
        metrics["val"] = {label: score_metrics(model_score) for label, model_score in val_scores.items()}
        metrics["val"]["images"] = len(val)
        metrics["k"] = int(meta["tweaked"]["components"])
        metrics["test_images"] = len(test) + len(missed["test"])
        metrics["test_detector_misses"] = len(missed["test"])
        metrics["crops_from"] = "ground-truth landmarks"
        metrics["tweaked_vs_base_nme_io"] = metrics["tweaked"]["nme_io"] / metrics["base"]["nme_io"]
        metrics["per_cluster"] = per_cluster(scores["base"], scores["tweaked"])
        with atomic_directory(REPORT_DIR) as staging:
            for label, model_score in scores.items():
                write_prediction_files(staging / "pred_test" / label, test, model_score)
                write_json_atomic(staging / f"report_{label}.json", model_score.summary)
            ced_curves(thresholds, curves, staging / "ced.png", "NME (inter-ocular)")
            # The crop stage's pixel limit (crop.max_pixels): these photos passed it there.
            max_pixels = int(manifest["max_pixels"])
            tiles, captions = overlay_tiles(test, records, scores, params.overlay_count, max_pixels)
            write_png_atomic(staging / "overlays.png", overlay_grid(tiles, columns=6, tile_size=160, captions=captions))
            # Last in the block: the report folder is swapped in only once everything is written.
            write_json_atomic(paths.METRICS, metrics)
            write_text_atomic(CED_CSV, ced_csv(thresholds, curves))
        for label in scores:
            run.log_metrics({f"{label}.{key}": value for key, value in metrics[label].items()}, to_parent=True)
            run.log_metrics(
                {f"val.{label}.{key}": value for key, value in metrics["val"][label].items()}, to_parent=True
            )
        run.log_metrics({"tweaked_vs_base_nme_io": metrics["tweaked_vs_base_nme_io"]}, to_parent=True)
        run.log_artifact(paths.METRICS)
        run.log_artifact(REPORT_DIR / "ced.png")
        run.log_artifact(REPORT_DIR / "overlays.png")
        if params.register_model:
            example = test.images[: min(4, len(test))]
            # Judged on the validation photos (test is only reported): lips F1, higher is better.
            merit = Merit(
                "val.tweaked.f1_lips",
                metrics["val"]["tweaked"]["f1_lips"],
                higher_is_better=True,
                data=validation_data(manifest["names"]["val"]),
            )
            # Registered to predict as its logged metrics were measured: with or without flip averaging.
            run.register(
                MODEL_NAME,
                lambda staging: crop_model_package(
                    MODELS["tweaked"],
                    example,
                    crop_predictions["tweaked"].lips[: len(example)],
                    staging,
                    model_config={"flip_average": params.flip_tta},
                ),
                merit,
            )
    print(format_summary(metrics))


if __name__ == "__main__":
    run_stage(main)
