from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from lipseg.tcnn.gmm import full_precision_cholesky
from lipseg.tcnn.losses import mouth_normalised_error, mouth_normalised_mse
from lipseg.tcnn.model import TCNNConfig, TweakedTCNN, VanillaTCNN


def test_vanilla_shapes_follow_the_config() -> None:
    model = VanillaTCNN(TCNNConfig())
    images = torch.rand(5, 3, 40, 40) * 255
    assert model(images).shape == (5, 56, 2)
    assert model.trunk.out_features == 64 * 2 * 2
    features = model.fc5_features(images)
    assert features.shape == (5, 100) and features.min() >= 0 and features.max() < 1  # |tanh|
    wide = VanillaTCNN(TCNNConfig(input_size=48, conv_channels=[8, 16, 32, 32], fc5=64))
    assert wide(torch.rand(2, 3, 48, 48)).shape == (2, 56, 2)
    assert wide.fc5_features(torch.rand(2, 3, 48, 48)).shape == (2, 64)


def test_losses_are_scale_free() -> None:
    target = torch.rand(4, 56, 2)
    predicted = target + 0.01
    assert float(mouth_normalised_mse(predicted * 3, target * 3)) == pytest.approx(
        float(mouth_normalised_mse(predicted, target)), rel=1e-4
    )
    assert float(mouth_normalised_error(target, target).max()) == 0.0


@pytest.mark.parametrize("covariance_type", ["diag", "full", "spherical", "tied"])
def test_gate_agrees_with_scikit_learn(covariance_type: str) -> None:
    rng = np.random.default_rng(0)
    features = np.vstack([rng.normal(centre, 0.05, (60, 100)) for centre in (0.2, 0.5, 0.8)]).clip(0, 1)
    mixture = GaussianMixture(3, covariance_type=covariance_type, random_state=0, reg_covar=1e-4).fit(features)
    model = TweakedTCNN(TCNNConfig(), 3)
    model.gate.set_mixture(mixture.weights_, mixture.means_, full_precision_cholesky(mixture))
    probe = np.vstack([features[::7], rng.uniform(0, 1, (30, 100))])
    ours = model.gate(torch.from_numpy(probe).float()).numpy()
    np.testing.assert_array_equal(ours, mixture.predict(probe))


def test_tweaked_with_copied_heads_equals_vanilla() -> None:
    torch.manual_seed(0)
    vanilla = VanillaTCNN(TCNNConfig()).eval()
    tweaked = TweakedTCNN.from_vanilla(vanilla, 3).eval()
    images = torch.rand(6, 3, 40, 40) * 255
    points, clusters = tweaked.forward_with_clusters(images)
    torch.testing.assert_close(points, vanilla(images))
    assert clusters.shape == (6,)


def test_tweaked_routes_each_crop_to_its_cluster_head() -> None:
    torch.manual_seed(0)
    tweaked = TweakedTCNN.from_vanilla(VanillaTCNN(TCNNConfig()), 2).eval()
    with torch.no_grad():
        tweaked.heads[1].fc6.bias += 1.0  # head 1 predicts everything shifted by +1
    images = torch.rand(8, 3, 40, 40) * 255
    with torch.no_grad():
        base = tweaked.base_head(tweaked.trunk(tweaked.normaliser(images)))
        points, clusters = tweaked.forward_with_clusters(images)
    expected = base + clusters.view(-1, 1, 1).float()
    torch.testing.assert_close(points, expected)


def test_batch_norm_option_and_wing_loss() -> None:
    from lipseg.tcnn.losses import wing_loss

    model = VanillaTCNN(TCNNConfig(batch_norm=True))
    assert sum(isinstance(layer, torch.nn.BatchNorm2d) for layer in model.trunk.layers) == 4
    assert model(torch.rand(3, 3, 40, 40) * 255).shape == (3, 56, 2)
    target = torch.rand(4, 56, 2)
    assert float(wing_loss(target, target)) == 0.0
    small, large = wing_loss(target + 0.01, target), wing_loss(target + 0.5, target)
    assert 0 < float(small) < float(large)
    # scale-free, like the MSE loss: the same relative error at 3x the size gives the same loss
    assert float(wing_loss((target + 0.01) * 3, target * 3)) == pytest.approx(float(small), rel=1e-4)
