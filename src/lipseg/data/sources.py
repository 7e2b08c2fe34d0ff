"""The download stage's one entry point: materialise `params.data` as a Helen-layout folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lipseg.core.params import Section, param, seed_param
from lipseg.data.rejects import DatasetError

HELEN_ITEMS = ("images", "annotation", "trainnames.txt", "testnames.txt")


@dataclass(frozen=True)
class SyntheticParams(Section):
    n_train: int = param(400, low=1)
    n_test: int = param(150, low=1)
    image_size: int = param(256, low=64)


@dataclass(frozen=True)
class DataParams(Section):
    """The `data` params section: which dataset the `download` stage materialises."""

    source: Literal["synthetic", "helen", "url"] = "synthetic"
    seed: int = seed_param()
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    helen_path: str = "../shared/data/helen_sample"  # source: helen
    urls: list[dict[str, str]] = param([])  # source: url; items {url, sha256[, filename]}


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


def materialise(params: DataParams, out_dir: Path, cache_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Write the dataset the `data` params describe into `out_dir` (which exists, empty)."""
    if params.source == "synthetic":
        from lipseg.data.synthetic import generate_synthetic_dataset

        synthetic = params.synthetic
        summary = generate_synthetic_dataset(
            out_dir,
            n_train=synthetic.n_train,
            n_test=synthetic.n_test,
            image_size=synthetic.image_size,
            seed=params.seed,
            progress=progress,
        )
    elif params.source == "helen":
        summary = copy_helen_folder(Path(params.helen_path), out_dir)
    else:
        from lipseg.data.fetch import RemoteFile, fetch_dataset

        if not params.urls:
            raise DatasetError("data.source is 'url' but data.urls is empty; list {url, sha256} items")
        files = []
        for index, item in enumerate(params.urls):
            unknown = set(item) - {"url", "sha256", "filename"}
            if unknown or not {"url", "sha256"} <= set(item):
                raise DatasetError(
                    f"data.urls[{index}] must have url and sha256 (and optionally filename), got {sorted(item)}"
                )
            files.append(RemoteFile(url=item["url"], sha256=item["sha256"], filename=item.get("filename")))
        summary = fetch_dataset(files, out_dir, cache_dir, progress=progress)
    return {"source": params.source, **summary, "digest": folder_digest(out_dir)}


DATASET_FILE = "dataset.json"  # what the download stage wrote: source and content digest, read by the crop stage


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: what exactly a model was trained on."""
    import hashlib

    from lipseg.core.files import sha256_file

    digest = hashlib.sha256()
    for path in sorted(item for item in Path(folder).rglob("*") if item.is_file() and item.name != DATASET_FILE):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def describe_dataset(folder: Path) -> dict[str, Any]:
    """What the download stage recorded about a dataset folder (source, digest, counts); a folder made by
    hand has no record, and is described as of unknown source with its digest taken now."""
    import json

    record = Path(folder) / DATASET_FILE
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    return {"source": "unknown", "digest": folder_digest(folder)}
