"""Stage `segment_crops`: 96 px mouth crops with label masks for the segmenters, jittered the way the
TCNN's located boxes differ from ground-truth boxes (measured on the validation photos)."""

from __future__ import annotations

import json
from pathlib import Path

from lipseg.crop import CropGeometry, box_differences
from lipseg.datasets.faceparts import list_records, validate_class_table
from lipseg.datasets.helen import load_split, reject_rows, report_rejects, require_usable
from lipseg.io import atomic_directory, load_params, write_json_atomic, write_npz_atomic
from lipseg.landmarks import HELEN_LIPS
from lipseg.predictor import LipPredictor
from lipseg.segment import LocatorSpread, SegmentJitter, locate_lips, make_parts_crops, make_segment_crops, merge_crops
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CROPS_MANIFEST = Path("data/crops/manifest.json")
# The vanilla TCNN measures the locator spread: the heads move it by well under a pixel, and leaning on
# models/base keeps a change of K (or of the heads) from retraining all four segmenters.
TCNN_DIR = Path("models/base")
OUT_DIR = Path("data/segment_crops")
REJECTS_CSV = Path("reports/segment_crops/rejects.csv")


def main() -> None:
    params = load_params("segment_crops")
    geometry = CropGeometry(size=int(params["size"]), margin=float(params["margin"]))
    jitter = SegmentJitter.from_params(params)
    seed = int(params["seed"])
    with stage_run("segment_crops", params) as run:
        records, list_rejects = load_split(RAW_DIR, "train")
        crops_manifest = json.loads(CROPS_MANIFEST.read_text(encoding="utf-8"))
        max_pixels = int(crops_manifest["max_pixels"])  # the crop stage's limit (crop.max_pixels)
        # The TCNN's validation split, so the segmenters are tuned on the same photos and never on test.
        val_names = set(crops_manifest["names"]["val"])
        fit_records = [record for record in records if record.name not in val_names]
        val_records = [record for record in records if record.name in val_names]
        predictor = LipPredictor(TCNN_DIR, str(params["detector"]), int(params["detector_upsample"]), engine="torch",
                                 flip_average=bool(params["locator_flip_tta"]))
        located = locate_lips(predictor, val_records, max_pixels=max_pixels)
        spread_stats = box_differences(geometry, located, {record.name: record.points[HELEN_LIPS] for record in val_records})
        spread = LocatorSpread.from_dict(spread_stats)
        train = make_segment_crops(fit_records, geometry, spread, jitter, seed=seed, desc="segment crops train", max_pixels=max_pixels)
        val = make_segment_crops(val_records, geometry, spread, jitter, seed=seed + 1, desc="segment crops val", max_pixels=max_pixels)
        rejects = reject_rows("train", list_rejects + train.rejects) + reject_rows("val", val.rejects)
        extra_counts = {}
        for index, source in enumerate(params["extra_sources"] or []):
            table = validate_class_table(str(source["format"]), params["class_tables"][str(source["format"])])
            parts, parts_rejects = list_records(str(source["format"]), Path(source["path"]), source.get("split"))
            extra = make_parts_crops(parts, table, geometry, spread, jitter, seed=seed + 2 + index, desc=f"{source['format']} crops",
                                     max_pixels=max_pixels)
            train = merge_crops(train, extra)
            rejects += reject_rows(str(source["format"]), parts_rejects + extra.rejects)
            extra_counts[f"{source['format']}:{source['path']}"] = {"images": int((extra.copy_index == 0).sum()), "crops": len(extra)}
        reject_counts = report_rejects("segment_crops", rejects, REJECTS_CSV, run)
        require_usable("segment_crops", {"train": len(train), "val": len(val)}, reject_counts, REJECTS_CSV)
        manifest = {
            "geometry": geometry.to_dict(),
            "locator": {"model": str(TCNN_DIR), "mouth": "dlib68", "flip_tta": bool(params["locator_flip_tta"]),
                        "located": len(located), "val_images": len(val_records), "box_vs_ground_truth": spread_stats},
            "counts": {"train": {"images": int((train.copy_index == 0).sum()), "crops": len(train)},
                       "val": {"images": int((val.copy_index == 0).sum()), "crops": len(val)}},
            "extra_sources": extra_counts,
            "rejected": len(rejects),
            "rejected_by_kind": reject_counts,
            "rejects": rejects,
        }
        with atomic_directory(OUT_DIR) as staging:
            write_npz_atomic(staging / "train.npz", **train.arrays())
            write_npz_atomic(staging / "val.npz", **val.arrays())
            write_json_atomic(staging / "manifest.json", manifest)
        run.log_numbers({"counts": manifest["counts"], "locator": manifest["locator"]})
        run.log_artifact(OUT_DIR / "manifest.json")
    print(f"segment_crops: {manifest['counts']}, TCNN-located box spread on {len(located)} validation faces: "
          f"shift {spread.shift_x_std:.3f}/{spread.shift_y_std:.3f}, log scale {spread.log_scale_std:.3f}; rejected {len(rejects)}")


if __name__ == "__main__":
    main()
