"""The tweak: one fine-tuned FC5+FC6 head per GMM cluster on top of the frozen vanilla convolutions."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

from lipseg.core.fit import FitConfig, fit
from lipseg.core.params import Section, param, seed_param
from lipseg.core.runtime import resolve_device
from lipseg.tcnn.gmm import assign, assign_by_source, full_precision_cholesky
from lipseg.tcnn.losses import mouth_normalised_error
from lipseg.tcnn.model import TweakedTCNN, VanillaTCNN
from lipseg.tcnn.predict import trunk_and_fc5
from lipseg.tcnn.training import BaseTraining, LandmarkTask


@dataclass(frozen=True)
class HeadsConfig(Section):
    """The `heads` params section. Loss, weight decay and learning-rate schedule are the base model's."""

    lr: float = param(1e-4, low=0, low_open=True)
    epochs: int = param(30, low=1)
    patience: int = param(5, low=1)
    batch_size: int = param(32, low=1)
    min_cluster_size: int = param(20, low=1)  # training faces (not crops) a cluster needs for a head of its own
    min_val_size: int = param(5, low=1)  # validation faces per half (epoch choice, keep decision) for cluster scope
    cluster_by: Literal["crop", "source"] = "crop"  # crop: each crop by its features | source: copies follow their face
    keep_if_better: bool = True  # a head must beat the base head on validation faces that did not choose its epoch
    seed: int = seed_param()
    device: str = "auto"


@dataclass
class HeadReport:
    cluster: int
    train_faces: int
    train_crops: int
    val_faces: int  # validation faces that chose the epoch (`select`) plus those that judged the head (`confirm`)
    fallback: bool  # True: this cluster uses the base head (see fallback_reason)
    val_scope: str  # "cluster", or "all" when the cluster has too few validation faces
    base_val_nme: float  # on the `confirm` faces
    head_val_nme: float
    best_epoch: int
    epochs_run: int
    loss: str = ""
    history: list[dict[str, float]] = field(default_factory=list)  # the fit's rows: epoch, train_loss, val_loss, ...
    fallback_reason: str = ""  # "", "small cluster" or "no validation gain"
    resumed_from_epoch: int = 0  # > 0: training continued from this epoch's checkpoint (after a kill)

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "history"}


@dataclass
class HeadsData:
    """Crops the heads are trained and judged on: images, canonical lips, and the face each crop is of."""

    images: np.ndarray  # (N, S, S, 3) uint8
    lips: np.ndarray  # (N, 56, 2) float32
    names: np.ndarray  # (N,) face names: jittered copies share their face's
    copy_index: np.ndarray  # (N,) 0 = the plain crop


@torch.no_grad()
def _head_nme(head: nn.Module, features: torch.Tensor, lips: torch.Tensor) -> float:
    head.eval()
    device = next(head.parameters()).device
    return float(mouth_normalised_error(head(features.to(device)), lips.to(device)).mean())


def halves(indices: np.ndarray, names: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Validation crops split by face into (select, confirm): the epoch is chosen on the first half and the
    head is judged on the second, so a head is never kept for noise that also picked its epoch."""
    faces = np.unique(names[indices])
    order = np.random.default_rng(seed).permutation(len(faces))
    confirm = set(faces[order[len(faces) // 2 :]].tolist())
    in_confirm = np.array([name in confirm for name in names[indices].tolist()], bool)
    return indices[~in_confirm], indices[in_confirm]


def finetune_heads(
    base: VanillaTCNN,
    mixture: GaussianMixture,
    train: HeadsData,
    val: HeadsData,
    config: HeadsConfig,
    training: BaseTraining,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
) -> tuple[TweakedTCNN, list[HeadReport]]:
    """Train one head per cluster with the base model's loss, weight decay and schedule (`training`); the
    convolutions stay frozen, so their features are computed once."""
    device = resolve_device(config.device)
    base = base.to(device)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    train_trunk, train_fc5 = trunk_and_fc5(base, train.images)
    val_trunk, val_fc5 = trunk_and_fc5(base, val.images)
    if config.cluster_by == "source":
        train_clusters = assign_by_source(mixture, train_fc5, train.names, train.copy_index)
    else:
        train_clusters = assign(mixture, train_fc5)
    val_clusters = assign(mixture, val_fc5)
    train_targets, val_targets = torch.from_numpy(train.lips), torch.from_numpy(val.lips)

    components = mixture.n_components
    tweaked = TweakedTCNN.from_vanilla(base.cpu(), components)
    tweaked.gate.set_mixture(mixture.weights_, mixture.means_, full_precision_cholesky(mixture))
    reports = []
    for cluster in range(components):
        train_index = np.flatnonzero(train_clusters == cluster)
        train_faces = len(np.unique(train.names[train_index]))
        select, confirm = halves(np.flatnonzero(val_clusters == cluster), val.names, config.seed + cluster)
        scope = "cluster"
        if min(len(np.unique(val.names[select])), len(np.unique(val.names[confirm]))) < config.min_val_size:
            scope = "all"
            select, confirm = halves(np.arange(len(val.names)), val.names, config.seed + cluster)
        base_nme = _head_nme(base.head, val_trunk[confirm], val_targets[confirm])
        report = HeadReport(
            cluster,
            train_faces,
            len(train_index),
            len(np.unique(val.names[np.concatenate([select, confirm])])),
            True,
            scope,
            base_nme,
            base_nme,
            0,
            0,
            loss=training.loss,
        )
        if train_faces < config.min_cluster_size:
            report.fallback_reason = "small cluster"
            reports.append(report)
            continue
        head = copy.deepcopy(base.head).to(device)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        fit_config = FitConfig(
            lr=config.lr,
            batch_size=config.batch_size,
            max_epochs=config.epochs,
            patience=config.patience,
            weight_decay=training.weight_decay,
            lr_schedule=training.lr_schedule,
            lr_patience=training.lr_patience,
            lr_factor=training.lr_factor,
            seed=config.seed + cluster,
            device=config.device,
        )
        task = LandmarkTask(
            training.loss, val_trunk[select], val_targets[select], batch_size=max(config.batch_size, 256)
        )
        result = fit(
            head,
            train_trunk[train_index],
            train_targets[train_index],
            task,
            fit_config,
            checkpoint_path=checkpoint_dir / f"head_{cluster}.safetensors" if checkpoint_dir else None,
            run_fingerprint=f"head-{cluster}-{len(train_index)}",
            desc=f"head {cluster}",
            progress=progress,
        )
        report.head_val_nme = _head_nme(head, val_trunk[confirm], val_targets[confirm])
        report.fallback = config.keep_if_better and not report.head_val_nme < base_nme
        report.fallback_reason = "no validation gain" if report.fallback else ""
        report.best_epoch, report.epochs_run, report.history = result.best_epoch, len(result.history), result.history
        report.resumed_from_epoch = result.resumed_from_epoch
        if not report.fallback:  # otherwise the head keeps the base weights TweakedTCNN.from_vanilla gave it
            tweaked.heads[cluster].load_state_dict({key: value.cpu() for key, value in head.state_dict().items()})
        reports.append(report)
    return tweaked.eval(), reports


def head_weight_distances(model: TweakedTCNN) -> np.ndarray:
    """(K, K) L2 distances between the heads' flattened weights: zero off the diagonal would mean a
    shared head, the bug the reference Keras implementation of this method had."""
    flat = [torch.cat([p.detach().flatten() for p in head.parameters()]) for head in model.heads]
    return torch.cdist(torch.stack(flat)[None], torch.stack(flat)[None])[0].numpy()
