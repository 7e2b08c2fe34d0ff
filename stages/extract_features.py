"""Stage `extract_features`: FC5 features of the base model for every training crop."""

from __future__ import annotations

from pathlib import Path

from lipseg.crop import CropSet
from lipseg.heads import trunk_and_fc5
from lipseg.io import load_npz, load_params, write_npz_atomic
from lipseg.model_folder import load_model_folder
from lipseg.tracking import stage_run

CROPS_DIR = Path("data/crops")
MODEL_DIR = Path("models/base")
FEATURES = Path("data/features/train_fc5.npz")


def main() -> None:
    params = load_params("extract_features")
    with stage_run("extract_features", params) as run:
        model, _, _ = load_model_folder(MODEL_DIR)
        train = CropSet.from_arrays(load_npz(CROPS_DIR / "train.npz"))
        _, features = trunk_and_fc5(model, train.images, batch_size=int(params["batch_size"]))
        write_npz_atomic(FEATURES, fc5=features, names=train.names, copy_index=train.copy_index)
        run.log_metrics({"crops": len(features), "dimensions": features.shape[1], "mean_activation": float(features.mean())})
    print(f"extract_features: {features.shape} FC5 features")


if __name__ == "__main__":
    main()
