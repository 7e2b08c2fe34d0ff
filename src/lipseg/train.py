"""Training loops: early stopping, a checkpoint every epoch, resume after a kill. No MLflow here:
callers pass `on_epoch` to log wherever they like.

`fit` also runs as one rank of a torch.distributed job (PyTorch DDP) when the caller has initialised a
process group (lipseg.distributed does, under torchrun): every rank draws the same seeded permutation
and trains on its own interleaved share of it, DDP averages the gradients, every rank evaluates the
whole validation split but adopts rank 0's figures (so early stopping agrees and no rank hangs), and
only rank 0 writes checkpoints or calls `on_epoch`. Without a process group nothing of this runs."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler, TensorDataset
from tqdm import tqdm

from lipseg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lipseg.model import LOSSES, mouth_normalised_error, mouth_normalised_mse

log = logging.getLogger(__name__)


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
    num_workers: int = 0  # >0: DataLoader workers gather the batches (same batches, so the same weights)
    amp: bool = False  # mixed precision (autocast + GradScaler); CUDA only, ignored on the CPU


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a torch.distributed job: rank 0 of 1 when there is none."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the GPU index on this machine

    @classmethod
    def current(cls) -> Ranks:
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def rank_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of an epoch's permutation: every `world_size`-th index from `rank` on, after
    cutting the permutation to a multiple of `world_size` (at most world_size - 1 crops sit out an
    epoch, different ones each epoch). Equal shares give every rank the same number of steps, which
    DDP needs, and step k of all ranks together covers order[k*B*N : (k+1)*B*N]: N processes with
    batch B take the same steps as one process with batch N*B."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    if world_size == 1:
        return order
    return order[: len(order) - len(order) % world_size][rank::world_size]


class _EpochBatches(Sampler[torch.Tensor]):
    """Yields the current epoch's index batches; `fit` refills it each epoch, so one DataLoader (and
    its persistent workers) serves every epoch with the batches the seeded shuffler chose."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


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


def read_resumable_checkpoint(path: Path | None, tag: str) -> dict | None:
    """The checkpoint at `path` when it belongs to this very run (same fingerprint `tag`), else None.

    A damaged or foreign file (say a torch.save checkpoint of an older lipseg) is not an error: the run
    starts from scratch and overwrites it, which is what a resume could not do better anyway.
    """
    if path is None or not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        log.warning("ignoring checkpoint %s and starting from scratch: %s", path, error)
        return None
    return state if state.get("fingerprint") == tag else None


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


def _broadcast_from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's numbers on every rank: decisions taken from them (best epoch, early stop, learning
    rate) then agree even if float rounding differed between ranks."""
    carrier = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(carrier, src=0)
    return carrier.tolist()


def _sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    carrier = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(carrier, op=dist.ReduceOp.SUM)
    return carrier.tolist()


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

    Inside an initialised torch.distributed process group this is one rank of a DDP job (module
    docstring): `config.batch_size` is per process, rank 0 alone writes the checkpoint and calls
    `on_epoch`, every rank reads a checkpoint to resume, and all ranks end with the same weights.
    """
    ranks = Ranks.current()
    device = resolve_device(config.device)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)  # one GPU per process
    module.to(device)
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("module has no trainable parameters")
    if len(train_inputs) == 0 or len(val_inputs) == 0:
        raise ValueError(f"need training and validation data (got {len(train_inputs)} and {len(val_inputs)})")
    if len(train_inputs) < ranks.world_size:
        raise ValueError(f"{ranks.world_size} processes need at least as many training samples (got {len(train_inputs)})")
    # DDP wraps the forward/backward only: it averages gradients during backward and, on creation,
    # copies rank 0's weights to every rank. Everything else (evaluation, checkpoints) uses `module`.
    network: nn.Module = module
    if ranks.distributed:
        network = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
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
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    shuffler = torch.Generator().manual_seed(config.seed)
    result = FitResult()
    best_state = copy.deepcopy(module.state_dict())
    bad_epochs, start_epoch = 0, 1
    # What shapes the weights: not num_workers (same batches), but the world size and whether AMP ran.
    settings = {**asdict(config), "amp": use_amp}
    del settings["num_workers"]
    if ranks.distributed:
        settings["world_size"] = ranks.world_size
    tag = fingerprint(run_fingerprint, settings, device.type,
                      content_digest(train_inputs, train_targets, val_inputs, val_targets, *module.state_dict().values()))

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
        best_state = state["best_state"]
        bad_epochs = state["bad_epochs"]
        start_epoch = state["epoch"] + 1
        result.history = [EpochRecord(**record) for record in state["history"]]
        result.best_epoch, result.best_val_nme = state["best_epoch"], state["best_val_nme"]
        result.stopped_early = state["stopped_early"]
        result.resumed_from_epoch = state["epoch"]
        if state["finished"]:
            start_epoch = config.max_epochs + 1
    if ranks.distributed:
        # A rank that did not see rank 0's checkpoint (a folder not shared between machines) would run a
        # different number of epochs and leave the others waiting in a collective: fail loudly instead.
        main_start = int(_broadcast_from_main([float(start_epoch)], device)[0])
        if main_start != start_epoch:
            raise RuntimeError(f"rank {ranks.rank} would start at epoch {start_epoch} but rank 0 at {main_start}: "
                               f"every rank must read the same checkpoint ({checkpoint_path})")

    pin = device.type == "cuda"
    loader: DataLoader | None = None
    if config.num_workers > 0:
        # batch_size=None: each sampler item is a whole index batch, gathered by TensorDataset's fancy
        # indexing in a worker. Its own generator keeps the global torch RNG untouched.
        loader = DataLoader(TensorDataset(train_inputs, train_targets), sampler=_EpochBatches(), batch_size=None,
                            num_workers=config.num_workers, pin_memory=pin, persistent_workers=True,
                            generator=torch.Generator().manual_seed(config.seed))
    epochs = tqdm(range(start_epoch, config.max_epochs + 1), desc=desc, unit="epoch", disable=not (progress and ranks.is_main), leave=False)
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
            if pin and loader is None:
                batch, target = batch.pin_memory(), target.pin_memory()
            with torch.autocast(device.type, enabled=use_amp):
                predicted = network(batch.to(device, non_blocking=pin))
            # The loss in float32 even under autocast: offsets of a few thousandths of a mouth width.
            loss = loss_function(predicted.float(), target.to(device, non_blocking=pin))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            loss_sum += loss.item() * len(batch)
        train_loss = loss_sum / len(order)
        if ranks.distributed:
            # Buffers (BatchNorm running statistics) are updated rank by rank: take rank 0's, as DDP does
            # before each forward, so every rank evaluates and keeps the same model.
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)
            loss_total, count_total = _sum_over_ranks([loss_sum, float(len(order))], device)
            train_loss = loss_total / count_total
        val_loss, val_nme = _evaluate(module, val_inputs, val_targets, max(config.batch_size, 256), device)
        if ranks.distributed:
            val_loss, val_nme = _broadcast_from_main([val_loss, val_nme], device)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_nme)
        elif scheduler is not None:
            scheduler.step()
        record = EpochRecord(epoch, train_loss, val_loss, val_nme, optimiser.param_groups[0]["lr"], time.perf_counter() - started)
        result.history.append(record)
        if val_nme < result.best_val_nme:
            result.best_val_nme, result.best_epoch, bad_epochs = val_nme, epoch, 0
            best_state = copy.deepcopy(module.state_dict())
        else:
            bad_epochs += 1
        finished = bad_epochs >= config.patience or epoch == config.max_epochs
        result.stopped_early = bad_epochs >= config.patience
        epochs.set_postfix(loss=f"{record.train_loss:.4f}", val_nme=f"{val_nme:.4f}")
        if on_epoch is not None and ranks.is_main:
            on_epoch(record)
        if checkpoint_path is not None and ranks.is_main:  # the other ranks hold the same state
            save_checkpoint(
                checkpoint_path,
                {
                    "fingerprint": tag, "epoch": epoch, "module": module.state_dict(),
                    "optimiser": optimiser.state_dict(), "shuffler": shuffler.get_state(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "scaler": scaler.state_dict(),
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
