"""Training loops: early stopping, a checkpoint every epoch, resume after a kill. No MLflow here:
callers pass `on_epoch` to log wherever they like."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lipseg.model import LOSSES, mouth_normalised_error, mouth_normalised_mse


def set_determinism(seed: int) -> None:
    """The one place seeds are set: Python, NumPy and torch, with deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present and the CPU otherwise; an explicit 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


@dataclass
class FitConfig:
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 8
    weight_decay: float = 0.0
    lr_schedule: str = "plateau"  # plateau (scale by lr_factor after lr_patience bad epochs) | cosine | none
    lr_patience: int = 0
    lr_factor: float = 0.5
    loss: str = "mse"  # mse | wing
    seed: int = 0
    device: str = "auto"


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_nme: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_nme: float = float("inf")
    stopped_early: bool = False
    resumed_from_epoch: int = 0


def fingerprint(*parts: object) -> str:
    """A short hash of what a checkpoint belongs to, so a stale one is never resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_digest(*arrays: np.ndarray | torch.Tensor) -> str:
    """sha256 of the arrays' bytes: a checkpoint is resumed only for the very data and starting weights
    it was made from (new crops of the same shape, or a new base model under the heads, start afresh)."""
    digest = hashlib.sha256()
    for array in arrays:
        data = array.detach().cpu().contiguous().numpy() if isinstance(array, torch.Tensor) else np.ascontiguousarray(array)
        digest.update(str((data.dtype, data.shape)).encode())
        digest.update(data.tobytes())
    return digest.hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _evaluate(module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, float]:
    module.eval()
    loss_sum, nme_sum = 0.0, 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(device)
            target = targets[start : start + batch_size].to(device)
            predicted = module(batch)
            loss_sum += float(mouth_normalised_mse(predicted, target)) * len(batch)
            nme_sum += float(mouth_normalised_error(predicted, target).sum())
    return loss_sum / len(inputs), nme_sum / len(inputs)


def fit(
    module: nn.Module,
    train_inputs: torch.Tensor,
    train_targets: torch.Tensor,
    val_inputs: torch.Tensor,
    val_targets: torch.Tensor,
    config: FitConfig,
    checkpoint_path: Path | None = None,
    run_fingerprint: str = "",
    on_epoch: Callable[[EpochRecord], None] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> FitResult:
    """Train the trainable parameters of `module` (inputs -> (B, 56, 2)) with Adam and early stopping.

    Leaves `module` holding the best weights by validation NME. With `checkpoint_path`, the state is
    saved after every epoch and a matching checkpoint is resumed, so a killed run continues where it
    stopped and ends with the same weights as an uninterrupted one (on CPU).
    """
    device = resolve_device(config.device)
    module.to(device)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("module has no trainable parameters")
    if len(train_inputs) == 0 or len(val_inputs) == 0:
        raise ValueError(f"need training and validation data (got {len(train_inputs)} and {len(val_inputs)})")
    optimiser = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.loss not in LOSSES:
        raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {config.loss!r}")
    loss_function = LOSSES[config.loss]
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
    if config.lr_schedule == "plateau" and config.lr_patience > 0:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, mode="min", factor=config.lr_factor, patience=config.lr_patience)
    elif config.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.max_epochs)
    elif config.lr_schedule not in ("plateau", "none"):
        raise ValueError(f"lr_schedule must be plateau, cosine or none, got {config.lr_schedule!r}")
    shuffler = torch.Generator().manual_seed(config.seed)
    result = FitResult()
    best_state = copy.deepcopy(module.state_dict())
    bad_epochs, start_epoch = 0, 1
    tag = fingerprint(run_fingerprint, asdict(config), device.type,
                      content_digest(train_inputs, train_targets, val_inputs, val_targets, *module.state_dict().values()))

    if checkpoint_path is not None and checkpoint_path.is_file():
        # On the CPU first: the shuffler's state must stay a CPU tensor; load_state_dict moves the rest.
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == tag:
            module.load_state_dict(state["module"])
            optimiser.load_state_dict(state["optimiser"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            shuffler.set_state(state["shuffler"])
            best_state = state["best_state"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            result.history = [EpochRecord(**record) for record in state["history"]]
            result.best_epoch, result.best_val_nme = state["best_epoch"], state["best_val_nme"]
            result.stopped_early = state["stopped_early"]
            result.resumed_from_epoch = state["epoch"]
            if state["finished"]:
                start_epoch = config.max_epochs + 1

    pin = device.type == "cuda"
    epochs = tqdm(range(start_epoch, config.max_epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in epochs:
        started = time.perf_counter()
        module.train()
        order = torch.randperm(len(train_inputs), generator=shuffler)
        loss_sum = 0.0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = train_inputs[index]
            target = train_targets[index]
            if pin:
                batch, target = batch.pin_memory(), target.pin_memory()
            predicted = module(batch.to(device, non_blocking=pin))
            loss = loss_function(predicted, target.to(device, non_blocking=pin))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            loss_sum += loss.item() * len(index)
        val_loss, val_nme = _evaluate(module, val_inputs, val_targets, max(config.batch_size, 256), device)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_nme)
        elif scheduler is not None:
            scheduler.step()
        record = EpochRecord(epoch, loss_sum / len(order), val_loss, val_nme, optimiser.param_groups[0]["lr"], time.perf_counter() - started)
        result.history.append(record)
        if val_nme < result.best_val_nme:
            result.best_val_nme, result.best_epoch, bad_epochs = val_nme, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad_epochs += 1
        finished = bad_epochs >= config.patience or epoch == config.max_epochs
        result.stopped_early = bad_epochs >= config.patience
        epochs.set_postfix(loss=f"{record.train_loss:.4f}", val_nme=f"{val_nme:.4f}")
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint_path is not None:
            _save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": tag, "epoch": epoch, "module": module.state_dict(),
                    "optimiser": optimiser.state_dict(), "shuffler": shuffler.get_state(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "best_state": best_state, "bad_epochs": bad_epochs,
                    "history": [asdict(item) for item in result.history],
                    "best_epoch": result.best_epoch, "best_val_nme": result.best_val_nme,
                    "stopped_early": result.stopped_early, "finished": finished,
                },
            )
        if finished:
            break
    module.load_state_dict(best_state)
    return result
