"""onnxruntime sessions for the exported graphs, and where a model folder's export is found: shipped
inside the folder (`onnx/`), or made once per weights file and cached by its hash. Nothing here imports
torch: `lipseg predict` on the ONNX engine starts without it (torch is imported only to export)."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lipseg.core.model_meta import WEIGHTS_FILE, ModelFolderError

SHIPPED_FOLDER = "onnx"  # a model folder's own export, e.g. the release model's


class OnnxError(RuntimeError):
    """ONNX cannot run here (a missing package), or an export disagrees with torch."""


def require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise OnnxError(
            f"the ONNX engine needs the 'onnxruntime' package ({error}); install it with: "
            "pip install onnxruntime==1.31.1 (or use --engine torch)"
        ) from error
    return onnxruntime


def session_options(threads: int) -> Any:
    onnxruntime = require_onnxruntime()
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


def session_from(model: bytes | str, threads: int) -> Any:
    onnxruntime = require_onnxruntime()
    return onnxruntime.InferenceSession(
        model, sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def onnx_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU InferenceSession for an exported file, with intra/inter-op threads = `threads`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    return session_from(str(path), threads)


def time_onnx(path: Path, crops_float: np.ndarray, repeats: int, threads: int = 1) -> float:
    """Milliseconds per crop for onnxruntime on one batch `crops_float` (B, 3, S, S) float32 in [0, 255].

    One untimed warm-up run, then `repeats` timed runs of the whole batch; the median run time
    divided by the batch size.
    """
    crops = np.ascontiguousarray(crops_float, dtype=np.float32)
    if crops.ndim != 4 or len(crops) == 0:
        raise ValueError(f"crops must be a non-empty (B, C, S, S) array, got shape {crops.shape}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    session = onnx_session(path, threads)
    feed = {session.get_inputs()[0].name: crops}
    session.run(None, feed)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000.0 / len(crops)


def onnx_cache_dir() -> Path:
    return Path(os.environ.get("LIPSEG_CACHE") or Path.home() / ".cache" / "lipseg") / "onnx"


def weights_digest(model_folder: Path) -> str:
    """sha256 of the folder's weights file: an export belongs to exactly these weights."""
    weights = Path(model_folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFolderError(f"{model_folder}: {WEIGHTS_FILE} is missing")
    return hashlib.sha256(weights.read_bytes()).hexdigest()


def export_for(model_folder: Path, sidecar: str, export: Callable[[Path, Path], Any]) -> Path:
    """The folder holding `model_folder`'s ONNX export (its `sidecar` file written last): the folder's own
    `onnx/` when it was made from these very weights, else the cache entry for their hash, made by
    `export(model_folder, out_dir)` on first use (in a temp folder when the cache is not writable)."""
    model_folder = Path(model_folder)
    digest = weights_digest(model_folder)
    shipped = model_folder / SHIPPED_FOLDER
    if (shipped / sidecar).is_file():
        recorded = json.loads((shipped / sidecar).read_text(encoding="utf-8")).get("weights_sha256")
        if recorded == digest:
            return shipped
    cache = onnx_cache_dir() / digest[:20]
    if not (cache / sidecar).is_file():
        try:
            export(model_folder, cache)
        except PermissionError:  # a read-only home: export for this process only
            cache = Path(tempfile.mkdtemp(prefix="lipseg-onnx-"))
            export(model_folder, cache)
    return cache
