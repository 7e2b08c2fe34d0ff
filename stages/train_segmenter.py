"""Stage `train_segmenter@<arch>`: one pixel-wise segmenter (unet, pspnet, segnet or deeplabv3plus) on
the segmenter crops, early-stopped on validation lips F1. Reads `common` and its own architecture's
subsection of `train_segmenter`, so changing one architecture reruns only it (and the comparison)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from lipseg.core import paths
from lipseg.core.files import atomic_directory, csv_text, write_text_atomic
from lipseg.core.fit import FitConfig, fit
from lipseg.core.model_folder import parameter_count
from lipseg.core.params import Section, load_params, param
from lipseg.core.runtime import resolve_device, set_determinism, set_threads
from lipseg.core.tracking import stage_run
from lipseg.data.crops import SegmentCrops, channel_normalisation, images_to_tensor
from lipseg.evaluation.plots import training_curves
from lipseg.segmentation.loss import LossWeights
from lipseg.segmentation.model import SegmenterNet, load_pretrained
from lipseg.segmentation.nets import ARCHITECTURES, SegmenterConfig
from lipseg.segmentation.training import SegmentationTask


@dataclass(frozen=True)
class CommonParams(Section):
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum, Nesterov
    lr: float = param(2e-3, low=0, low_open=True)
    momentum: float = param(0.9, low=0, high=1)
    weight_decay: float = param(1e-4, low=0)
    batch_size: int = param(32, low=1)
    max_epochs: int = param(8, low=1)
    patience: int = param(3, low=1)  # early stopping on validation lips F1
    lr_patience: int = param(2, low=0)  # ReduceLROnPlateau on validation lips F1
    lr_factor: float = param(0.5, low=0, high=1, low_open=True)
    flip: bool = True
    loss_weights: LossWeights = field(default_factory=LossWeights)
    threads: int = param(0, low=0)  # torch CPU threads (0 = all cores)
    seed: int = 0
    device: str = "auto"

    def fit_config(self) -> FitConfig:
        return FitConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            lr_schedule="plateau",
            lr_patience=self.lr_patience,
            lr_factor=self.lr_factor,
            seed=self.seed,
            device=self.device,
            amp=True,
        )


@dataclass(frozen=True)
class ArchParams(Section):
    width: int = param(12, low=1)
    depth: int = param(4, low=1)
    expansion: int = param(4, low=1)
    dropout: float = param(0.0, low=0, high=0.99)
    pretrained_weights: str | None = None  # a safetensors file to start from (default: from scratch)


@dataclass(frozen=True)
class TrainSegmenterParams(Section):
    common: CommonParams
    unet: ArchParams
    pspnet: ArchParams
    segnet: ArchParams
    deeplabv3plus: ArchParams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arch", choices=ARCHITECTURES)
    arch = parser.parse_args().arch
    section = load_params("train_segmenter")
    params = TrainSegmenterParams.from_params(section, "train_segmenter")
    common, own = params.common, getattr(params, arch)
    set_determinism(common.seed)
    train = SegmentCrops.load(paths.SEGMENT_CROPS / "train.npz")
    val = SegmentCrops.load(paths.SEGMENT_CROPS / "val.npz")
    manifest = json.loads((paths.SEGMENT_CROPS / "manifest.json").read_text(encoding="utf-8"))
    config = SegmenterConfig(
        arch=arch,
        input_size=int(train.images.shape[1]),
        width=own.width,
        depth=own.depth,
        expansion=own.expansion,
        dropout=own.dropout,
    )
    model = SegmenterNet(config)
    model.set_normalisation(*channel_normalisation(train.images))
    if own.pretrained_weights:
        loaded, skipped = load_pretrained(model, Path(own.pretrained_weights))
        print(f"train_segmenter@{arch}: {loaded} tensors from {own.pretrained_weights}, {len(skipped)} as initialised")
    fit_config = common.fit_config()
    set_threads(common.threads)
    model_dir, curves = paths.segmenter_model(arch), paths.report(f"train_segmenter/{arch}", "curves.png")
    with stage_run(f"train_segmenter@{arch}", {**section["common"], **section[arch]}) as run:
        run.set_tags(
            {
                "device": str(resolve_device(fit_config.device)),
                "arch": arch,
                "parameters": parameter_count(model.network),
                "train_crops": len(train),
                "val_crops": len(val),
            }
        )
        result = fit(
            model,
            images_to_tensor(train.images),
            torch.from_numpy(train.masks),
            SegmentationTask(common.loss_weights, val, common.flip),
            fit_config,
            checkpoint_path=paths.checkpoint(f"train_segmenter/{arch}"),
            run_fingerprint=f"train_segmenter-{config.to_dict()}",  # the starting weights are in the fit's own digest
            on_epoch=lambda record: run.log_metrics(
                {key: record[key] for key in ("train_loss", "val_loss", "val_f1_lips", "lr")}, step=record["epoch"]
            ),
            desc=f"train_segmenter@{arch}",
        )
        model.cpu()
        with atomic_directory(model_dir) as staging:
            model.save(
                staging,
                manifest["geometry"],
                extra={
                    "best_epoch": result.best_epoch,
                    "best_val_f1_lips": result.best_value,
                    "epochs_run": len(result.history),
                    "train_minutes": result.seconds / 60,
                    "device": str(resolve_device(fit_config.device)),
                    "locator": manifest["locator"]["box_vs_ground_truth"],
                },
            )
        write_text_atomic(curves.with_name("history.csv"), csv_text(result.history))
        training_curves(
            result.history,
            curves,
            f"train_segmenter@{arch}",
            metric_key="val_f1_lips",
            metric_label="lips F1",
            loss_label="loss (CE + Dice + Jaccard)",
        )
        run.log_metrics(
            {
                "best_val_f1_lips": result.best_value,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "train_minutes": result.seconds / 60,
                "parameters": parameter_count(model.network),
            }
        )
        run.log_artifact(curves)
        run.log_artifacts(model_dir, "model")
    print(
        f"train_segmenter@{arch}: best val lips F1 {result.best_value:.4f} "
        f"at epoch {result.best_epoch} of {len(result.history)}, "
        f"{result.seconds / 60:.1f} min, {parameter_count(model.network):,} parameters"
        + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else "")
    )


if __name__ == "__main__":
    main()
