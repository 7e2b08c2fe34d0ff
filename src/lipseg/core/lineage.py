"""Which data a pipeline stage consumes, named by DVC's own digests, so a run says exactly what it used.

A stage's data inputs are its dvc.yaml deps outside stages/ and src/. Their digests come from dvc.lock:
DVC writes each stage's entry as soon as that stage finishes, so when a stage starts, the upstream
stage's `outs` entry holds the md5 DVC recorded for the very folder or file this stage reads (the same
value DVC then writes into this stage's own `deps` entry). A path no upstream entry names (a stage run
by hand, outside `dvc repro`) gets a sha256 of its files instead, marked as such.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

SOURCE_FOLDERS = ("stages/", "src/")


@dataclass(frozen=True)
class DataInput:
    path: str  # relative to the project root, as dvc.yaml names it
    digest: str  # DVC's md5 (".dir" for a folder), or a sha256 prefix
    digest_from: str  # e.g. "dvc.lock: outs of crop", or "sha256 of the files (no dvc.lock entry)"


def _yaml(path: Path) -> dict:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def data_deps(root: Path, stage: str) -> list[str]:
    """The data paths stage `stage` (a matrix member such as train_segmenter@unet too) lists in dvc.yaml."""
    name, _, member = stage.partition("@")
    spec = (_yaml(root / "dvc.yaml").get("stages") or {}).get(name) or {}
    paths = []
    for dep in spec.get("deps") or []:
        path = dep if isinstance(dep, str) else next(iter(dep), "")
        for key in spec.get("matrix") or {}:
            path = path.replace(f"${{item.{key}}}", member)
        if path and not path.startswith(SOURCE_FOLDERS):
            paths.append(path)
    return paths


def recorded_outs(root: Path) -> dict[str, tuple[str, str]]:
    """{path: (md5, stage)} of every stage output dvc.lock records."""
    found = {}
    for stage, entry in (_yaml(root / "dvc.lock").get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                found[str(out["path"])] = (str(out["md5"]), stage)
    return found


def files_digest(path: Path) -> str:
    """sha256 over the relative names and sha256s of the files under `path` (or of the file), 32 hex."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(item for item in path.rglob("*") if item.is_file())
    for item in files:
        content = hashlib.sha256()
        with item.open("rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                content.update(block)
        name = item.relative_to(path) if item != path else item.name
        digest.update(f"{name}\0{content.hexdigest()}\n".encode())
    return digest.hexdigest()[:32]


def data_input(root: Path, path: str, outs: dict[str, tuple[str, str]] | None = None) -> DataInput | None:
    """`path` with its digest (see the module docstring); None when it does not exist."""
    outs = recorded_outs(root) if outs is None else outs
    if path in outs:
        md5, producer = outs[path]
        return DataInput(path, md5, f"dvc.lock: outs of {producer}")
    if (root / path).exists():
        return DataInput(path, files_digest(root / path), "sha256 of the files (no dvc.lock entry)")
    return None


def stage_inputs(root: Path, stage: str) -> list[DataInput]:
    """The data inputs of `stage` that exist, with their digests."""
    outs = recorded_outs(root)
    return [found for path in data_deps(root, stage) if (found := data_input(root, path, outs)) is not None]


def validation_digest(root: Path, raw: str, names: list[str]) -> str:
    """Which validation photos a figure was measured on: the digest of the raw data (photos and annotations)
    and the names held out for validation. Two figures compare only when this digest is the same."""
    found = data_input(root, raw)
    text = (found.digest if found else "") + "\n" + "\n".join(sorted(map(str, names)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
