"""Joining a multi-process (DDP) training job: the process group, and the re-launch under torchrun.

DVC runs a stage as `python stages/<stage>.py`. A stage whose params ask for N > 1 processes re-runs
itself as `python -m torch.distributed.run --standalone --nproc_per_node N stages/<stage>.py`, so
`dvc repro` needs no edit of dvc.yaml; torchrun then starts N copies with RANK, LOCAL_RANK and
WORLD_SIZE set, and each joins the process group here. The training loop's share of the work (rank
sharding, gradient averaging, rank-0-only checkpoints) is in lipseg.core.fit.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from lipseg.core.runtime import resolve_device


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
    cutting the permutation to a multiple of `world_size` (at most world_size - 1 samples sit out an
    epoch, different ones each epoch). Equal shares give every rank the same number of steps, which
    DDP needs, and step k of all ranks together covers order[k*B*N : (k+1)*B*N]: N processes with
    batch B take the same steps as one process with batch N*B."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    if world_size == 1:
        return order
    return order[: len(order) - len(order) % world_size][rank::world_size]


def broadcast_from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's numbers on every rank: decisions taken from them (best epoch, early stop, learning
    rate) then agree even if float rounding differed between ranks."""
    carrier = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(carrier, src=0)
    return carrier.tolist()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    carrier = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(carrier, op=dist.ReduceOp.SUM)
    return carrier.tolist()


def launched_by_torchrun() -> bool:
    """True inside a job of more than one process started by torchrun (or by hand with its variables)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def torchrun_command(processes: int, script: Path, *args: str) -> list[str]:
    """`python -m torch.distributed.run` rather than the `torchrun` script: the same interpreter (and
    virtual environment) as the stage, whatever is on PATH. --standalone: a one-machine rendezvous on
    a free local port, so concurrent jobs do not collide."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        str(script),
        *args,
    ]


def run_under_torchrun(processes: int, script: Path, *args: str) -> int:
    """Run `script` as `processes` ranks and return torchrun's exit status (non-zero if any rank failed;
    torchrun then stops the others)."""
    return subprocess.run(torchrun_command(processes, script, *args), check=False).returncode


def backend_for(device: torch.device) -> str:
    """nccl between GPUs, gloo between CPU processes (nccl has no CPU tensors)."""
    return "nccl" if device.type == "cuda" else "gloo"


def _die_with_parent() -> None:
    """torchrun starts each rank in a session of its own, so killing `dvc repro`'s process group (or an
    OOM kill of the launcher) would leave the ranks training and writing after DVC is gone, racing a
    rerun. On Linux, ask the kernel to SIGKILL this rank when its parent, the launcher, dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


@contextlib.contextmanager
def process_group(device_name: str = "auto") -> Iterator[Ranks]:
    """Join the torchrun job this process belongs to for the duration of the block and yield its rank;
    outside torchrun, yield rank 0 of 1 and set nothing up (the single-process path is unchanged).
    On CUDA, rank r uses cuda:LOCAL_RANK whatever `device_name` names."""
    if not launched_by_torchrun():
        yield Ranks()
        return
    _die_with_parent()
    device = resolve_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    options: dict = {}
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local_rank} needs a GPU of its own, but this machine has {torch.cuda.device_count()}"
            )
        torch.cuda.set_device(local_rank)
        options["device_id"] = torch.device("cuda", local_rank)  # binds NCCL's communicator to this GPU
    dist.init_process_group(backend=backend_for(device), **options)
    try:
        yield Ranks.current()
    finally:
        dist.destroy_process_group()
