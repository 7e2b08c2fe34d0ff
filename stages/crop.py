"""Stage `crop`: square lip crops from ground-truth landmarks, augmented for train, plus mean/std images."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from lipseg.core import paths
from lipseg.core.files import atomic_directory, write_json_atomic, write_npz_atomic
from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.core.params import ParamsError, Section, load_params, param, run_stage, seed_param
from lipseg.core.tracking import stage_run
from lipseg.data.crops import Jitter, normalisation_images, split_train_val
from lipseg.data.geometry import CropGeometry, FaceToMouth, box_differences
from lipseg.data.helen import load_split, unlisted_annotation_rejects
from lipseg.data.landmarks import HELEN_LIPS, respace_lips
from lipseg.data.rejects import reject_rows, report_rejects, require_usable
from lipseg.data.sources import describe_dataset
from lipseg.inference.detect import DlibMouthLocator, detect_record_mouths
from lipseg.tcnn.crops import make_crops

REJECTS_CSV = paths.report("crop", "rejects.csv")


@dataclass(frozen=True)
class CropParams(Section):
    size: int = param(48, low=16)  # crop side in pixels
    margin: float = param(0.35, low=0)  # extra space each side, as a fraction of the mouth extent
    val_fraction: float = param(0.15, low=0, high=0.9, low_open=True)
    photo_pattern: str = r"(.+)_\d{1,2}"  # a face's name -> its photo (group 1): faces of one photo stay on one side
    box_source: Literal["gt", "detector"] = "gt"
    detector: Literal["hog", "cnn", "hog+cnn"] = "hog"
    detector_upsample: int = param(1, low=0, high=3)
    seed: int = seed_param()
    max_pixels: int = param(DEFAULT_MAX_PIXELS, low=1)
    # Where the annotations sit off the image content, in mouth widths (x): mirrored copies and flip averaging
    # mirror about that axis. 0 for the synthetic faces (drawn exactly); Helen's: bench/annotation_offset.py.
    annotation_offset: float = param(0.0, low=-0.1, high=0.1)
    augment: Jitter = field(default_factory=Jitter)

    def check(self, name: str) -> None:
        try:
            if re.compile(self.photo_pattern).groups < 1:
                raise re.error("no group")
        except re.error as error:
            raise ParamsError(
                f"params.yaml: {name}.photo_pattern must be a regular expression with a group "
                f"(the photo's part of a face name), got {self.photo_pattern!r}: {error}"
            ) from None


def main() -> None:
    section = load_params("crop")
    params = CropParams.from_params(section, "crop")
    geometry = CropGeometry(size=params.size, margin=params.margin)
    with stage_run("crop", section) as run:
        train_records, train_rejects = load_split(paths.RAW, "train")
        test_records, test_rejects = load_split(paths.RAW, "test")
        fit_records, val_records = split_train_val(
            train_records, params.val_fraction, params.seed, params.photo_pattern
        )
        # dlib runs on every image either way: its boxes feed `detector` crops, the measured GT-vs-dlib
        # box difference, and the face-box -> mouth-box statistics of the cascade's first pass.
        locator = DlibMouthLocator(params.detector, params.detector_upsample)
        detections = detect_record_mouths(
            train_records + test_records, locator, desc=f"dlib {params.detector}", max_pixels=params.max_pixels
        )
        detected_mouths = {name: detection.mouth for name, detection in detections.items()}
        truth = {record.name: respace_lips(record.points[HELEN_LIPS]) for record in train_records + test_records}
        box_points = detected_mouths if params.box_source == "detector" else None

        def crops_of(records, jitter, desc, seed=0):
            return make_crops(
                records,
                geometry,
                jitter,
                seed=seed,
                desc=desc,
                box_points=box_points,
                max_pixels=params.max_pixels,
                annotation_offset=params.annotation_offset,
            )

        splits = {
            "train": crops_of(fit_records, params.augment, "crop train", params.seed),
            "val": crops_of(val_records, None, "crop val"),
            "test": crops_of(test_records, None, "crop test"),
        }
        train_found = [record.name for record in fit_records if record.name in detections]
        gt_boxes = [geometry.box(truth[name]) for name in train_found]
        face_to_mouth = (
            FaceToMouth.fit(
                np.array([detections[name].face.box for name in train_found]).reshape(-1, 4),
                np.array([centre for centre, _ in gt_boxes]).reshape(-1, 2),
                np.array([side for _, side in gt_boxes]),
            )
            if train_found
            else None
        )
        rejects = reject_rows("train", train_rejects) + reject_rows("test", test_rejects)
        rejects += reject_rows("unlisted", unlisted_annotation_rejects(paths.RAW))
        for split, crops in splits.items():
            rejects += reject_rows(split, crops.rejects)
        reject_counts = report_rejects("crop", rejects, REJECTS_CSV, run)
        require_usable("crop", {split: len(crops) for split, crops in splits.items()}, reject_counts, REJECTS_CSV)
        dataset = describe_dataset(paths.RAW)
        manifest = {
            # What every model trained on these crops records (lipseg predict warns about synthetic faces).
            "training_data": {
                "source": dataset["source"],
                "digest": dataset["digest"],
                "train_faces": len(fit_records),
                "val_faces": len(val_records),
            },
            "geometry": geometry.to_dict(),
            "max_pixels": params.max_pixels,  # the later stages read the photos under the same limit
            "box_source": params.box_source,
            "annotation_offset": params.annotation_offset,
            "detector": {
                "kind": params.detector,
                "upsample": params.detector_upsample,
                "found": {
                    "train": sum(r.name in detections for r in train_records),
                    "test": sum(r.name in detections for r in test_records),
                },
                "images": {"train": len(train_records), "test": len(test_records)},
                # Measured on the training faces only: nothing about the validation or test faces informs training.
                "box_vs_ground_truth": box_differences(
                    geometry,
                    {record.name: detected_mouths[record.name] for record in fit_records if record.name in detections},
                    truth,
                ),
            },
            "face_to_mouth": face_to_mouth.to_dict() if face_to_mouth else None,
            "counts": {
                split: {"images": int((crops.copy_index == 0).sum()), "crops": len(crops)}
                for split, crops in splits.items()
            },
            "rejected": len(rejects),
            "rejected_by_kind": reject_counts,
            "rejects": rejects,
            "names": {split: sorted(set(crops.names.tolist())) for split, crops in splits.items()},
            # box_source detector: faces with no detection have no crop; evaluation counts them as failures.
            "detector_misses": {
                split: sorted(
                    record.name for record in records if box_points is not None and record.name not in detections
                )
                for split, records in (("val", val_records), ("test", test_records))
            },
        }
        mean, std = normalisation_images(splits["train"].images)
        with atomic_directory(paths.CROPS) as staging:
            for split, crops in splits.items():
                crops.save(staging / f"{split}.npz")
            write_npz_atomic(staging / "norm.npz", mean=mean, std=std)
            write_json_atomic(staging / "manifest.json", manifest)
        run.log_numbers({"counts": manifest["counts"], "detector": manifest["detector"]})
        run.log_artifact(paths.CROPS / "manifest.json")
    print(f"crop: {manifest['counts']}, rejected {len(rejects)}")


if __name__ == "__main__":
    run_stage(main)
