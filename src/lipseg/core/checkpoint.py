"""Training checkpoints without pickle: a nested state (dicts, lists, numbers, strings and tensors, as in
`optimizer.state_dict()`) goes into one safetensors file. The tensors are its tensors; everything else
is a JSON skeleton in the file's metadata, where each tensor is a `{"__tensor__": key}` placeholder.

`torch.save` writes a pickle stream that only `weights_only=True` keeps from running code; this format
has no code path at all, so a checkpoint from anywhere can be opened safely. Dicts are stored as
key/value pairs so integer keys (optimizer state is keyed by parameter index) come back as integers,
and floats go through JSON's repr round trip, so a resumed run sees bit-identical state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

log = logging.getLogger(__name__)

SKELETON_KEY = "lipseg.checkpoint"
FORMAT = "lipseg-checkpoint-1"


class CheckpointError(ValueError):
    """A file that is not a lipseg checkpoint, or whose skeleton does not match its tensors."""


def _split(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON skeleton of `value`, moving every tensor into `tensors` under a fresh key."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        # safetensors stores dense, contiguous, CPU tensors that share no memory with each other.
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_split(key, tensors), _split(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_split(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_split(item, tensors) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot store {type(value).__name__} in a checkpoint (only dicts, lists, tuples, numbers, strings, tensors)"
    )


def _join(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            try:
                return tensors[skeleton["__tensor__"]]
            except KeyError as error:
                raise CheckpointError(f"checkpoint skeleton names a missing tensor {error}") from error
        if "__dict__" in skeleton:
            return {_join(key, tensors): _join(item, tensors) for key, item in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(_join(item, tensors) for item in skeleton["__tuple__"])
        raise CheckpointError(f"unknown checkpoint skeleton node {sorted(skeleton)}")
    if isinstance(skeleton, list):
        return [_join(item, tensors) for item in skeleton]
    return skeleton


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically: a kill mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, tensors)
    metadata = {"format": FORMAT, SKELETON_KEY: json.dumps(skeleton, allow_nan=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state `save_checkpoint` wrote, with every tensor on the CPU."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from error
    if metadata.get("format") != FORMAT or SKELETON_KEY not in metadata:
        raise CheckpointError(
            f"{path} is not a lipseg checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        state = _join(json.loads(metadata[SKELETON_KEY]), tensors)
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # a damaged or hand-made skeleton
        raise CheckpointError(f"{path} has a damaged checkpoint skeleton: {error}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a dict")
    return state


def fingerprint(*parts: object) -> str:
    """A short hash of what a checkpoint belongs to, so a stale one is never resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def content_digest(*arrays: np.ndarray | torch.Tensor) -> str:
    """sha256 of the arrays' bytes: a checkpoint is resumed only for the very data and starting weights
    it was made from (new crops of the same shape, or a new base model under the heads, start afresh)."""
    digest = hashlib.sha256()
    for array in arrays:
        data = (
            array.detach().cpu().contiguous().numpy()
            if isinstance(array, torch.Tensor)
            else np.ascontiguousarray(array)
        )
        digest.update(str((data.dtype, data.shape)).encode())
        digest.update(data.tobytes())
    return digest.hexdigest()[:16]


def read_resumable_checkpoint(path: Path | None, tag: str) -> dict[str, Any] | None:
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
