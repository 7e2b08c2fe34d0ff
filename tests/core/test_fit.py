from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lipseg.core.fit import FitConfig, FitTask, fit
from lipseg.core.runtime import resolve_device, set_determinism
from lipseg.tcnn.losses import mouth_normalised_error
from lipseg.tcnn.model import TCNNConfig, VanillaTCNN
from lipseg.tcnn.training import LandmarkTask


def toy_problem(count: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose brightness pattern encodes a horizontal shift of a template mouth."""
    generator = torch.Generator().manual_seed(0)
    template = torch.rand(56, 2, generator=generator) * 0.4 - 0.2
    template[0] = torch.tensor([-0.3, 0.0])
    shifts = torch.rand(count, generator=generator) * 0.2 - 0.1
    targets = template[None].repeat(count, 1, 1)
    targets[..., 0] += shifts[:, None]
    images = torch.zeros(count, 3, 40, 40)
    columns = ((shifts + 0.1) / 0.2 * 35).long()
    for index, column in enumerate(columns):
        images[index, :, :, column : column + 5] = 255.0
    return images, targets


def task(images: torch.Tensor, targets: torch.Tensor, loss: str = "mse") -> LandmarkTask:
    return LandmarkTask(loss, images[64:], targets[64:])


def make_model() -> VanillaTCNN:
    set_determinism(0)
    return VanillaTCNN(TCNNConfig(conv_channels=[8, 8, 8, 8], fc5=32))


def test_fit_learns_and_keeps_the_best_epoch() -> None:
    images, targets = toy_problem()
    model = make_model()
    result = fit(
        model,
        images[:64],
        targets[:64],
        task(images, targets),
        FitConfig(lr=3e-3, batch_size=16, max_epochs=25, patience=25),
        progress=False,
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] / 3
    assert result.best_value == min(record["val_nme"] for record in result.history)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    images, targets = toy_problem()
    config = FitConfig(lr=3e-3, batch_size=16, max_epochs=6, patience=10)
    reference = make_model()
    fit(reference, images[:64], targets[:64], task(images, targets), config, progress=False)

    class Killed(Exception):
        pass

    def kill_at_epoch_4(record: dict) -> None:
        if record["epoch"] == 4:
            raise Killed

    checkpoint = tmp_path / "last.safetensors"
    interrupted = make_model()
    with pytest.raises(Killed):
        fit(
            interrupted,
            images[:64],
            targets[:64],
            task(images, targets),
            config,
            checkpoint,
            on_epoch=kill_at_epoch_4,
            progress=False,
        )
    assert checkpoint.is_file()
    resumed = make_model()
    result = fit(resumed, images[:64], targets[:64], task(images, targets), config, checkpoint, progress=False)
    assert result.resumed_from_epoch == 3
    assert [record["epoch"] for record in result.history] == list(range(1, 7))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_from_other_settings_is_not_resumed(tmp_path: Path) -> None:
    images, targets = toy_problem()
    checkpoint = tmp_path / "last.safetensors"
    fit(
        make_model(),
        images[:64],
        targets[:64],
        task(images, targets),
        FitConfig(max_epochs=2),
        checkpoint,
        progress=False,
    )
    result = fit(
        make_model(),
        images[:64],
        targets[:64],
        task(images, targets),
        FitConfig(max_epochs=3, lr=5e-4),
        checkpoint,
        progress=False,
    )
    assert result.resumed_from_epoch == 0 and len(result.history) == 3


def test_dataloader_workers_and_amp_on_the_cpu_change_nothing(tmp_path: Path) -> None:
    images, targets = toy_problem()
    config = FitConfig(lr=3e-3, batch_size=16, max_epochs=3, patience=3)
    reference = make_model()
    fit(reference, images[:64], targets[:64], task(images, targets), config, progress=False)
    checkpoint = tmp_path / "last.safetensors"
    with_workers = make_model()
    global_rng = torch.get_rng_state()
    # Workers only gather the batches the seeded shuffler chose; amp is CUDA-only and ignored here.
    fit(
        with_workers,
        images[:64],
        targets[:64],
        task(images, targets),
        replace(config, num_workers=2, amp=True),
        checkpoint,
        progress=False,
    )
    assert torch.equal(torch.get_rng_state(), global_rng), "the DataLoader drew from the global RNG"
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(with_workers.state_dict()[key], value, rtol=0, atol=0)
    # Same weights, so the checkpoint stays valid without workers (num_workers is not in its fingerprint).
    resumed = fit(
        make_model(),
        images[:64],
        targets[:64],
        task(images, targets),
        replace(config, amp=True),
        checkpoint,
        progress=False,
    )
    assert resumed.resumed_from_epoch == 3


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cosine_schedule_and_wing_loss_train() -> None:
    images, targets = toy_problem()
    model = make_model()
    config = FitConfig(lr=3e-3, batch_size=16, max_epochs=8, patience=8, lr_schedule="cosine")
    result = fit(model, images[:64], targets[:64], task(images, targets, "wing"), config, progress=False)
    rates = [record["lr"] for record in result.history]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 1e-6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    with pytest.raises(ValueError, match="loss must be one of"):
        task(images, targets, "l7")


def test_cosine_warmup_ramps_up_then_decays() -> None:
    images, targets = toy_problem()
    config = FitConfig(lr=3e-3, batch_size=16, max_epochs=8, patience=8, lr_schedule="cosine", warmup_epochs=3)
    result = fit(make_model(), images[:64], targets[:64], task(images, targets, "wing"), config, progress=False)
    rates = [record["lr"] for record in result.history]
    peak = rates.index(max(rates))
    assert peak == 2 and rates[:3] == sorted(rates[:3]) and max(rates) == pytest.approx(3e-3)
    assert rates[peak:] == sorted(rates[peak:], reverse=True) and rates[-1] < 1e-6


class AccuracyTask(FitTask):
    """A task whose validation figure rises as the model improves (like the segmenters' F1)."""

    monitor, mode = "val_accuracy", "max"

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((predicted - target) ** 2).mean()

    @torch.no_grad()
    def validate(self, module: torch.nn.Module, device: torch.device) -> dict[str, float]:
        module.eval()
        error = mouth_normalised_error(module(self.images), self.targets)
        return {"val_loss": float(error.mean()), "val_accuracy": 1.0 - float(error.mean())}


def test_the_same_loop_early_stops_on_a_figure_that_rises() -> None:
    images, targets = toy_problem()
    model = make_model()
    result = fit(
        model,
        images[:64],
        targets[:64],
        AccuracyTask(images[64:], targets[64:]),
        FitConfig(lr=3e-3, batch_size=16, max_epochs=12, patience=3, lr_schedule="plateau", lr_patience=1),
        progress=False,
    )
    accuracies = [record["val_accuracy"] for record in result.history]
    assert result.monitor == "val_accuracy" and result.best_value == max(accuracies) > accuracies[0]
    assert result.history[result.best_epoch - 1]["val_accuracy"] == result.best_value
    # It stopped `patience` epochs after the best one, or ran to the end.
    assert len(result.history) == min(12, result.best_epoch + 3)
    # The module holds the best epoch's weights, not the last epoch's.
    assert (
        AccuracyTask(images[64:], targets[64:]).validate(model, torch.device("cpu"))["val_accuracy"]
        == result.best_value
    )


def test_keep_last_trains_every_epoch_and_keeps_the_final_weights() -> None:
    images, targets = toy_problem()
    model = make_model()
    config = FitConfig(lr=3e-2, batch_size=16, max_epochs=6, patience=1, keep_last=True)
    result = fit(model, images[:64], targets[:64], AccuracyTask(images[64:], targets[64:]), config, progress=False)
    assert len(result.history) == 6 and not result.stopped_early  # patience 1 would have stopped it otherwise
    final = AccuracyTask(images[64:], targets[64:]).validate(model, torch.device("cpu"))["val_accuracy"]
    assert final == result.history[-1]["val_accuracy"]


def test_fit_config_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        FitConfig(optimizer="lion")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        FitConfig(lr_schedule="step")


class DropoutNet(torch.nn.Module):
    """Dropout draws from the global torch RNG every step: a resume must restore that generator too."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(3 * 40 * 40, 64),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(64, 112),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images / 255.0).view(-1, 56, 2)


def test_a_resumed_run_continues_the_global_random_draws(tmp_path: Path) -> None:
    images, targets = toy_problem()
    config = FitConfig(lr=1e-3, batch_size=16, max_epochs=5, patience=10)

    def model() -> DropoutNet:
        set_determinism(0)
        return DropoutNet()

    reference = model()
    fit(reference, images[:64], targets[:64], task(images, targets), config, progress=False)

    class Killed(Exception):
        pass

    def kill_at_epoch_3(record: dict) -> None:
        if record["epoch"] == 3:
            raise Killed

    checkpoint = tmp_path / "last.safetensors"
    with pytest.raises(Killed):
        fit(
            model(),
            images[:64],
            targets[:64],
            task(images, targets),
            config,
            checkpoint,
            on_epoch=kill_at_epoch_3,
            progress=False,
        )
    resumed = model()  # a fresh process: the global generators start from the seed again
    result = fit(resumed, images[:64], targets[:64], task(images, targets), config, checkpoint, progress=False)
    assert result.resumed_from_epoch == 2
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
