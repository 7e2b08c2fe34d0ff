"""Stage `train_base`: the vanilla TCNN on the training crops, early-stopped on the validation crops.

`train_base.processes: N` (N > 1) trains on N processes with PyTorch DDP: the script re-launches itself
under torchrun, rank 0 does everything below (MLflow run, model, reports, checkpoints) and the other
ranks only train alongside it and write nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from lipseg.crop import CropGeometry, CropSet
from lipseg.distributed import launched_by_torchrun, process_group, run_under_torchrun
from lipseg.io import atomic_directory, csv_text, load_npz, load_params, write_text_atomic
from lipseg.model import TCNNConfig, VanillaTCNN, images_to_tensor
from lipseg.plots import training_curves
from lipseg.model_folder import save_model_folder
from lipseg.tracking import stage_run
from lipseg.train import EpochRecord, FitConfig, FitResult, Ranks, content_digest, fit, resolve_device, set_determinism

CROPS_DIR = Path("data/crops")
MODEL_DIR = Path("models/base")
CHECKPOINT = Path("checkpoints/train_base/last.safetensors")
HISTORY_CSV = Path("reports/train_base/history.csv")
CURVES_PNG = Path("reports/train_base/curves.png")


def main() -> None:
    params = load_params("train_base")
    processes = int(params["processes"])
    if processes > 1 and not launched_by_torchrun():
        raise SystemExit(run_under_torchrun(processes, Path(__file__)))
    with process_group(str(params["device"])) as ranks:
        train_stage(params, ranks)


def train_stage(params: dict, ranks: Ranks) -> None:
    set_determinism(int(params["seed"]))
    train = CropSet.from_arrays(load_npz(CROPS_DIR / "train.npz"))
    val = CropSet.from_arrays(load_npz(CROPS_DIR / "val.npz"))
    norm = load_npz(CROPS_DIR / "norm.npz")
    manifest = json.loads((CROPS_DIR / "manifest.json").read_text(encoding="utf-8"))
    config = TCNNConfig(
        input_size=train.images.shape[1], conv_channels=list(params["conv_channels"]),
        conv_kernels=list(params["conv_kernels"]), fc5=int(params["fc5"]), batch_norm=bool(params["batch_norm"]),
        conv_activation=str(params["conv_activation"]),
    )
    model = VanillaTCNN(config)
    model.normaliser.set_images(norm["mean"], norm["std"])
    fit_config = FitConfig(
        lr=float(params["lr"]), batch_size=int(params["batch_size"]), max_epochs=int(params["max_epochs"]),
        patience=int(params["patience"]), weight_decay=float(params["weight_decay"]),
        lr_schedule=str(params["lr_schedule"]), lr_patience=int(params["lr_patience"]), lr_factor=float(params["lr_factor"]),
        loss=str(params["loss"]), seed=int(params["seed"]), device=str(params["device"]),
        num_workers=int(params["num_workers"]), amp=bool(params["amp"]),
    )

    def train_model(on_epoch: Callable[[EpochRecord], None] | None = None) -> FitResult:
        return fit(
            model, images_to_tensor(train.images), torch.from_numpy(train.lips),
            images_to_tensor(val.images), torch.from_numpy(val.lips), fit_config,
            checkpoint_path=CHECKPOINT, run_fingerprint=f"train_base-{config.to_dict()}", on_epoch=on_epoch, desc="train_base",
        )

    if not ranks.is_main:
        # Trains in lockstep with rank 0 (fit writes no checkpoint here) and leaves no trace: no MLflow run, no files.
        train_model()
        print(f"train_base: rank {ranks.rank} of {ranks.world_size} ended with weights {content_digest(*model.cpu().state_dict().values())}")
        return
    with stage_run("train_base", params) as run:
        run.set_tags({"device": str(resolve_device(fit_config.device)), "processes": ranks.world_size,
                      "train_crops": len(train), "val_crops": len(val)})
        result = train_model(on_epoch=lambda record: run.log_metrics(
            {"train_loss": record.train_loss, "val_loss": record.val_loss, "val_nme": record.val_nme, "epoch_seconds": record.seconds},
            step=record.epoch,
        ))
        model.cpu()
        weights = content_digest(*model.state_dict().values())
        run.set_tags({"weights_digest": weights})
        with atomic_directory(MODEL_DIR) as staging:
            save_model_folder(staging, model, CropGeometry(**manifest["geometry"]), extra={
                "best_epoch": result.best_epoch, "box_source": manifest["box_source"], "face_to_mouth": manifest["face_to_mouth"],
            })
        history = [asdict(record) for record in result.history]
        write_text_atomic(HISTORY_CSV, csv_text(history))
        training_curves(history, CURVES_PNG, "train_base")
        run.log_metrics({"best_val_nme": result.best_val_nme, "best_epoch": result.best_epoch, "epochs_run": len(history)}, to_parent=False)
        run.log_artifact(CURVES_PNG)
        run.log_artifacts(MODEL_DIR, "model")
    if ranks.distributed:
        print(f"train_base: rank 0 of {ranks.world_size} ended with weights {weights}")
    print(f"train_base: best val NME {result.best_val_nme:.4f} at epoch {result.best_epoch} of {len(history)}"
          + (f" (resumed after epoch {result.resumed_from_epoch})" if result.resumed_from_epoch else ""))


if __name__ == "__main__":
    main()
