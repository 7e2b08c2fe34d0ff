"""The model folder's metadata without torch: its file names, schema, errors and reader. What
`lipseg predict` needs to run a folder's ONNX export (lipseg.core.model_folder saves and loads the weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lipseg import __version__

SCHEMA = "lipseg-model/2"
# Earlier folders: one schema per family, the segmenter's metadata in a file of its own.
LEGACY_SCHEMAS = {"lipseg-tcnn/1": "tcnn", "lipseg-segmenter/1": "segmenter"}
WEIGHTS_FILE = "model.safetensors"
META_FILE = "lipseg_model.json"
LEGACY_META_FILES = ("lipseg_segmenter.json",)


class ModelFolderError(RuntimeError):
    """A model folder that is missing, incomplete, damaged, of an unknown schema or of another family;
    the message names the folder (or file) and the problem."""


def read_model_meta(folder: Path) -> dict[str, Any]:
    """The folder's metadata, checked to be a known schema; `family` is filled in for legacy folders."""
    folder = Path(folder)
    meta_path = next((folder / name for name in (META_FILE, *LEGACY_META_FILES) if (folder / name).is_file()), None)
    if meta_path is None:
        reason = "no such folder" if not folder.is_dir() else f"no {META_FILE}"
        raise ModelFolderError(f"{folder} is not a lipseg model folder ({reason})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{meta_path}: not readable JSON ({error})") from None
    if not isinstance(meta, dict):
        raise ModelFolderError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    schema = meta.get("schema")
    if schema in LEGACY_SCHEMAS:
        meta["family"] = LEGACY_SCHEMAS[schema]
    elif schema != SCHEMA:
        raise ModelFolderError(
            f"{meta_path}: unknown model schema {schema!r}; this lipseg ({__version__}) reads "
            f"{(SCHEMA, *LEGACY_SCHEMAS)}"
        )
    for key in ("config", "geometry"):
        if not isinstance(meta.get(key), dict):
            raise ModelFolderError(f"{meta_path}: the {key!r} entry is missing or not an object")
    return meta
