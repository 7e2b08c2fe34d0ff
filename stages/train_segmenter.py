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
from lipseg.core.params import ParamsError, Section, load_params, param, run_stage, seed_param
from lipseg.core.runtime import resolve_device, set_determinism, set_threads
from lipseg.core.tracking import stage_run
from lipseg.data.crops import FaceSources, Jitter, LocatorSpread, SegmentCrops, channel_normalisation
from lipseg.evaluation.plots import training_curves
from lipseg.segmentation.loss import LossWeights
from lipseg.segmentation.model import MeanProbabilities, SegmenterNet, load_pretrained, load_segmenter
from lipseg.segmentation.nets import ARCHITECTURES, SegmenterConfig
from lipseg.segmentation.training import OnlineSegmentationTask


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
    lr_schedule: Literal["plateau", "cosine"] = "plateau"  # plateau: on validation lips F1; cosine: over max_epochs
    warmup_epochs: int = param(0, low=0)  # cosine: linear warm-up first
    loss_weights: LossWeights = field(default_factory=LossWeights)
    threads: int = param(0, low=0)  # torch CPU threads (0 = all cores)
    seed: int = seed_param()
    device: str = "auto"
    # True: the final retrain, on the training and the validation faces for exactly max_epochs (set it to the
    # best epoch of the run chosen on validation), keeping the last weights; the validation F1 is then not held out
    include_val: bool = False

    def check(self, name: str) -> None:
        if self.warmup_epochs >= self.max_epochs:
            raise ParamsError(
                f"params.yaml: {name}.warmup_epochs must be < {name}.max_epochs ({self.max_epochs}), "
                f"got {self.warmup_epochs}"
            )

    def fit_config(self) -> FitConfig:
        return FitConfig(
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            patience=self.patience,
            lr_schedule=self.lr_schedule,
            lr_patience=self.lr_patience,
            lr_factor=self.lr_factor,
            warmup_epochs=self.warmup_epochs,
            seed=self.seed,
            device=self.device,
            amp=True,
            keep_last=self.include_val,
        )


@dataclass(frozen=True)
class ArchParams(Section):
    width: int = param(12, low=1)
    depth: int = param(4, low=1)
    expansion: int = param(4, low=1)
    dropout: float = param(0.0, low=0, high=0.99)
    pretrained_weights: str | None = None  # a safetensors file to start from (default: from scratch)
    # trained segmenter folder(s) to distil from (common.loss_weights.distill > 0); several: their mean probabilities
    teacher: str | list[str] | None = None


@dataclass(frozen=True)
class TrainSegmenterParams(Section):
    common: CommonParams
    unet: ArchParams
    pspnet: ArchParams
    segnet: ArchParams
    deeplabv3plus: ArchParams
    plain_unet: ArchParams

    def for_arch(self, arch: str, name: str) -> ArchParams:
        """`arch`'s own subsection, checked against `common` (a stage instance reads only its own arch's)."""
        own, distill = getattr(self, arch), self.common.loss_weights.distill
        if own.teacher and not distill:
            raise ParamsError(f"params.yaml: {name}.{arch}.teacher needs {name}.common.loss_weights.distill > 0")
        if distill and not own.teacher:
            raise ParamsError(f"params.yaml: {name}.common.loss_weights.distill > 0 needs {name}.{arch}.teacher")
        return own


def load_teacher(folders: str | list[str], size: int) -> torch.nn.Module:
    members = []
    for folder in [folders] if isinstance(folders, str) else folders:
        member, geometry, _ = load_segmenter(Path(folder))
        if geometry.size != size:
            raise SystemExit(f"teacher {folder} takes {geometry.size} px crops, these are {size} px")
        members.append(member)
    return members[0] if len(members) == 1 else MeanProbabilities(members)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("arch", choices=ARCHITECTURES)
    arch = parser.parse_args().arch
    section = load_params("train_segmenter")
    params = TrainSegmenterParams.from_params(section, "train_segmenter")
    common, own = params.common, params.for_arch(arch, "train_segmenter")
    set_determinism(common.seed)
    sources = FaceSources.load(paths.SEGMENT_CROPS / "sources.npz")
    if common.include_val:
        sources = sources.concatenate(FaceSources.load(paths.SEGMENT_CROPS / "val_sources.npz"))
    val = SegmentCrops.load(paths.SEGMENT_CROPS / "val.npz")
    manifest = json.loads((paths.SEGMENT_CROPS / "manifest.json").read_text(encoding="utf-8"))
    size = int(manifest["geometry"]["size"])
    config = SegmenterConfig(
        arch=arch,
        input_size=size,
        width=own.width,
        depth=own.depth,
        expansion=own.expansion,
        dropout=own.dropout,
        annotation_offset=manifest["annotation_offset"],
    )
    model = SegmenterNet(config)
    model.set_normalisation(*channel_normalisation(sources.images))
    spread = LocatorSpread.from_dict(manifest["locator"]["box_vs_ground_truth"])
    teacher = load_teacher(own.teacher, size) if own.teacher else None
    task = OnlineSegmentationTask(
        common.loss_weights,
        val,
        sources,
        size,
        spread,
        Jitter(**manifest["jitter"]),
        manifest["annotation_offset"],
        teacher=teacher,
    )
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
                "train_faces": len(sources),
                "val_crops": len(val),
            }
        )
        result = fit(
            model,
            torch.arange(len(sources)),  # face indices: the task cuts each batch's crops from their sources
            torch.arange(len(sources)),
            task,
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
                    "training_data": manifest["training_data"],
                    "trained_on": "train + validation faces" if common.include_val else "train faces",
                    "teacher": own.teacher,
                    "locator": manifest["locator"]["box_vs_ground_truth"],
                },
            )
            # Inside the block: the model folder is swapped in last, once everything else is written.
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
    run_stage(main)
