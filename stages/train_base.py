"""Stage `train_base`: the vanilla TCNN on the training crops, early-stopped on the validation crops.

`train_base.processes: N` (N > 1) trains on N processes with PyTorch DDP: the script re-launches itself
under torchrun, rank 0 does everything below (MLflow run, model, reports, checkpoints) and the other
ranks only train alongside it and write nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lipseg.core import paths
from lipseg.core.checkpoint import content_digest
from lipseg.core.distributed import (
    Ranks,
    launched_by_torchrun,
    process_group,
    run_under_torchrun,
)
from lipseg.core.files import atomic_directory, csv_text, load_npz, write_text_atomic
from lipseg.core.fit import FitConfig, FitResult, fit
from lipseg.core.params import ParamsError, Section, load_params, param, run_stage, seed_param
from lipseg.core.runtime import resolve_device, set_determinism
from lipseg.core.tracking import stage_run
from lipseg.data.crops import CropSet, images_to_tensor
from lipseg.evaluation.plots import training_curves
from lipseg.tcnn.model import TCNNConfig, VanillaTCNN
from lipseg.tcnn.training import BaseTraining, LandmarkTask

CHECKPOINT = paths.checkpoint("train_base")
HISTORY_CSV = paths.report("train_base", "history.csv")
CURVES_PNG = paths.report("train_base", "curves.png")


@dataclass(frozen=True)
class TrainBaseParams(Section):
    conv_channels: list[int] = param([24, 48, 64, 96], low=1)
    conv_kernels: list[int] = param([5, 3, 3, 2], low=1)
    fc5: int = param(192, low=1)
    batch_norm: bool = False
    conv_activation: Literal["abs_tanh", "relu"] = "abs_tanh"
    loss: Literal["wing", "mse"] = "wing"
    lr: float = param(1e-3, low=0, low_open=True)
    batch_size: int = param(64, low=1)  # per process
    max_epochs: int = param(150, low=1)
    patience: int = param(15, low=1)
    weight_decay: float = param(1e-4, low=0)
    lr_schedule: Literal["plateau", "cosine", "none"] = "plateau"
    lr_patience: int = param(5, low=0)
    lr_factor: float = param(0.5, low=0, high=1, low_open=True)
    seed: int = seed_param()
    device: str = "auto"
    processes: int = param(1, low=1)
    num_workers: int = param(0, low=0)
    amp: bool = True

    def check(self, name: str) -> None:
        if len(self.conv_channels) != len(self.conv_kernels):
            raise ParamsError(
                f"params.yaml: {name}.conv_channels and {name}.conv_kernels need one entry per conv "
                f"(got {len(self.conv_channels)} and {len(self.conv_kernels)})"
            )

    def model_config(self, input_size: int, annotation_offset: float) -> TCNNConfig:
        return TCNNConfig(
            annotation_offset=annotation_offset,
            input_size=input_size,
            conv_channels=list(self.conv_channels),
            conv_kernels=list(self.conv_kernels),
            fc5=self.fc5,
            batch_norm=self.batch_norm,
            conv_activation=self.conv_activation,
        )

    def base_training(self) -> BaseTraining:
        return BaseTraining(self.loss, self.weight_decay, self.lr_schedule, self.lr_patience, self.lr_factor)

    def fit_config(self) -> FitConfig:
        return FitConfig(
            optimizer="adam",
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule,
            lr_patience=self.lr_patience,
            lr_factor=self.lr_factor,
            seed=self.seed,
            device=self.device,
            num_workers=self.num_workers,
            amp=self.amp,
        )


def main() -> None:
    section = load_params("train_base")
    params = TrainBaseParams.from_params(section, "train_base")
    if params.processes > 1 and not launched_by_torchrun():
        raise SystemExit(run_under_torchrun(params.processes, Path(__file__)))
    with process_group(params.device) as ranks:
        train_stage(section, params, ranks)


def train_stage(section: dict, params: TrainBaseParams, ranks: Ranks) -> None:
    set_determinism(params.seed)
    train = CropSet.load(paths.CROPS / "train.npz")
    val = CropSet.load(paths.CROPS / "val.npz")
    norm = load_npz(paths.CROPS / "norm.npz")
    manifest = json.loads((paths.CROPS / "manifest.json").read_text(encoding="utf-8"))
    config = params.model_config(input_size=train.images.shape[1], annotation_offset=manifest["annotation_offset"])
    model = VanillaTCNN(config)
    model.normaliser.set_images(norm["mean"], norm["std"])
    fit_config = params.fit_config()
    task = LandmarkTask(
        params.loss, images_to_tensor(val.images), torch.from_numpy(val.lips), batch_size=max(params.batch_size, 256)
    )

    def train_model(on_epoch: Callable[[dict], None] | None = None) -> FitResult:
        return fit(
            model,
            images_to_tensor(train.images),
            torch.from_numpy(train.lips),
            task,
            fit_config,
            checkpoint_path=CHECKPOINT,
            run_fingerprint=f"train_base-{config.to_dict()}",
            on_epoch=on_epoch,
            desc="train_base",
        )

    if not ranks.is_main:
        # Trains in lockstep with rank 0 (fit writes no checkpoint here) and leaves no trace: no MLflow run, no files.
        train_model()
        weights = content_digest(*model.cpu().state_dict().values())
        print(f"train_base: rank {ranks.rank} of {ranks.world_size} ended with weights {weights}")
        return
    with stage_run("train_base", section) as run:
        run.set_tags(
            {
                "device": str(resolve_device(fit_config.device)),
                "processes": ranks.world_size,
                "train_crops": len(train),
                "val_crops": len(val),
            }
        )
        result = train_model(
            on_epoch=lambda record: run.log_metrics(
                {
                    "train_loss": record["train_loss"],
                    "val_loss": record["val_loss"],
                    "val_nme": record["val_nme"],
                    "epoch_seconds": record["seconds"],
                },
                step=record["epoch"],
            )
        )
        model.cpu()
        weights = content_digest(*model.state_dict().values())
        run.set_tags({"weights_digest": weights})
        with atomic_directory(paths.BASE_MODEL) as staging:
            model.save(
                staging,
                manifest["geometry"],
                extra={
                    "best_epoch": result.best_epoch,
                    "box_source": manifest["box_source"],
                    "face_to_mouth": manifest["face_to_mouth"],
                    "training": params.base_training().to_dict(),  # what the heads inherit
                    "training_data": manifest["training_data"],
                },
            )
            # Inside the block: the model folder is swapped in last, once everything else is written.
            write_text_atomic(HISTORY_CSV, csv_text(result.history))
            training_curves(result.history, CURVES_PNG, "train_base", loss_label=f"{params.loss} loss (mouth widths)")
        run.log_metrics(
            {"best_val_nme": result.best_value, "best_epoch": result.best_epoch, "epochs_run": len(result.history)}
        )
        run.log_artifact(CURVES_PNG)
        run.log_artifacts(paths.BASE_MODEL, "model")
    if ranks.distributed:
        print(f"train_base: rank 0 of {ranks.world_size} ended with weights {weights}")
    print(
        f"train_base: best val NME {result.best_value:.4f} at epoch {result.best_epoch} of {len(result.history)}"
        + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else "")
    )


if __name__ == "__main__":
    run_stage(main)
