from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lipseg.core.runtime import set_determinism
from lipseg.data.crops import normalisation_images
from lipseg.tcnn.gmm import GMMConfig, assign, fit_gmm
from lipseg.tcnn.heads import HeadsConfig, HeadsData, finetune_heads, halves, head_weight_distances
from lipseg.tcnn.model import TCNNConfig, VanillaTCNN
from lipseg.tcnn.predict import trunk_and_fc5
from lipseg.tcnn.training import BaseTraining

MSE = BaseTraining("mse", 0.0, "none", 0, 0.5)


def clustered_crops(per_state: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Three visibly different 'lip states', each with its own landmark offset."""
    rng = np.random.default_rng(0)
    images, lips = [], []
    template = rng.uniform(-0.25, 0.25, (56, 2)).astype(np.float32)
    template[0] = (-0.3, 0.0)
    for state, colour in enumerate((30, 130, 230)):
        for _ in range(per_state):
            image = np.clip(rng.normal(colour, 12, (40, 40, 3)), 0, 255).astype(np.uint8)
            images.append(image)
            lips.append(template + np.float32(0.05 * state) + rng.normal(0, 0.005, (56, 2)).astype(np.float32))
    return np.stack(images), np.stack(lips)


def data(images: np.ndarray, lips: np.ndarray, faces: int | None = None) -> HeadsData:
    """Crops as heads data; `faces` < len(images) makes consecutive crops copies of one face."""
    per_face = len(images) // (faces or len(images))
    names = np.array([f"face_{index // per_face}" for index in range(len(images))])
    return HeadsData(images, lips, names, np.array([index % per_face for index in range(len(images))]))


def untrained_base(images: np.ndarray) -> VanillaTCNN:
    base = VanillaTCNN(TCNNConfig(conv_channels=[8, 8, 8, 8], fc5=16)).eval()
    base.normaliser.set_images(*normalisation_images(images))
    return base


def base_and_mixture(per_state: int, k: int) -> tuple[np.ndarray, np.ndarray, VanillaTCNN, np.ndarray, Any]:
    """Seeded clustered crops, an untrained base model, its FC5 features and a k-component mixture over them."""
    set_determinism(0)
    images, lips = clustered_crops(per_state)
    base = untrained_base(images)
    _, features = trunk_and_fc5(base, images)
    mixture, _ = fit_gmm(features, GMMConfig(k=k, n_init=2))
    return images, lips, base, features, mixture


def test_each_cluster_gets_its_own_head(tmp_path: Path) -> None:
    images, lips, base, features, mixture = base_and_mixture(40, k=3)
    config = HeadsConfig(lr=1e-3, epochs=4, patience=4, batch_size=16, min_cluster_size=5, min_val_size=2)
    val = np.arange(0, len(images), 5)
    tweaked, reports = finetune_heads(
        base, mixture, data(images, lips), data(images[val], lips[val]), config, MSE, tmp_path, progress=False
    )
    assert [report.fallback for report in reports] == [False, False, False]
    distances = head_weight_distances(tweaked)
    off_diagonal = distances[~np.eye(3, dtype=bool)]
    # The reference Keras implementation silently shared one head; ours must not.
    assert off_diagonal.min() > 1e-3
    base_vector = torch.cat([p.flatten() for p in base.head.parameters()])
    for head in tweaked.heads:
        assert float((torch.cat([p.flatten() for p in head.parameters()]) - base_vector).norm()) > 1e-3
    # The conv trunk stayed frozen and identical to the base model.
    for key, value in base.trunk.state_dict().items():
        torch.testing.assert_close(tweaked.trunk.state_dict()[key], value)
    # The torch gate routes exactly like the scikit-learn mixture.
    with torch.no_grad():
        _, clusters = tweaked.forward_with_clusters(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float())
    np.testing.assert_array_equal(clusters.numpy(), assign(mixture, features))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "head_0.safetensors",
        "head_1.safetensors",
        "head_2.safetensors",
    ]


def test_small_clusters_fall_back_to_the_base_head() -> None:
    images, lips, base, features, mixture = base_and_mixture(10, k=3)
    sizes = np.bincount(assign(mixture, features), minlength=3)
    config = HeadsConfig(lr=1e-3, epochs=2, min_cluster_size=int(sizes.max()) + 1)
    tweaked, reports = finetune_heads(
        base, mixture, data(images, lips), data(images, lips), config, MSE, progress=False
    )
    assert all(report.fallback for report in reports)
    for head in tweaked.heads:
        for key, value in base.head.state_dict().items():
            torch.testing.assert_close(head.state_dict()[key], value)


@pytest.mark.parametrize("keep_if_better", [True, False])
def test_a_head_without_validation_gain_is_replaced_by_the_base_head(keep_if_better: bool) -> None:
    images, lips, base, features, mixture = base_and_mixture(10, k=2)
    # lr 0: every head ends exactly where the base head is, so none improves on the validation crops.
    config = HeadsConfig(
        lr=0.0, epochs=2, patience=2, min_cluster_size=1, min_val_size=1, keep_if_better=keep_if_better
    )
    _, reports = finetune_heads(base, mixture, data(images, lips), data(images, lips), config, MSE, progress=False)
    assert all(report.head_val_nme == pytest.approx(report.base_val_nme) for report in reports)
    assert [report.fallback for report in reports] == [keep_if_better] * 2
    assert {report.fallback_reason for report in reports} == {"no validation gain" if keep_if_better else ""}


def test_cluster_sizes_count_faces_not_their_jittered_copies() -> None:
    images, lips, base, features, mixture = base_and_mixture(12, k=3)  # 36 crops: 4 faces of 3 copies per state
    config = HeadsConfig(lr=1e-3, epochs=1, patience=1, min_cluster_size=5, min_val_size=1)
    _, reports = finetune_heads(
        base, mixture, data(images, lips, faces=12), data(images, lips), config, MSE, progress=False
    )
    assert all(report.train_crops >= 5 for report in reports)  # enough crops ...
    assert all(
        report.train_faces <= 4 and report.fallback_reason == "small cluster" for report in reports
    )  # ... too few faces


def test_heads_are_trained_with_the_base_models_loss_and_schedule(tmp_path: Path) -> None:
    images, lips, base, features, mixture = base_and_mixture(10, k=2)
    config = HeadsConfig(lr=1e-3, epochs=4, patience=4, min_cluster_size=1, min_val_size=1, keep_if_better=False)
    wing = BaseTraining("wing", 1e-4, "cosine", 0, 0.5)
    _, reports = finetune_heads(base, mixture, data(images, lips), data(images, lips), config, wing, progress=False)
    for report in reports:
        assert report.loss == "wing"
        rates = [row["lr"] for row in report.history]
        assert rates == sorted(rates, reverse=True) and rates[-1] < 1e-3  # the cosine schedule ran
        # The validation loss is the training loss (wing), not the normalised MSE: far larger at these errors.
        assert report.history[0]["val_loss"] > 3 * report.history[0]["val_nme"] ** 2


def test_validation_halves_split_faces_not_crops() -> None:
    names = np.array([f"face_{index // 2}" for index in range(20)])  # two crops per face
    select, confirm = halves(np.arange(20), names, seed=3)
    assert len(select) + len(confirm) == 20
    assert not set(names[select]) & set(names[confirm])
    assert abs(len(set(names[select])) - len(set(names[confirm]))) <= 1


def test_base_training_must_be_recorded() -> None:
    with pytest.raises(ValueError, match="records no training recipe"):
        BaseTraining.from_meta({"kind": "vanilla"})
    assert BaseTraining.from_meta({"training": MSE.to_dict()}) == MSE
