"""Stage `train_segmenter@<arch>`: one pixel-wise segmenter (unet, pspnet, segnet or deeplabv3plus) on
the segmenter crops, early-stopped on validation lips F1. Reads `common` and its own architecture's
subsection of `train_segmenter`, so changing one architecture reruns only it (and the comparison)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
from lipseg.crop import CropGeometry
from lipseg.io import atomic_directory, csv_text, load_npz, load_params, write_text_atomic
from lipseg.plots import training_curves
from lipseg.segment import (
    LossWeights, SegmentCrops, SegmenterNet, SegmentFitConfig, channel_normalisation, fit_segmenter, load_pretrained,
    save_segmenter_folder,
)
from lipseg.segmenters import ARCHITECTURES, SegmenterConfig, parameter_count
from lipseg.tracking import stage_run
from lipseg.train import resolve_device, set_determinism

CROPS_DIR = Path("data/segment_crops")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arch", choices=ARCHITECTURES)
    arch = parser.parse_args().arch
    section = load_params("train_segmenter")
    common, own = section["common"], section[arch]
    set_determinism(int(common["seed"]))
    train = SegmentCrops.from_arrays(load_npz(CROPS_DIR / "train.npz"))
    val = SegmentCrops.from_arrays(load_npz(CROPS_DIR / "val.npz"))
    manifest = json.loads((CROPS_DIR / "manifest.json").read_text(encoding="utf-8"))
    config = SegmenterConfig(arch=arch, input_size=int(train.images.shape[1]), width=int(own["width"]), depth=int(own["depth"]),
                             expansion=int(own["expansion"]), dropout=float(own["dropout"]))
    model = SegmenterNet(config)
    model.set_normalisation(*channel_normalisation(train.images))
    if own.get("pretrained_weights"):
        loaded, skipped = load_pretrained(model, Path(own["pretrained_weights"]))
        print(f"train_segmenter@{arch}: {loaded} tensors from {own['pretrained_weights']}, {len(skipped)} left as initialised")
    fit_config = SegmentFitConfig(
        optimizer=str(common["optimizer"]), lr=float(common["lr"]), momentum=float(common["momentum"]),
        weight_decay=float(common["weight_decay"]), batch_size=int(common["batch_size"]), max_epochs=int(common["max_epochs"]),
        patience=int(common["patience"]), lr_patience=int(common["lr_patience"]), lr_factor=float(common["lr_factor"]),
        flip=bool(common["flip"]), loss=LossWeights(**{key: float(value) for key, value in common["loss_weights"].items()}),
        seed=int(common["seed"]), device=str(common["device"]),
    )
    if int(common["threads"]) > 0:  # 0 = torch's default (all cores)
        torch.set_num_threads(int(common["threads"]))
    model_dir, reports = Path("models/segmenters") / arch, Path("reports/train_segmenter") / arch
    with stage_run(f"train_segmenter@{arch}", {**common, **own}) as run:
        run.set_tags({"device": str(resolve_device(fit_config.device)), "arch": arch, "parameters": parameter_count(model.network),
                      "train_crops": len(train), "val_crops": len(val)})
        result = fit_segmenter(
            model, train, val, fit_config, checkpoint_path=Path("checkpoints/train_segmenter") / arch / "last.safetensors",
            run_fingerprint=f"train_segmenter-{config.to_dict()}",  # the starting weights are in the fit's own digest
            on_epoch=lambda record: run.log_metrics({"train_loss": record.train_loss, "val_loss": record.val_loss,
                                                     "val_f1_lips": record.val_f1_lips, "lr": record.lr}, step=record.epoch),
            desc=f"train_segmenter@{arch}",
        )
        model.cpu()
        with atomic_directory(model_dir) as staging:
            save_segmenter_folder(staging, model, CropGeometry(**manifest["geometry"]), extra={
                "best_epoch": result.best_epoch, "best_val_f1_lips": result.best_val_f1_lips, "epochs_run": len(result.history),
                "train_minutes": result.seconds / 60, "device": str(resolve_device(fit_config.device)),
                "locator": manifest["locator"]["box_vs_ground_truth"],
            })
        history = [asdict(record) for record in result.history]
        write_text_atomic(reports / "history.csv", csv_text(history))
        training_curves(history, reports / "curves.png", f"train_segmenter@{arch}", metric_key="val_f1_lips",
                        metric_label="lips F1", loss_label="loss (CE + Dice + Jaccard)")
        run.log_metrics({"best_val_f1_lips": result.best_val_f1_lips, "best_epoch": result.best_epoch, "epochs_run": len(history),
                         "train_minutes": result.seconds / 60, "parameters": parameter_count(model.network)})
        run.log_artifact(reports / "curves.png")
        run.log_artifacts(model_dir, "model")
    print(f"train_segmenter@{arch}: best val lips F1 {result.best_val_f1_lips:.4f} at epoch {result.best_epoch} of {len(history)}, "
          f"{result.seconds / 60:.1f} min, {parameter_count(model.network):,} parameters"
          + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""))


if __name__ == "__main__":
    main()
