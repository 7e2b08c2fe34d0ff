"""Stage `segment_crops`: mouth crops with label masks for the segmenters, jittered the way the TCNN's
located boxes differ from ground-truth boxes (measured on the validation photos)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from lipseg.core import paths
from lipseg.core.files import atomic_directory, write_json_atomic
from lipseg.core.model_folder import read_model_meta
from lipseg.core.params import Section, load_params, param, run_stage, seed_param
from lipseg.core.tracking import stage_run
from lipseg.data.crops import Jitter, LocatorSpread
from lipseg.data.faceparts import list_records, validate_class_table
from lipseg.data.geometry import CropGeometry, box_differences
from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.data.rejects import reject_rows, report_rejects, require_usable
from lipseg.inference.predictor import LipPredictor
from lipseg.segmentation.crops import locate_lips, make_face_sources, make_parts_sources, make_segment_crops

# The vanilla TCNN measures the locator spread: the heads move it by well under a pixel, and leaning on
# models/base keeps a change of K (or of the heads) from retraining all four segmenters.
LOCATOR = paths.BASE_MODEL
REJECTS_CSV = paths.report("segment_crops", "rejects.csv")


@dataclass(frozen=True)
class SegmentCropsParams(Section):
    size: int = param(64, low=16)  # crop side in pixels, the segmenters' input
    margin: float = param(0.5, low=0)  # extra space each side, as a fraction of the mouth extent
    context: float = param(1.8, low=1.2, high=3.0)  # training patch side / crop side: room for every jittered box
    copies: int = param(2, low=0)  # jittered copies per validation face, on top of the plain crop
    rotate_deg: float = param(10.0, low=0, high=180)
    brightness: float = param(0.2, low=0, high=1)
    min_shift: float = param(0.02, low=0, high=0.5)  # floors on the measured spread (fraction of the box side;
    min_scale: float = param(0.03, low=0, high=1)  # log scale), as Jitter.shift and Jitter.scale
    flip: bool = True  # mirror half the training crops (about the annotation frame's axis)
    detector: Literal["hog", "cnn", "hog+cnn"] = "hog"
    detector_upsample: int = param(1, low=0, high=3)
    locator_flip_tta: bool = True
    seed: int = seed_param()
    extra_sources: list[dict[str, str]] = param([])  # [{format: lapa, path: ..., split: train}]
    class_tables: dict[str, dict[str, int]] = param({})

    def jitter(self) -> Jitter:
        """Boxes whose shift and scale follow the measured spread, floored at min_shift / min_scale."""
        return Jitter(
            copies=self.copies,
            shift=self.min_shift,
            scale=self.min_scale,
            rotate_deg=self.rotate_deg,
            brightness=self.brightness,
            flip=self.flip,
        )


def main() -> None:
    section = load_params("segment_crops")
    params = SegmentCropsParams.from_params(section, "segment_crops")
    geometry = CropGeometry(size=params.size, margin=params.margin)
    jitter = params.jitter()
    with stage_run("segment_crops", section) as run:
        records, list_rejects = load_split(paths.RAW, "train")
        crops_manifest = json.loads((paths.CROPS / "manifest.json").read_text(encoding="utf-8"))
        max_pixels = int(crops_manifest["max_pixels"])  # the crop stage's limit (crop.max_pixels)
        # The TCNN's validation split, so the segmenters are tuned on the same photos and never on test.
        val_names = set(crops_manifest["names"]["val"])
        fit_records = [record for record in records if record.name not in val_names]
        val_records = [record for record in records if record.name in val_names]
        predictor = LipPredictor(
            LOCATOR, params.detector, params.detector_upsample, engine="torch", flip_average=params.locator_flip_tta
        )
        located = locate_lips(predictor, val_records, max_pixels=max_pixels)
        spread_stats = box_differences(
            geometry, located, {record.name: record.points[HELEN_LIPS] for record in val_records}
        )
        spread = LocatorSpread.from_dict(spread_stats)
        # Training crops are cut anew at every step from a patch per face; validation crops are fixed, plain
        # and jittered like located boxes (never mirrored), so every epoch is judged on the same crops.
        sources = make_face_sources(
            fit_records, geometry, params.context, desc="segment sources train", max_pixels=max_pixels
        )
        # The validation faces' patches too, for a final retrain on train + validation (train_segmenter include_val).
        val_sources = make_face_sources(
            val_records, geometry, params.context, desc="segment sources val", max_pixels=max_pixels
        )
        val = make_segment_crops(
            val_records,
            geometry,
            spread,
            replace(jitter, flip=False),
            seed=params.seed + 1,
            desc="segment crops val",
            max_pixels=max_pixels,
        )
        rejects = reject_rows("train", list_rejects + sources.rejects) + reject_rows("val", val.rejects)
        extra_counts = {}
        for source in params.extra_sources:
            table = validate_class_table(str(source["format"]), params.class_tables[str(source["format"])])
            parts, parts_rejects = list_records(str(source["format"]), Path(source["path"]), source.get("split"))
            extra = make_parts_sources(
                parts, table, geometry, params.context, desc=f"{source['format']} sources", max_pixels=max_pixels
            )
            sources = sources.concatenate(extra)
            rejects += reject_rows(str(source["format"]), parts_rejects + extra.rejects)
            extra_counts[f"{source['format']}:{source['path']}"] = {"images": len(extra)}
        reject_counts = report_rejects("segment_crops", rejects, REJECTS_CSV, run)
        require_usable("segment_crops", {"train": len(sources), "val": len(val)}, reject_counts, REJECTS_CSV)
        base_meta = read_model_meta(LOCATOR)
        base_config = base_meta["config"]
        manifest = {
            "training_data": {**base_meta["training_data"], "extra_sources": extra_counts},
            "geometry": geometry.to_dict(),
            "context": params.context,
            "jitter": jitter.to_dict(),
            # The annotations' frame, as the crop stage set it: mirrored training crops keep it.
            "annotation_offset": float(base_config.get("annotation_offset", 0.0)),
            "locator": {
                "model": str(LOCATOR),
                "mouth": "dlib68",
                "flip_tta": params.locator_flip_tta,
                "located": len(located),
                "val_images": len(val_records),
                "box_vs_ground_truth": spread_stats,
            },
            "counts": {
                "train": {"images": len(sources)},
                "val": {"images": int((val.copy_index == 0).sum()), "crops": len(val)},
            },
            "extra_sources": extra_counts,
            "rejected": len(rejects),
            "rejected_by_kind": reject_counts,
            "rejects": rejects,
        }
        with atomic_directory(paths.SEGMENT_CROPS) as staging:
            sources.save(staging / "sources.npz")
            val.save(staging / "val.npz")
            val_sources.save(staging / "val_sources.npz")
            write_json_atomic(staging / "manifest.json", manifest)
        run.log_numbers({"counts": manifest["counts"], "locator": manifest["locator"]})
        run.log_artifact(paths.SEGMENT_CROPS / "manifest.json")
    print(
        f"segment_crops: {manifest['counts']}, TCNN-located box spread on {len(located)} validation faces: "
        f"shift {spread.shift_x_std:.3f}/{spread.shift_y_std:.3f}, log scale {spread.log_scale_std:.3f}; "
        f"rejected {len(rejects)}"
    )


if __name__ == "__main__":
    run_stage(main)
