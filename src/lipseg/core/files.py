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


def umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which
    would race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: mkstemp's 0600 would hide outputs from
    the user's group where their umask shares them."""
    return 0o666 & ~umask()


def _temp_sibling(path: Path, suffix: str) -> tuple[int, str]:
    """(fd, name) of a new hidden file beside `path`: same folder, so the final os.replace is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)


def _replace_from_temp(path: Path, write: Any, suffix: str = "") -> None:
    fd, tmp_name = _temp_sibling(path, suffix + ".tmp")
    try:
        os.fchmod(fd, file_mode())
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
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would outlive the rename
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_files(*paths: Path) -> Iterator[list[Path]]:
    """Temporary siblings of `paths` (same suffix, so writers that pick a container by it still do) for a
    writer that cannot hand over its bytes, such as a video encoder. When the block succeeds they are
    renamed into place together; when it fails or is interrupted they are removed, so a final name only
    ever holds a complete file."""
    staged = []
    try:
        for path in map(Path, paths):
            fd, name = _temp_sibling(path, ".tmp" + path.suffix)
            os.close(fd)
            staged.append(Path(name))
        yield staged
        for tmp, path in zip(staged, paths):
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
    except BaseException:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
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
