"""Stage `extract_features`: FC5 features of the base model for every training crop."""

from __future__ import annotations

from dataclasses import dataclass

from lipseg.core import paths
from lipseg.core.files import atomic_directory, write_npz_atomic
from lipseg.core.params import Section, load_params, param, run_stage
from lipseg.core.tracking import stage_run
from lipseg.data.crops import CropSet
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import trunk_and_fc5


@dataclass(frozen=True)
class ExtractFeaturesParams(Section):
    batch_size: int = param(512, low=1)


def main() -> None:
    section = load_params("extract_features")
    params = ExtractFeaturesParams.from_params(section, "extract_features")
    with stage_run("extract_features", section) as run:
        model, _, _ = load_tcnn(paths.BASE_MODEL)
        train = CropSet.load(paths.CROPS / "train.npz")
        _, features = trunk_and_fc5(model, train.images, batch_size=params.batch_size)
        with atomic_directory(paths.FEATURES.parent) as staging:
            write_npz_atomic(
                staging / paths.FEATURES.name, fc5=features, names=train.names, copy_index=train.copy_index
            )
        run.log_metrics(
            {"crops": len(features), "dimensions": features.shape[1], "mean_activation": float(features.mean())}
        )
    print(f"extract_features: {features.shape} FC5 features")


if __name__ == "__main__":
    run_stage(main)
