"""Atomic file writes: a stage killed half-way leaves nothing that DVC would take as a finished output.

Every artifact is written to a temporary sibling first and moved into place with `os.replace`; a model
or report folder is staged whole and swapped in by `atomic_directory`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _replace_from_temp(path: Path, write: Any, suffix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _replace_from_temp(Path(path), lambda handle: handle.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez into memory, then an atomic replace (string arrays stay unicode, never pickled)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode {path}")
    write_bytes_atomic(path, encoded.tobytes())


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` as a whole when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def csv_text(
    rows: list[dict], fieldnames: list[str] | tuple[str, ...] | None = None, lineterminator: str = "\r\n"
) -> str:
    """CSV of a list of dicts, e.g. per-epoch training history. The header is `fieldnames`, or the first
    row's keys; give `fieldnames` when the table may be empty but must still carry its header."""
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames or rows[0]), lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def file_hash(path: Path, chunk_size: int = 1 << 20) -> tuple[hashlib._Hash, int]:
    """(sha256 hasher fed with the whole file, bytes read): a resumed download keeps feeding it."""
    hasher, count = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            hasher.update(chunk)
            count += len(chunk)
    return hasher, count


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    return file_hash(path, chunk_size)[0].hexdigest()
