"""Where things live: the project root, and every path the pipeline's stages read and write.

Paths are relative to the project root, where DVC runs the stages; dvc.yaml names the same paths as
deps and outs (tests/pipeline/test_dvc_yaml.py checks that each stage's paths here appear there).
"""

from __future__ import annotations

from pathlib import Path


def project_root(start: Path | None = None) -> Path | None:
    """The lipseg project (the folder holding dvc.yaml) that `start` (default: the working directory)
    lies in, searched upwards; None outside any project."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return None


RAW = Path("data/raw")
DOWNLOAD_CACHE = Path("data/cache")
CROPS = Path("data/crops")
FEATURES = Path("data/features/train_fc5.npz")
SEGMENT_CROPS = Path("data/segment_crops")

BASE_MODEL = Path("models/base")
GMM = Path("models/gmm/gmm.npz")
TCNN_MODEL = Path("models/tcnn")
SEGMENTERS = Path("models/segmenters")
BEST_SEGMENTER = SEGMENTERS / "best.json"

CHECKPOINTS = Path("checkpoints")
REPORTS = Path("reports")
METRICS = Path("metrics.json")
SEGMENTER_METRICS = Path("metrics_segmenters.json")


def segmenter_model(arch: str) -> Path:
    return SEGMENTERS / arch


def checkpoint(stage: str, name: str = "last.safetensors") -> Path:
    """Per-machine resume state of a stage (`checkpoints/<stage>/...`): not a DVC output, so a rerun
    after a kill finds it and a `dvc pull` never expects it."""
    return CHECKPOINTS / stage / name


def report(stage: str, name: str) -> Path:
    return REPORTS / stage / name
