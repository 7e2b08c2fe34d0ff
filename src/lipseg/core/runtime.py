"""The compute a run gets: the one place seeds and determinism are set, the device and the thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and torch (the seed comes from params) and ask for deterministic kernels."""
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


def set_threads(threads: int) -> None:
    """torch CPU threads; 0 keeps torch's own choice (all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)
