"""Stage `evaluate_segmenters`: every segmenter and the TCNN's landmark polygons, end to end on photos
(dlib face, TCNN lips, then each mask source on the TCNN-located crop), scored with one evaluator.

The best segmenter, and whether it beats the polygons, is decided on the validation photos (carved from
train); the test photos are only reported. Writes label-mask PNGs of the test photos that
../shared/tools/lipeval.py can score, the comparison table, a figure with one row per model, and
models/segmenters/best.json (what `lipseg predict --mask-source auto` follows)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from lipseg.core import paths
from lipseg.core.files import (
    atomic_directory,
    write_json_atomic,
    write_png_atomic,
    write_text_atomic,
)
from lipseg.core.params import Section, load_params, param, run_stage
from lipseg.core.runtime import set_threads
from lipseg.core.tracking import PHOTO_MODEL_NAME, Merit, stage_run, validation_data
from lipseg.data.helen import load_split
from lipseg.data.rejects import reject_rows, report_rejects, require_usable
from lipseg.evaluation.overlays import overlay_grid
from lipseg.evaluation.plots import segmenter_f1_csv
from lipseg.inference.photo_pyfunc import photo_model_package
from lipseg.inference.predictor import LipPredictor
from lipseg.segmentation.compare import (
    LANDMARKS,
    compare_mask_sources,
    comparison_table,
)
from lipseg.segmentation.nets import ARCHITECTURES
from lipseg.segmentation.runner import SegmenterRunner

REPORT_DIR = paths.REPORTS / "evaluate_segmenters"
F1_CSV = paths.REPORTS / "evaluate_segmenters_f1.csv"  # for `dvc plots`: kept in git


@dataclass(frozen=True)
class EvaluateSegmentersParams(Section):
    detector: Literal["hog", "cnn", "hog+cnn"] = "hog"
    detector_upsample: int = param(1, low=0, high=3)
    locator_flip_tta: bool = True  # the TCNN lips that place each crop (as lipseg predict)
    flip_tta: bool = False  # average each crop's probabilities with its mirror image's
    threads: int = param(1, low=0)  # torch threads while measuring: ms per face are one-thread figures
    figure_faces: int = param(8, low=0)


def main() -> None:
    section = load_params("evaluate_segmenters")
    params = EvaluateSegmentersParams.from_params(section, "evaluate_segmenters")
    set_threads(params.threads)  # the ms per face are one-thread figures
    test_records, list_rejects = load_split(paths.RAW, "test")
    crops_manifest = json.loads((paths.CROPS / "manifest.json").read_text(encoding="utf-8"))
    max_pixels = int(crops_manifest["max_pixels"])  # the crop stage's limit (crop.max_pixels)
    val_names = set(crops_manifest["names"]["val"])
    val_records = [record for record in load_split(paths.RAW, "train")[0] if record.name in val_names]
    predictor = LipPredictor(
        paths.TCNN_MODEL,
        params.detector,
        params.detector_upsample,
        engine="torch",
        flip_average=params.locator_flip_tta,
    )
    runners = {
        arch: SegmenterRunner(paths.segmenter_model(arch), flip_average=params.flip_tta) for arch in ARCHITECTURES
    }
    figure_names = frozenset(record.name for record in test_records[: params.figure_faces])
    with stage_run("evaluate_segmenters", section) as run:
        val_rejects, test_rejects = [], []
        val_comparison = compare_mask_sources(
            val_records, predictor, runners, desc="validation photos", rejects=val_rejects, max_pixels=max_pixels
        )
        val = {name: scores.summary() for name, scores in val_comparison.nearest.items()}
        with atomic_directory(REPORT_DIR) as staging:
            comparison = compare_mask_sources(
                test_records,
                predictor,
                runners,
                staging / "pred_test",
                figure_names,
                desc="test photos",
                rejects=test_rejects,
                max_pixels=max_pixels,
            )
            rejects = reject_rows("val", val_rejects) + reject_rows("test", list_rejects + test_rejects)
            reject_counts = report_rejects("evaluate_segmenters", rejects, staging / "rejects.csv", run)
            # Zero photos would score a perfect F1 of 1.0. On failure the staging folder goes, so the log has the list.
            require_usable(
                "evaluate_segmenters",
                {"val": len(val_records) - len(val_rejects), "test": len(test_records) - len(test_rejects)},
                reject_counts,
                "the log above, and rejects.csv in the MLflow run",
            )
            best_arch = max(runners, key=lambda arch: val[arch]["f1_lips"])
            summaries = {name: mask_scores.summary() for name, mask_scores in comparison.nearest.items()}
            as_predicted = {name: mask_scores.summary() for name, mask_scores in comparison.as_predicted.items()}
            for arch, runner in runners.items():
                summaries[arch] |= {
                    "parameters": runner.meta["parameters"],
                    "train_minutes": runner.meta["train_minutes"],
                    "best_val_f1_lips": runner.meta["best_val_f1_lips"],
                }
            table = (
                f"The face nearest the annotated mouth:\n\n{comparison_table(summaries)}\n\n"
                f"Every face found, the PNG `lipseg predict` writes:\n\n{comparison_table(as_predicted)}"
            )
            tiles = comparison.tiles
            captions = [name if index == 0 else "" for name, row in tiles.items() for index in range(len(row))]
            write_png_atomic(
                staging / "models.png",
                overlay_grid(
                    [tile for row in tiles.values() for tile in row],
                    columns=max(1, len(figure_names)),
                    tile_size=128,
                    captions=captions,
                ),
            )
            write_text_atomic(staging / "comparison.md", table + "\n")
        metrics = {
            "models": summaries,
            "as_predicted": {
                name: {key: value for key, value in summary.items() if key.startswith("f1_")}
                for name, summary in as_predicted.items()
            },
            "best_segmenter": best_arch,
            "chosen_on": "validation photos",
            "test_images": len(test_records) - len(test_rejects),
            "rejected": reject_counts,
            "no_face": comparison.no_face,
            "val": {"models": val, "images": len(val_records), "no_face": val_comparison.no_face},
            "flip_tta": params.flip_tta,
            "mask_step_threads": params.threads,
        }
        write_json_atomic(paths.SEGMENTER_METRICS, metrics)
        write_text_atomic(F1_CSV, segmenter_f1_csv(summaries))
        write_json_atomic(
            paths.BEST_SEGMENTER,
            {
                "arch": best_arch,
                "folder": str(paths.segmenter_model(best_arch)),
                "chosen_on": "validation photos",
                "val_f1_lips": val[best_arch]["f1_lips"],
                "val_landmarks_f1_lips": val[LANDMARKS]["f1_lips"],
                "beats_landmarks": val[best_arch]["f1_lips"] > val[LANDMARKS]["f1_lips"],
            },
        )
        for name in summaries:
            key = name.replace(" ", "_")
            run.log_metrics(
                {
                    f"{key}.{metric}": value
                    for metric, value in summaries[name].items()
                    if isinstance(value, (int, float))
                },
                to_parent=True,
            )
            run.log_metrics(
                {f"val.{key}.{metric}": value for metric, value in val[name].items() if isinstance(value, (int, float))}
            )
        run.log_artifact(paths.SEGMENTER_METRICS)
        run.log_artifact(REPORT_DIR / "models.png")
        run.log_artifact(REPORT_DIR / "comparison.md")
        register_photo_model(run, params, best_arch, val, sorted(val_names))
    print(table)
    print(
        f"evaluate_segmenters: best segmenter on the {len(val_records)} validation photos: {best_arch} "
        f"(lips F1 {val[best_arch]['f1_lips']:.3f}, landmark polygons {val[LANDMARKS]['f1_lips']:.3f}); "
        f"{comparison.no_face} of {metrics['test_images']} test photos without a face"
    )


def register_photo_model(run, params: EvaluateSegmentersParams, best_arch: str, val: dict, val_names: list) -> None:
    """Register the photo-level model `lipseg` (photos in, lips and masks out): the TCNN and the best
    segmenter, predicting with the detector and flip settings measured here, its masks from the segmenter
    only when it beat the landmark polygons (as `lipseg predict --mask-source auto`). It is judged on the
    validation photos' lips F1 of the masks it gives, higher is better."""
    use_segmenter = val[best_arch]["f1_lips"] > val[LANDMARKS]["f1_lips"]
    config = {
        "detector": params.detector,
        "upsample": params.detector_upsample,
        "flip_tta": params.locator_flip_tta,
        "mask_source": "segmenter" if use_segmenter else "landmarks",
        "segmenter_flip_tta": params.flip_tta,
    }
    figure = val[best_arch if use_segmenter else LANDMARKS]["f1_lips"]
    run.register(
        PHOTO_MODEL_NAME,
        lambda staging: photo_model_package(paths.TCNN_MODEL, paths.segmenter_model(best_arch), staging, config),
        Merit("val.f1_lips", figure, higher_is_better=True, data=validation_data(val_names)),
    )


if __name__ == "__main__":
    run_stage(main)
