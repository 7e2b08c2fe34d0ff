"""Which models `lipseg predict` uses: a model folder, an MLflow model URI, or the project's own
trained model; and the segmenter that labels the masks (`--mask-source`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lipseg.core.model_folder import META_FILE
from lipseg.core.paths import BEST_SEGMENTER, TCNN_MODEL, project_root

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class ModelNotFoundError(LookupError):
    """No model where the user pointed (or none at all); the message says what to do."""


def download_model_folder(uri: str, cache_dir: Path | None = None) -> Path:
    """The lipseg model folder inside a logged or registered MLflow model (e.g. models:/lipseg-tcnn@champion)."""
    from lipseg.core.tracking import download_artifacts

    target = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="lipseg-model-"))
    try:
        local = download_artifacts(uri, target)
    except RuntimeError as error:
        raise ModelNotFoundError(str(error)) from error
    folders = sorted(path.parent for path in local.rglob(META_FILE))
    if not folders:
        raise ModelNotFoundError(f"{uri} holds no lipseg model folder (no {META_FILE})")
    return folders[0]


def resolve_model(spec: str | None, cache_dir: Path | None = None) -> Path:
    """--model: a model folder, an MLflow model URI (models:/name@alias, runs:/...), or the project's
    latest trained model (models/tcnn) when omitted."""
    if spec is None:
        project = project_root()
        if project is None or not (project / TCNN_MODEL).is_dir():
            raise ModelNotFoundError(
                "no trained model found (models/tcnn); run `dvc repro` in the project or pass --model"
            )
        return project / TCNN_MODEL
    if spec.startswith(MLFLOW_SCHEMES):
        return download_model_folder(spec, cache_dir)
    folder = Path(spec)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"--model {spec}: no such folder (or use an MLflow URI such as models:/lipseg-tcnn@champion)"
        )
    return folder


def segmenter_folder(mask_source: str, spec: str | None) -> Path | None:
    """--mask-source/--segmenter -> the segmenter folder to use, or None for the landmark polygons.

    `auto` takes the segmenter that evaluate_segmenters found best (models/segmenters/best.json) when it
    beat the landmark polygons on the validation photos and its folder is here; otherwise the polygons."""
    if mask_source == "landmarks":
        return None
    folder = Path(spec) if spec else None
    if folder is None:
        project = project_root()
        best_file = project / BEST_SEGMENTER if project else None
        if best_file is not None and best_file.is_file():
            best = json.loads(best_file.read_text(encoding="utf-8"))
            if best.get("beats_landmarks") or mask_source == "segmenter":
                folder = project / best["folder"]
    if spec and not folder.is_dir():
        raise ModelNotFoundError(f"--segmenter {spec}: no such folder")
    if folder is None or not folder.is_dir():
        if mask_source == "auto":
            return None
        raise ModelNotFoundError(
            "--mask-source segmenter: no segmenter found (run `dvc repro evaluate_segmenters` or pass --segmenter DIR)"
        )
    return folder
