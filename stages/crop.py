"""Stage `crop`: square lip crops from ground-truth landmarks, augmented for train, plus mean/std images."""

from __future__ import annotations

from pathlib import Path

from lipseg.crop import CropGeometry, augmentation_from_params, make_crops, normalisation_images, split_train_val
from lipseg.datasets.helen import DatasetError, load_split
from lipseg.io import atomic_directory, load_params, write_json_atomic, write_npz_atomic
from lipseg.tracking import stage_run

RAW_DIR = Path("data/raw")
CROPS_DIR = Path("data/crops")


def main() -> None:
    params = load_params("crop")
    geometry = CropGeometry(size=int(params["size"]), margin=float(params["margin"]))
    augmentation = augmentation_from_params(params["augment"])
    seed = int(params["seed"])
    with stage_run("crop", params) as run:
        train_records, train_rejects = load_split(RAW_DIR, "train")
        test_records, test_rejects = load_split(RAW_DIR, "test")
        fit_records, val_records = split_train_val(train_records, float(params["val_fraction"]), seed)
        splits = {
            "train": make_crops(fit_records, geometry, augmentation, seed=seed, desc="crop train"),
            "val": make_crops(val_records, geometry, None, desc="crop val"),
            "test": make_crops(test_records, geometry, None, desc="crop test"),
        }
        rejects = [{"split": "train", **r.as_dict()} for r in train_rejects] + [{"split": "test", **r.as_dict()} for r in test_rejects]
        for split, crops in splits.items():
            rejects += [{"split": split, **r.as_dict()} for r in crops.rejects]
        manifest = {
            "geometry": geometry.to_dict(),
            "counts": {split: {"images": int((crops.copy_index == 0).sum()), "crops": len(crops)} for split, crops in splits.items()},
            "rejected": len(rejects),
            "rejects": rejects,
            "names": {split: sorted(set(crops.names.tolist())) for split, crops in splits.items()},
        }
        for reject in rejects:
            print(f"crop: rejected {reject['split']}/{reject['name']}: {reject['reason']} ({reject['file']})")
        empty = [split for split, crops in splits.items() if len(crops) == 0]
        if empty:
            raise DatasetError(f"no usable images left in split(s) {', '.join(empty)}; {len(rejects)} rejected, see the reasons above")
        mean, std = normalisation_images(splits["train"].images)
        with atomic_directory(CROPS_DIR) as staging:
            for split, crops in splits.items():
                write_npz_atomic(staging / f"{split}.npz", **crops.arrays())
            write_npz_atomic(staging / "norm.npz", mean=mean, std=std)
            write_json_atomic(staging / "manifest.json", manifest)
        run.log_numbers({"counts": manifest["counts"], "rejected": len(rejects)})
        run.log_artifact(CROPS_DIR / "manifest.json")
    print(f"crop: {manifest['counts']}, rejected {len(rejects)}")


if __name__ == "__main__":
    main()
