"""Which models `lipseg predict` uses: a model folder, an MLflow model URI, or the project's own
trained model; and the segmenter that labels the masks (`--mask-source`)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from lipseg.core.model_meta import META_FILE
from lipseg.core.paths import BEST_SEGMENTER, project_root

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class ModelNotFoundError(LookupError):
    """No model where the user pointed (or none at all); the message says what to do."""


def download_model_folder(uri: str, cache_dir: Path | None = None) -> Path:
    """The lipseg model folder inside a logged or registered MLflow model (e.g. models:/lipseg-tcnn@champion)."""
    try:
        from lipseg.core.tracking import download_artifacts
    except ModuleNotFoundError as error:  # the base install (lipseg predict) leaves MLflow to the [train] extra
        raise ModelNotFoundError(
            f"{uri}: MLflow URIs need MLflow ({error}); install it with: pip install 'lipseg[train]'"
        ) from error

    target = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="lipseg-model-"))
    try:
        local = download_artifacts(uri, target)
    except RuntimeError as error:
        raise ModelNotFoundError(str(error)) from error
    folders = sorted(path.parent for path in local.rglob(META_FILE))
    # The photo model (models:/lipseg@...) carries a segmenter beside its TCNN: --model means the TCNN.
    tcnn = [folder for folder in folders if _family(folder) == "tcnn"]
    if not tcnn:
        raise ModelNotFoundError(f"{uri} holds no lipseg TCNN model folder (no {META_FILE} of a TCNN)")
    return tcnn[0]


def _family(folder: Path) -> str | None:
    from lipseg.core.model_meta import ModelFolderError, read_model_meta

    try:
        return read_model_meta(folder).get("family")
    except ModelFolderError:
        return None


def carried_segmenter(model: Path | None) -> Path | None:
    """The segmenter a downloaded photo model carries beside its TCNN (`model`), when the model predicts
    its masks with it (its MLmodel's mask_source); None for any other model."""
    if model is None or model.parent.name != "artifacts" or not (model.parent / "segmenter" / META_FILE).is_file():
        return None
    import yaml

    try:
        flavor = yaml.safe_load((model.parent.parent / "MLmodel").read_text(encoding="utf-8"))["flavors"]
        config = flavor["python_function"].get("config") or {}
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    return model.parent / "segmenter" if config.get("mask_source") == "segmenter" else None


RELEASE = Path(__file__).resolve().parents[1] / "weights"  # the release model that ships inside the package
RELEASE_TCNN, RELEASE_SEGMENTER = RELEASE / "tcnn", RELEASE / "segmenter"


def resolve_model(spec: str | None, cache_dir: Path | None = None) -> Path:
    """--model: a model folder, an MLflow model URI (models:/name@alias, runs:/...), or the release model
    that ships with lipseg when omitted (from any folder: a project's own models are used when named)."""
    if spec is None:
        if not (RELEASE_TCNN / META_FILE).is_file():
            raise ModelNotFoundError(f"this lipseg has no release model ({RELEASE_TCNN} is missing); pass --model")
        return RELEASE_TCNN
    if spec.startswith(MLFLOW_SCHEMES):
        return download_model_folder(spec, cache_dir)
    folder = Path(spec)
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"--model {spec}: no such folder (or use an MLflow URI such as models:/lipseg-tcnn@champion)"
        )
    return folder


def segmenter_folder(mask_source: str, spec: str | None, model: Path | None = None) -> Path | None:
    """--mask-source/--segmenter -> the segmenter folder to use, or None for the landmark polygons.

    `auto` takes, in order: the segmenter a registered photo model carries (models:/lipseg@...); the release
    segmenter when the TCNN is the release model; the segmenter that evaluate_segmenters found best in this
    project (models/segmenters/best.json) when it beat the landmark polygons on the validation photos;
    otherwise the polygons. `segmenter` insists on one of those."""
    if mask_source == "landmarks":
        return None
    folder = Path(spec) if spec else carried_segmenter(model)
    if folder is None and model == RELEASE_TCNN and (RELEASE_SEGMENTER / META_FILE).is_file():
        folder = RELEASE_SEGMENTER
    if folder is None and (project := project_root()) is not None:
        folder = measured_best_segmenter(project, insist=mask_source == "segmenter")
    if spec and not folder.is_dir():
        raise ModelNotFoundError(f"--segmenter {spec}: no such folder")
    if folder is None or not folder.is_dir():
        if mask_source == "auto":
            return None
        raise ModelNotFoundError(
            "--mask-source segmenter: no segmenter found (run `dvc repro evaluate_segmenters` or pass --segmenter DIR)"
        )
    return folder


def measured_best_segmenter(project: Path, insist: bool = False) -> Path | None:
    """The segmenter folder that the project's models/segmenters/best.json names, when it beat the landmark
    polygons (or whenever, with `insist`); None without that file. A damaged file, or one naming no folder,
    is a warning on stderr and None (auto falls back to the polygons); with `insist`, ModelNotFoundError."""
    best_file = project / BEST_SEGMENTER
    if not best_file.is_file():
        return None
    try:
        best = json.loads(best_file.read_text(encoding="utf-8"))
        if not isinstance(best, dict):
            raise ValueError(f"expected a JSON object, found {type(best).__name__}")
        for key, kind in (("folder", str), ("beats_landmarks", bool)):
            if not isinstance(best.get(key), kind):
                raise ValueError(f"the {key!r} entry is missing or not a {kind.__name__}")
        if not (best["beats_landmarks"] or insist):
            return None
        if not (project / best["folder"]).is_dir():
            raise ValueError(f"it names {best['folder']!r}, which is not a folder")
    # ValueError: bad JSON or UTF-8 and the checks above; RecursionError: arrays nested past the parser's depth
    except (OSError, ValueError, RecursionError) as error:
        if insist:
            raise ModelNotFoundError(f"--mask-source segmenter: {best_file}: {error}") from None
        print(f"lipseg: warning: {best_file}: {error}; masks from the landmark polygons", file=sys.stderr)
        return None
    return project / best["folder"]


def training_data_warning(folder: Path, meta: dict) -> str | None:
    """A warning for a model not trained on real photos (the embedded synthetic faces), or that cannot
    say what it was trained on; None for a model trained on real faces."""
    source = (meta.get("training_data") or {}).get("source")
    if source is None:
        return f"{folder} does not record what it was trained on; it may not suit real photos"
    if source == "synthetic":
        return (
            f"{folder} was trained on the embedded synthetic faces (data.source: synthetic), not on real photos: "
            "its landmarks and masks on real photos are poor; the release model (no --model) is trained on Helen"
        )
    return None
