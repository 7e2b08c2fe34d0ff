"""The model folder's metadata without torch: its file names, schema, errors and reader. What
`lipseg predict` needs to run a folder's ONNX export (lipseg.core.model_folder saves and loads the weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lipseg import __version__

SCHEMA = "lipseg-model/2"
# Earlier folders: one schema per family, the segmenter's metadata in a file of its own.
LEGACY_SCHEMAS = {"lipseg-tcnn/1": "tcnn", "lipseg-segmenter/1": "segmenter"}
WEIGHTS_FILE = "model.safetensors"
META_FILE = "lipseg_model.json"
LEGACY_META_FILES = ("lipseg_segmenter.json",)
GEOMETRY_KEYS = ("size", "margin")  # lipseg.data.geometry.CropGeometry's fields


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
    # ValueError: besides bad JSON and bad UTF-8, an integer of more digits than Python converts;
    # RecursionError: arrays nested deeper than the parser recurses.
    except (OSError, ValueError, RecursionError) as error:
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
    if (problem := _geometry_problem(meta["geometry"], meta["config"].get("input_size"))) is not None:
        raise ModelFolderError(f"{meta_path}: {problem}")
    return meta


def _geometry_problem(geometry: dict[str, Any], input_size: Any) -> str | None:
    """What is wrong with a folder's crop geometry, or None. Checked here, where every loader and both engines
    pass: a bad size is no error until a face is cropped, and then it stops the whole run (or the network
    quietly sees crops of a size it was never trained on)."""
    if sorted(geometry) != sorted(GEOMETRY_KEYS):
        return f"the 'geometry' entry has {sorted(geometry)}, expected {list(GEOMETRY_KEYS)}"
    size, margin = geometry["size"], geometry["margin"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return f"geometry.size must be a positive integer (the crop side in pixels), got {size!r}"
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin < math.inf:
        return f"geometry.margin must be a finite number >= 0, got {margin!r}"
    if input_size is not None and size != input_size:
        return f"geometry.size {size} is not config.input_size {input_size!r}, the crop side the network takes"
    return None
