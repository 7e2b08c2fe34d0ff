"""The download stage's one entry point: materialise `params.data` as a Helen-layout folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lipseg.datasets.helen import DatasetError

SOURCES = ("synthetic", "helen", "url")
HELEN_ITEMS = ("images", "annotation", "trainnames.txt", "testnames.txt")


def copy_helen_folder(source: Path, out_dir: Path) -> dict[str, int]:
    """Copy the Helen layout (and nothing else) from a local folder; the source stays untouched."""
    source = Path(source)
    if not source.is_dir():
        raise DatasetError(f"data.helen_path: folder not found: {source}")
    missing = [item for item in HELEN_ITEMS if not (source / item).exists()]
    if missing:
        raise DatasetError(f"{source} is not in the Helen layout; missing: {', '.join(missing)}")
    for item in HELEN_ITEMS:
        if (source / item).is_dir():
            shutil.copytree(source / item, out_dir / item)
        else:
            shutil.copy2(source / item, out_dir / item)
    return {
        "images": sum(1 for _ in (out_dir / "images").iterdir()),
        "annotations": sum(1 for _ in (out_dir / "annotation").glob("*.txt")),
    }


def materialise(params: dict[str, Any], out_dir: Path, cache_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write the dataset described by the `data` params section into `out_dir` (which exists, empty)."""
    source = params.get("source")
    if source == "synthetic":
        from lipseg.datasets.synthetic import generate_synthetic_dataset

        synthetic = params["synthetic"]
        summary = generate_synthetic_dataset(
            out_dir, n_train=int(synthetic["n_train"]), n_test=int(synthetic["n_test"]),
            image_size=int(synthetic["image_size"]), seed=int(params["seed"]), progress=progress,
        )
    elif source == "helen":
        summary = copy_helen_folder(Path(params["helen_path"]), out_dir)
    elif source == "url":
        from lipseg.datasets.download import RemoteFile, fetch_dataset

        entries = params.get("urls") or []
        if not entries:
            raise DatasetError("data.source is 'url' but data.urls is empty; list {url, sha256} items")
        files = [RemoteFile(url=item["url"], sha256=item["sha256"], filename=item.get("filename")) for item in entries]
        summary = fetch_dataset(files, out_dir, cache_dir, progress=progress)
    else:
        raise DatasetError(f"data.source must be one of {SOURCES}, got {source!r}")
    return {"source": source, **summary}
