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
from lipseg.core.params import Section, param
from lipseg.core.runtime import resolve_device
from lipseg.tcnn.gmm import assign, assign_by_source, full_precision_cholesky
from lipseg.tcnn.losses import mouth_normalised_error
from lipseg.tcnn.model import TweakedTCNN, VanillaTCNN
from lipseg.tcnn.predict import trunk_and_fc5
from lipseg.tcnn.training import LandmarkTask


@dataclass(frozen=True)
class HeadsConfig(Section):
    """The `heads` params section."""

    lr: float = param(1e-4, low=0, low_open=True)
    epochs: int = param(30, low=1)
    patience: int = param(5, low=1)
    batch_size: int = param(32, low=1)
    min_cluster_size: int = param(20, low=1)
    min_val_size: int = param(5, low=1)
    cluster_by: Literal["crop", "source"] = (
        "crop"  # crop: each crop by its own features | source: every copy by its face's plain crop
    )
    keep_if_better: bool = True  # a head that does not beat the base head on its validation crops is replaced by it
    seed: int = 0
    device: str = "auto"


@dataclass
class HeadReport:
    cluster: int
    train_size: int
    val_size: int
    fallback: bool  # True: this cluster uses the base head (see fallback_reason)
    val_scope: str  # "cluster", or "all" when the cluster has too few validation crops
    base_val_nme: float
    head_val_nme: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # the fit's rows: epoch, train_loss, val_loss, val_nme, ...
    fallback_reason: str = ""  # "", "small cluster" or "no validation gain"
    resumed_from_epoch: int = 0  # > 0: training continued from this epoch's checkpoint (after a kill)

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "history"}


@torch.no_grad()
def _head_nme(head: nn.Module, features: torch.Tensor, lips: torch.Tensor) -> float:
    head.eval()
    device = next(head.parameters()).device
    return float(mouth_normalised_error(head(features.to(device)), lips.to(device)).mean())


def finetune_heads(
    base: VanillaTCNN,
    mixture: GaussianMixture,
    train_images: np.ndarray,
    train_lips: np.ndarray,
    val_images: np.ndarray,
    val_lips: np.ndarray,
    config: HeadsConfig,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    train_sources: np.ndarray | None = None,
    train_copy_index: np.ndarray | None = None,
) -> tuple[TweakedTCNN, list[HeadReport]]:
    """Train one head per cluster; the convolutions stay frozen, so their features are computed once."""
    device = resolve_device(config.device)
    base = base.to(device)
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    train_trunk, train_fc5 = trunk_and_fc5(base, train_images)
    val_trunk, val_fc5 = trunk_and_fc5(base, val_images)
    if config.cluster_by == "source":
        if train_sources is None or train_copy_index is None:
            raise ValueError("heads.cluster_by: source needs the crops' source names and copy indices")
        train_clusters = assign_by_source(mixture, train_fc5, train_sources, train_copy_index)
    elif config.cluster_by == "crop":
        train_clusters = assign(mixture, train_fc5)
    else:
        raise ValueError(f"heads.cluster_by must be 'crop' or 'source', got {config.cluster_by!r}")
    val_clusters = assign(mixture, val_fc5)
    train_targets, val_targets = torch.from_numpy(train_lips), torch.from_numpy(val_lips)

    components = mixture.n_components
    tweaked = TweakedTCNN.from_vanilla(base.cpu(), components)
    tweaked.gate.set_mixture(mixture.weights_, mixture.means_, full_precision_cholesky(mixture))
    reports = []
    for cluster in range(components):
        train_index = np.flatnonzero(train_clusters == cluster)
        val_index = np.flatnonzero(val_clusters == cluster)
        scope = "cluster" if len(val_index) >= config.min_val_size else "all"
        if scope == "all":
            val_index = np.arange(len(val_trunk))
        head = copy.deepcopy(base.head).to(device)
        for parameter in head.parameters():
            parameter.requires_grad_(True)
        val_features, val_cluster_lips = val_trunk[val_index], val_targets[val_index]
        base_nme = _head_nme(base.head, val_features, val_cluster_lips)
        if len(train_index) < config.min_cluster_size:
            reports.append(
                HeadReport(
                    cluster,
                    len(train_index),
                    len(val_index),
                    True,
                    scope,
                    base_nme,
                    base_nme,
                    0,
                    0,
                    fallback_reason="small cluster",
                )
            )
            continue
        fit_config = FitConfig(
            lr=config.lr,
            batch_size=config.batch_size,
            max_epochs=config.epochs,
            patience=config.patience,
            seed=config.seed + cluster,
            device=config.device,
        )
        task = LandmarkTask("mse", val_features, val_cluster_lips, batch_size=max(config.batch_size, 256))
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
        head_nme = _head_nme(head, val_features, val_cluster_lips)
        no_gain = config.keep_if_better and not head_nme < base_nme
        if not no_gain:  # otherwise the head keeps the base weights TweakedTCNN.from_vanilla gave it
            tweaked.heads[cluster].load_state_dict({key: value.cpu() for key, value in head.state_dict().items()})
        reports.append(
            HeadReport(
                cluster,
                len(train_index),
                len(val_index),
                no_gain,
                scope,
                base_nme,
                head_nme,
                result.best_epoch,
                len(result.history),
                result.history,
                fallback_reason="no validation gain" if no_gain else "",
                resumed_from_epoch=result.resumed_from_epoch,
            )
        )
    return tweaked.eval(), reports


def head_weight_distances(model: TweakedTCNN) -> np.ndarray:
    """(K, K) L2 distances between the heads' flattened weights: zero off the diagonal would mean a
    shared head, the bug the reference Keras implementation of this method had."""
    flat = [torch.cat([p.detach().flatten() for p in head.parameters()]) for head in model.heads]
    return torch.cdist(torch.stack(flat)[None], torch.stack(flat)[None])[0].numpy()
