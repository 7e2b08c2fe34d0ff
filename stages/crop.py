"""Stage `crop`: square lip crops from ground-truth landmarks, augmented for train, plus mean/std images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lipseg.crop import (
    CropGeometry, FaceToMouth, augmentation_from_params, box_differences, make_crops, normalisation_images, split_train_val,
)
from lipseg.datasets.helen import load_split, reject_rows, report_rejects, require_usable, unlisted_annotation_rejects
from lipseg.detect import DlibMouthLocator, detect_record_mouths
from lipseg.landmarks import HELEN_LIPS, respace_lips
from lipseg.io import atomic_directory, load_params, write_json_atomic, write_npz_atomic
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CROPS_DIR = Path("data/crops")
REJECTS_CSV = Path("reports/crop/rejects.csv")


def main() -> None:
    params = load_params("crop")
    geometry = CropGeometry(size=int(params["size"]), margin=float(params["margin"]))
    augmentation = augmentation_from_params(params["augment"])
    seed = int(params["seed"])
    max_pixels = int(params["max_pixels"])
    with stage_run("crop", params) as run:
        train_records, train_rejects = load_split(RAW_DIR, "train")
        test_records, test_rejects = load_split(RAW_DIR, "test")
        fit_records, val_records = split_train_val(train_records, float(params["val_fraction"]), seed)
        box_source = str(params["box_source"])
        if box_source not in ("gt", "detector"):
            raise ValueError(f"crop.box_source must be 'gt' or 'detector', got {box_source!r}")
        # dlib runs on every image either way: its boxes feed `detector` crops, the measured GT-vs-dlib
        # box difference, and the face-box -> mouth-box statistics of the cascade's first pass.
        locator = DlibMouthLocator(str(params["detector"]), int(params["detector_upsample"]))
        detections = detect_record_mouths(train_records + test_records, locator, desc=f"dlib {params['detector']}",
                                          max_pixels=max_pixels)
        detected_mouths = {name: detection.mouth for name, detection in detections.items()}
        truth = {record.name: respace_lips(record.points[HELEN_LIPS]) for record in train_records + test_records}
        box_points = detected_mouths if box_source == "detector" else None
        splits = {
            "train": make_crops(fit_records, geometry, augmentation, seed=seed, desc="crop train", box_points=box_points, max_pixels=max_pixels),
            "val": make_crops(val_records, geometry, None, desc="crop val", box_points=box_points, max_pixels=max_pixels),
            "test": make_crops(test_records, geometry, None, desc="crop test", box_points=box_points, max_pixels=max_pixels),
        }
        train_found = [record.name for record in fit_records if record.name in detections]
        gt_boxes = [geometry.box(truth[name]) for name in train_found]
        face_to_mouth = FaceToMouth.fit(
            np.array([detections[name].face.box for name in train_found]).reshape(-1, 4),
            np.array([centre for centre, _ in gt_boxes]).reshape(-1, 2),
            np.array([side for _, side in gt_boxes]),
        ) if train_found else None
        rejects = reject_rows("train", train_rejects) + reject_rows("test", test_rejects)
        rejects += reject_rows("unlisted", unlisted_annotation_rejects(RAW_DIR))
        for split, crops in splits.items():
            rejects += reject_rows(split, crops.rejects)
        reject_counts = report_rejects("crop", rejects, REJECTS_CSV, run)
        require_usable("crop", {split: len(crops) for split, crops in splits.items()}, reject_counts, REJECTS_CSV)
        manifest = {
            "geometry": geometry.to_dict(),
            "max_pixels": max_pixels,  # the later stages read the photos under the same limit
            "box_source": box_source,
            "detector": {
                "kind": params["detector"], "upsample": int(params["detector_upsample"]),
                "found": {"train": sum(r.name in detections for r in train_records), "test": sum(r.name in detections for r in test_records)},
                "images": {"train": len(train_records), "test": len(test_records)},
                "box_vs_ground_truth": box_differences(geometry, detected_mouths, truth),
            },
            "face_to_mouth": face_to_mouth.to_dict() if face_to_mouth else None,
            "counts": {split: {"images": int((crops.copy_index == 0).sum()), "crops": len(crops)} for split, crops in splits.items()},
            "rejected": len(rejects),
            "rejected_by_kind": reject_counts,
            "rejects": rejects,
            "names": {split: sorted(set(crops.names.tolist())) for split, crops in splits.items()},
        }
        mean, std = normalisation_images(splits["train"].images)
        with atomic_directory(CROPS_DIR) as staging:
            for split, crops in splits.items():
                write_npz_atomic(staging / f"{split}.npz", **crops.arrays())
            write_npz_atomic(staging / "norm.npz", mean=mean, std=std)
            write_json_atomic(staging / "manifest.json", manifest)
        run.log_numbers({"counts": manifest["counts"], "detector": manifest["detector"]})
        run.log_artifact(CROPS_DIR / "manifest.json")
    print(f"crop: {manifest['counts']}, rejected {len(rejects)}")


if __name__ == "__main__":
    main()
