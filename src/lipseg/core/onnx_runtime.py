"""onnxruntime sessions for the exported graphs, and where a model folder's export is found: shipped
inside the folder (`onnx/`), or made once per weights file and cached by its hash (and made again when
onnxruntime cannot load it). Nothing here imports torch: `lipseg predict` on the ONNX engine starts without
it (torch is imported only to export)."""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lipseg.core.files import atomic_directory
from lipseg.core.model_meta import WEIGHTS_FILE, ModelFolderError

SHIPPED_FOLDER = "onnx"  # a model folder's own export, e.g. the release model's


class OnnxError(RuntimeError):
    """ONNX cannot run here (a missing package), or an export disagrees with torch."""


class OnnxLoadError(OnnxError):
    """An exported file that onnxruntime cannot load (truncated, overwritten, not ONNX at all)."""


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
    options = session_options(threads)
    try:
        return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own errors (InvalidProtobuf, Fail, ...) derive from Exception
        where = model if isinstance(model, str) else "an exported graph"
        raise OnnxLoadError(f"{where}: onnxruntime cannot load it ({error})") from error


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


def _made_from(sidecar: Path, digest: str) -> bool:
    """Whether the export whose sidecar this is was made from the weights of sha256 `digest`."""
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("weights_sha256") == digest
    except (OSError, ValueError, RecursionError, AttributeError):  # unreadable, or not a JSON object
        return False


def _exports(model_folder: Path, sidecar: str) -> tuple[list[Path], Path]:
    """(the finished exports of the folder's weights, best first: the folder's own, then the cache entry
    for their hash; where that cache entry is)."""
    digest = weights_digest(model_folder)
    shipped, cache = model_folder / SHIPPED_FOLDER, onnx_cache_dir() / digest[:20]
    found = [shipped] if _made_from(shipped / sidecar, digest) else []
    return found + ([cache] if (cache / sidecar).is_file() else []), cache


def _export_into(cache: Path, model_folder: Path, export: Callable[[Path, Path], Any]) -> Path:
    """`export(model_folder, folder)` staged beside `cache` and swapped in whole, so that no reader finds
    half an export and a damaged entry is replaced; in a temp folder when the cache is not writable."""
    try:
        with atomic_directory(cache) as staging:
            export(model_folder, staging)
        return cache
    except PermissionError:  # a read-only home: export for this process only
        private = Path(tempfile.mkdtemp(prefix="lipseg-onnx-"))
        export(model_folder, private)
        return private


def export_for(model_folder: Path, sidecar: str, export: Callable[[Path, Path], Any]) -> Path:
    """The folder holding `model_folder`'s ONNX export (its `sidecar` file written last): the folder's own
    `onnx/` when it was made from these very weights, else the cache entry for their hash, made by
    `export(model_folder, out_dir)` on first use (in a temp folder when the cache is not writable)."""
    found, cache = _exports(Path(model_folder), sidecar)
    return found[0] if found else _export_into(cache, Path(model_folder), export)


def export_session(
    model_folder: Path, sidecar: str, graph: str, export: Callable[[Path, Path], Any], threads: int = 1
) -> Any:
    """An onnxruntime session on the `graph` file of `model_folder`'s export (as export_for finds it).
    An export that onnxruntime cannot load would fail the same way on every run, so it is passed over
    with a warning on stderr: a damaged shipped export for the cache's, a damaged cache entry for one made
    afresh, once; OnnxLoadError when even that one cannot be loaded."""
    model_folder = Path(model_folder)
    found, cache = _exports(model_folder, sidecar)
    for folder in found:
        try:
            return onnx_session(folder / graph, threads)
        except (OnnxLoadError, FileNotFoundError) as error:
            print(f"lipseg: warning: passing over a damaged ONNX export: {error}", file=sys.stderr)
    fresh = _export_into(cache, model_folder, export)
    try:
        return onnx_session(fresh / graph, threads)
    except (OnnxLoadError, FileNotFoundError) as error:
        raise OnnxLoadError(f"{error}; it was exported afresh from {model_folder}") from error
