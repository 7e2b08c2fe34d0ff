"""The one training loop, for both model families: early stopping on a validation metric (lower or
higher is better), a checkpoint every epoch and resume after a kill, AMP and pinned memory on CUDA,
optional DataLoader workers, and PyTorch DDP.

What is trained is described by a `FitTask`: the loss, the validation figures, the metric early
stopping follows and any per-batch augmentation. No MLflow here: callers pass `on_epoch` to log.

Inside an initialised torch.distributed process group (lipseg.core.distributed joins one under
torchrun) `fit` is one rank of a DDP job: every rank draws the same seeded permutation and trains on its
own interleaved share of it, DDP averages the gradients, every rank validates but adopts rank 0's
figures (so early stopping agrees and no rank hangs), and only rank 0 writes checkpoints or calls
`on_epoch`. Without a process group nothing of this runs.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset
from tqdm import tqdm

from lipseg.core.checkpoint import (
    content_digest,
    fingerprint,
    read_resumable_checkpoint,
    save_checkpoint,
)
from lipseg.core.distributed import (
    Ranks,
    broadcast_from_main,
    rank_shard,
    sum_over_ranks,
)
from lipseg.core.runtime import resolve_device

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("plateau", "cosine", "none")


@dataclass(frozen=True)
class FitConfig:
    optimizer: str = "adam"  # adam | adamw | sgd (momentum, Nesterov)
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 64  # per process: N processes step on N x batch_size samples at a time
    max_epochs: int = 60
    patience: int = 8  # epochs without a better validation metric before stopping
    lr_schedule: str = "plateau"  # plateau (scale by lr_factor after lr_patience bad epochs) | cosine | none
    lr_patience: int = 0  # 0 turns the plateau schedule off
    lr_factor: float = 0.5
    warmup_epochs: int = 0  # cosine: the learning rate ramps up linearly over these epochs first
    # True: train all max_epochs and keep the final weights (no early stopping), for a retrain whose
    # validation data is also trained on, so that its best epoch would mean nothing
    keep_last: bool = False
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0  # >0: DataLoader workers gather the batches (same batches, so the same weights)
    amp: bool = False  # mixed precision (autocast + GradScaler); CUDA only, ignored on the CPU

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError(
                f"batch_size, max_epochs and patience must be at least 1 "
                f"(got {self.batch_size}, {self.max_epochs}, {self.patience})"
            )


class FitTask:
    """What `fit` trains: subclasses give the loss and the validation figures."""

    monitor = "val_loss"  # the validation figure early stopping, the best weights and the plateau schedule follow
    mode = "min"  # "min": lower is better; "max": higher is better

    def loss(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, module: nn.Module, device: torch.device) -> dict[str, float]:
        """`val_loss` and `monitor` (and anything else worth a column) on the validation data."""
        raise NotImplementedError

    def augment(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-batch augmentation drawn from the loop's seeded generator (so a resumed run draws the same)."""
        return inputs, targets

    def settings(self) -> dict[str, Any]:
        """What else shapes the weights, for the checkpoint fingerprint."""
        return {}

    def better(self, value: float, best: float) -> bool:
        return value < best if self.mode == "min" else value > best

    @property
    def worst(self) -> float:
        return float("inf") if self.mode == "min" else float("-inf")


@dataclass
class FitResult:
    monitor: str
    history: list[dict[str, float]] = field(
        default_factory=list
    )  # one row per epoch: epoch, train_loss, val_..., lr, seconds
    best_epoch: int = 0
    best_value: float = float("nan")
    stopped_early: bool = False
    resumed_from_epoch: int = 0

    @property
    def seconds(self) -> float:
        return sum(row["seconds"] for row in self.history)


class _EpochBatches(Sampler[torch.Tensor]):
    """Yields the current epoch's index batches; `fit` refills it each epoch, so one DataLoader (and
    its persistent workers) serves every epoch with the batches the seeded shuffler chose."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _optimiser(parameters: list[nn.Parameter], config: FitConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )


def _scheduler(optimiser: torch.optim.Optimizer, config: FitConfig, mode: str):
    if config.lr_schedule == "plateau" and config.lr_patience > 0:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimiser, mode=mode, factor=config.lr_factor, patience=config.lr_patience
        )
    if config.lr_schedule == "cosine":
        warmup, decay = config.warmup_epochs, max(1, config.max_epochs - config.warmup_epochs)

        def factor(epoch: int) -> float:  # BatchNorm statistics settle during the ramp before the full rate
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / decay))

        return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    return None


def random_states() -> dict[str, Any]:
    """The global random generators' states (dropout, augmentation drawn from torch/NumPy/Python), so a
    resumed run draws what the uninterrupted one would have drawn."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def fit(
    module: nn.Module,
    train_inputs: torch.Tensor,
    train_targets: torch.Tensor,
    task: FitTask,
    config: FitConfig,
    checkpoint_path: Path | None = None,
    run_fingerprint: str = "",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train the trainable parameters of `module` on (inputs, targets) and leave it holding the weights
    of the best epoch by `task.monitor`.

    With `checkpoint_path`, the state is saved after every epoch and a matching checkpoint is resumed,
    so a killed run continues where it stopped and ends with the same weights as an uninterrupted one
    (on CPU). Inside a torch.distributed process group this is one rank of a DDP job (module docstring):
    `config.batch_size` is per process, and all ranks end with the same weights.
    """
    ranks = Ranks.current()
    device = resolve_device(config.device)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)  # one GPU per process
    module.to(device)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("module has no trainable parameters")
    if len(train_inputs) == 0:
        raise ValueError("need training data (got none)")
    if len(train_inputs) < ranks.world_size:
        raise ValueError(
            f"{ranks.world_size} processes need at least as many training samples (got {len(train_inputs)})"
        )
    # DDP wraps the forward/backward only: it averages gradients during backward and, on creation,
    # copies rank 0's weights to every rank. Everything else (validation, checkpoints) uses `module`.
    network: nn.Module = module
    if ranks.distributed:
        network = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = _optimiser(parameters, config)
    scheduler = _scheduler(optimiser, config, task.mode)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    shuffler = torch.Generator().manual_seed(config.seed)
    result = FitResult(task.monitor, best_value=task.worst)
    best_state = copy.deepcopy(module.state_dict())
    bad_epochs, start_epoch = 0, 1
    # What shapes the weights: not num_workers (same batches), but the world size and whether AMP ran.
    settings = {**asdict(config), "amp": use_amp, "task": type(task).__name__, **task.settings()}
    del settings["num_workers"]
    if ranks.distributed:
        settings["world_size"] = ranks.world_size
    tag = fingerprint(
        run_fingerprint,
        settings,
        device.type,
        content_digest(train_inputs, train_targets, *module.state_dict().values()),
    )

    # Loaded on the CPU: the shuffler's state must stay a CPU tensor; load_state_dict moves the rest.
    state = read_resumable_checkpoint(checkpoint_path, tag)
    if state is not None:
        module.load_state_dict(state["module"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the scaler was off (CPU, or amp: false)
            scaler.load_state_dict(state["scaler"])
        shuffler.set_state(state["shuffler"])
        restore_random_states(state["random"])
        best_state, bad_epochs, start_epoch = state["best_state"], state["bad_epochs"], state["epoch"] + 1
        result.history = list(state["history"])
        result.best_epoch, result.best_value = state["best_epoch"], state["best_value"]
        result.stopped_early, result.resumed_from_epoch = state["stopped_early"], state["epoch"]
        if state["finished"]:
            start_epoch = config.max_epochs + 1
    if ranks.distributed:
        # A rank that did not see rank 0's checkpoint (a folder not shared between machines) would run a
        # different number of epochs and leave the others waiting in a collective: fail loudly instead.
        main_start = int(broadcast_from_main([float(start_epoch)], device)[0])
        if main_start != start_epoch:
            raise RuntimeError(
                f"rank {ranks.rank} would start at epoch {start_epoch} but rank 0 at {main_start}: "
                f"every rank must read the same checkpoint ({checkpoint_path})"
            )

    pin = device.type == "cuda"
    loader: DataLoader | None = None
    if config.num_workers > 0:
        # batch_size=None: each sampler item is a whole index batch, gathered by TensorDataset's fancy
        # indexing in a worker. Its own generator keeps the global torch RNG untouched.
        loader = DataLoader(
            TensorDataset(train_inputs, train_targets),
            sampler=_EpochBatches(),
            batch_size=None,
            num_workers=config.num_workers,
            pin_memory=pin,
            persistent_workers=True,
            generator=torch.Generator().manual_seed(config.seed),
        )
    epochs = tqdm(
        range(start_epoch, config.max_epochs + 1),
        desc=desc,
        unit="epoch",
        disable=not (progress and ranks.is_main),
        leave=False,
    )
    for epoch in epochs:
        started = time.perf_counter()
        network.train()
        # The same permutation on every rank (same seed, same draws); each trains on its own share.
        order = rank_shard(torch.randperm(len(train_inputs), generator=shuffler), ranks.rank, ranks.world_size)
        batch_indices = [order[start : start + config.batch_size] for start in range(0, len(order), config.batch_size)]
        if loader is not None:
            loader.sampler.batches = batch_indices
            batches = iter(loader)
        else:
            batches = ((train_inputs[index], train_targets[index]) for index in batch_indices)
        loss_sum = 0.0
        for batch, target in batches:
            batch, target = task.augment(batch, target, shuffler)
            if pin and loader is None:
                batch, target = batch.pin_memory(), target.pin_memory()
            with torch.autocast(device.type, enabled=use_amp):
                predicted = network(batch.to(device, non_blocking=pin))
            # The loss in float32 even under autocast: offsets of a few thousandths of a mouth width.
            loss = task.loss(predicted.float(), target.to(device, non_blocking=pin))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            loss_sum += loss.item() * len(batch)
        train_loss = loss_sum / len(order)
        if ranks.distributed:
            # Buffers (BatchNorm running statistics) are updated rank by rank: take rank 0's, as DDP does
            # before each forward, so every rank validates and keeps the same model.
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
            loss_total, count_total = sum_over_ranks([loss_sum, float(len(order))], device)
            train_loss = loss_total / count_total
        figures = task.validate(module, device)
        if ranks.distributed:
            figures = dict(zip(figures, broadcast_from_main(list(figures.values()), device)))
        value = figures[task.monitor]
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            **figures,
            "lr": optimiser.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        result.history.append(record)
        if task.better(value, result.best_value):
            result.best_value, result.best_epoch, bad_epochs = value, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad_epochs += 1
        stop = bad_epochs >= config.patience and not config.keep_last
        finished = stop or epoch == config.max_epochs
        result.stopped_early = stop
        epochs.set_postfix({"loss": f"{train_loss:.4f}", task.monitor: f"{value:.4f}"})
        if on_epoch is not None and ranks.is_main:
            on_epoch(record)
        if checkpoint_path is not None and ranks.is_main:  # the other ranks hold the same state
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": tag,
                    "epoch": epoch,
                    "module": module.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "shuffler": shuffler.get_state(),
                    "random": random_states(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict(),
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_value": result.best_value,
                    "stopped_early": result.stopped_early,
                    "finished": finished,
                },
            )
        if finished:
            break
    if not config.keep_last:
        module.load_state_dict(best_state)
    return result
