"""Stage `finetune_heads`: one FC5+FC6 head per GMM cluster, convolutions frozen, lower learning rate."""

from __future__ import annotations

import numpy as np

from lipseg.core import paths
from lipseg.core.files import atomic_directory, write_json_atomic
from lipseg.core.params import load_params, run_stage
from lipseg.core.runtime import set_determinism
from lipseg.core.tracking import stage_run
from lipseg.data.crops import CropSet
from lipseg.tcnn.gmm import load_gmm
from lipseg.tcnn.heads import HeadsConfig, HeadsData, finetune_heads, head_weight_distances
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.training import BaseTraining

CHECKPOINT_DIR = paths.CHECKPOINTS / "finetune_heads"
REPORT = paths.REPORTS / "finetune_heads.json"


def heads_data(crops: CropSet) -> HeadsData:
    return HeadsData(crops.images, crops.lips, crops.names, crops.copy_index)


def main() -> None:
    section = load_params("heads")
    config = HeadsConfig.from_params(section, "heads")
    set_determinism(config.seed)
    base, geometry, base_meta = load_tcnn(paths.BASE_MODEL)
    mixture = load_gmm(paths.GMM)
    train = CropSet.load(paths.CROPS / "train.npz")
    val = CropSet.load(paths.CROPS / "val.npz")
    with stage_run("finetune_heads", section) as run:
        tweaked, reports = finetune_heads(
            base, mixture, heads_data(train), heads_data(val), config, BaseTraining.from_meta(base_meta), CHECKPOINT_DIR
        )
        distances = head_weight_distances(tweaked)
        for report in reports:
            with run.child(f"head_{report.cluster}", {"cluster": report.cluster, "lr": config.lr}) as child:
                child.log_history(report.history, ("train_loss", "val_loss", "val_nme"))
                child.set_tags(
                    {
                        "fallback_to_base_head": report.fallback,
                        "fallback_reason": report.fallback_reason,
                        "val_scope": report.val_scope,
                    }
                )
                child.log_numbers(report.as_dict())
        fallbacks = [report.cluster for report in reports if report.fallback]
        with atomic_directory(paths.TCNN_MODEL) as staging:
            tweaked.save(
                staging,
                geometry.to_dict(),
                extra={
                    "fallback_clusters": fallbacks,
                    "box_source": base_meta["box_source"],
                    "face_to_mouth": base_meta["face_to_mouth"],
                    "training_data": base_meta["training_data"],
                },
            )
        summary = {
            "k": len(reports),
            "fallback_clusters": fallbacks,
            "heads": [report.as_dict() for report in reports],
            "head_weight_distances": distances.round(6).tolist(),
        }
        write_json_atomic(REPORT, summary)
        run.set_tags({"fallback_clusters": fallbacks})
        off_diagonal = distances[~np.eye(len(reports), dtype=bool)]
        run.log_metrics(
            {
                "fallback_heads": len(fallbacks),
                "min_head_distance": float(off_diagonal.min()) if off_diagonal.size else 0.0,
            }
        )
        run.log_artifact(REPORT)
    for report in reports:
        state = f"val NME {report.base_val_nme:.4f} -> {report.head_val_nme:.4f}"
        if report.fallback:
            state = f"base head kept ({report.fallback_reason}" + (
                f"; {state})" if report.fallback_reason != "small cluster" else ")"
            )
        resumed = f" (resumed after epoch {report.resumed_from_epoch})" if report.resumed_from_epoch else ""
        print(
            f"finetune_heads: head {report.cluster}: {report.train_faces} train faces ({report.train_crops} crops), "
            f"{report.loss} loss, {state}{resumed}"
        )


if __name__ == "__main__":
    run_stage(main)
