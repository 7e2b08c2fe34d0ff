"""Every stage reads its params.yaml section through one `from_params` style: the dataclass is the schema,
and an unknown key, a missing key, a value of the wrong type or out of range is an error naming the key."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest
import yaml

from lipseg.core.params import ParamsError, Section, load_params, param
from lipseg.core.scratch import copy_project, scratch_env
from lipseg.data.sources import DataParams
from lipseg.tcnn.heads import HeadsConfig

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def stage_module(stage: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"stage_{stage}", ROOT / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def section_class(stage: str) -> tuple[str, type[Section]]:
    """(params section, the dataclass that reads it) of a stage."""
    if stage == "download":
        return "data", DataParams
    if stage == "finetune_heads":
        return "heads", HeadsConfig
    module = stage_module(stage)
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, Section) and value.__module__ == module.__name__
    ]
    section = "gmm" if stage == "fit_gmm" else stage
    top = [cls for cls in classes if set(f.name for f in cls.__dataclass_fields__.values()) == set(PARAMS[section])]
    assert len(top) == 1, f"{stage}: no single dataclass reads the whole section"
    return section, top[0]


STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("stage", STAGES)
def test_params_yaml_is_valid_for_every_stage(stage: str) -> None:
    section, cls = section_class(stage)
    parsed = cls.from_params(PARAMS[section], section)
    assert isinstance(parsed, cls)


@pytest.mark.parametrize("stage", STAGES)
def test_an_unknown_key_is_named(stage: str) -> None:
    section, cls = section_class(stage)
    with pytest.raises(ParamsError, match=rf"unknown key {section}\.colour_depth"):
        cls.from_params({**PARAMS[section], "colour_depth": 8}, section)


def with_value(section: dict, key: str, value: object) -> dict:
    """A copy of a params section with `key` (dotted below the section: `common.batch_size`) set to `value`."""
    changed = copy.deepcopy(section)
    *parents, leaf = key.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[leaf] = value
    return changed


SEEDS = ["download", "crop", "train_base", "fit_gmm", "finetune_heads", "segment_crops"]


@pytest.mark.parametrize(
    ("stage", "key", "value", "message"),
    [
        # issue 14, case 2
        ("train_base", "max_epochs", 0, "train_base.max_epochs must be >= 1, got 0"),
        # issue 14, case 12
        ("fit_gmm", "k", "abc", "gmm.k must be an integer or one of 'auto', got 'abc'"),
        ("train_base", "lr", "abc", "train_base.lr must be a number, got 'abc'"),
        ("train_base", "batch_size", 0, "train_base.batch_size must be >= 1, got 0"),
        ("extract_features", "batch_size", 0, "extract_features.batch_size must be >= 1, got 0"),
        ("finetune_heads", "batch_size", 0, "heads.batch_size must be >= 1, got 0"),
        ("train_segmenter", "common.batch_size", 0, "train_segmenter.common.batch_size must be >= 1, got 0"),
        ("crop", "size", 0, "crop.size must be >= 16, got 0"),
        ("crop", "margin", -1, "crop.margin must be >= 0, got -1"),
        ("fit_gmm", "n_inits", 3, "unknown key gmm.n_inits "),
        ("fit_gmm", "covarience_type", "diag", "unknown key gmm.covarience_type "),
        # further types, ranges and cross-key checks
        ("train_base", "amp", "yes", "train_base.amp must be true or false"),
        ("train_base", "loss", "l1", "train_base.loss must be one of 'wing', 'mse'"),
        ("train_base", "conv_kernels", [5, 3], "conv_channels and train_base.conv_kernels need one entry per conv"),
        ("train_base", "lr", 0, "train_base.lr must be > 0, got 0"),
        ("train_base", "patience", 0, "train_base.patience must be >= 1, got 0"),
        ("train_base", "lr_factor", 1.5, "train_base.lr_factor must be > 0 and <= 1, got 1.5"),
        *[(stage, "seed", -1, "seed must be >= 0 and <= 4294967295, got -1") for stage in SEEDS],
        ("train_segmenter", "common.seed", 2**32, "train_segmenter.common.seed must be >= 0 and <= 4294967295"),
        ("fit_gmm", "k", 0, "gmm.k must be >= 1, got 0"),
        ("fit_gmm", "k_range", [6, 2], "gmm.k_range must be .low, high. with low <= high"),
        ("fit_gmm", "covariance_type", "covarience", "gmm.covariance_type must be one of"),
        ("crop", "val_fraction", 0, "crop.val_fraction must be > 0 and <= 0.9, got 0"),
        ("crop", "augment", {"copies": 3}, "missing keys crop.augment.shift"),
        ("crop", "augment.shift", 0.8, "crop.augment.shift must be >= 0 and <= 0.5, got 0.8"),
        ("crop", "augment.scale", 2, "crop.augment.scale must be >= 0 and <= 1, got 2"),
        ("download", "synthetic.n_train", 0, "data.synthetic.n_train must be >= 1, got 0"),
        ("finetune_heads", "cluster_by", "face", "heads.cluster_by must be one of 'crop', 'source'"),
        ("finetune_heads", "epochs", 0, "heads.epochs must be >= 1, got 0"),
        ("segment_crops", "min_shift", 0.6, "segment_crops.min_shift must be >= 0 and <= 0.5, got 0.6"),
        ("segment_crops", "min_scale", -0.1, "segment_crops.min_scale must be >= 0 and <= 1, got -0.1"),
        ("train_segmenter", "common", {"lr": 1}, "missing keys train_segmenter.common.optimizer"),
        ("train_segmenter", "common.max_epochs", 0, "train_segmenter.common.max_epochs must be >= 1, got 0"),
        ("train_segmenter", "common.momentum", 1.5, "train_segmenter.common.momentum must be >= 0 and <= 1"),
        (
            "train_segmenter",
            "common.warmup_epochs",
            8,
            "train_segmenter.common.warmup_epochs must be < train_segmenter.common.max_epochs .8., got 8",
        ),
        (
            "train_segmenter",
            "common.loss_weights",
            {"ce": 0, "dice": 0, "jaccard": 0, "boundary": 0, "distill": 0},
            "train_segmenter.common.loss_weights needs ce, dice, jaccard or distill above 0",
        ),
        (
            "train_segmenter",
            "common.loss_weights",
            {"ce": 0, "dice": 1, "jaccard": 0, "boundary": 1, "distill": 0},
            "train_segmenter.common.loss_weights.boundary weights cross-entropy up: it needs .*loss_weights.ce > 0",
        ),
        ("train_segmenter", "unet.dropout", 1, "train_segmenter.unet.dropout must be >= 0 and <= 0.99, got 1"),
        ("train_segmenter", "unet.colour", 1, "unknown key train_segmenter.unet.colour "),
        ("evaluate", "fail_threshold", 0, "evaluate.fail_threshold must be > 0, got 0"),
        ("evaluate_segmenters", "threads", -1, "evaluate_segmenters.threads must be >= 0"),
    ],
)
def test_a_bad_value_is_named_with_what_it_should_be(stage: str, key: str, value: object, message: str) -> None:
    """The stage's own config loading on the real params.yaml with one bad value: a ParamsError naming the key."""
    section, cls = section_class(stage)
    with pytest.raises(ParamsError, match=rf"^params\.yaml: .*{message}"):
        cls.from_params(with_value(PARAMS[section], key, value), section)


def test_a_teacher_and_the_distillation_weight_come_together() -> None:
    """Each train_segmenter@<arch> checks its own subsection against `common`, never another arch's."""
    _, cls = section_class("train_segmenter")
    section = with_value(PARAMS["train_segmenter"], "unet.teacher", "models/segmenters/big")
    params = cls.from_params(section, "train_segmenter")
    with pytest.raises(ParamsError, match=r"^params\.yaml: train_segmenter\.unet\.teacher needs .*distill > 0"):
        params.for_arch("unet", "train_segmenter")
    assert params.for_arch("pspnet", "train_segmenter") == params.pspnet
    distilled = cls.from_params(with_value(section, "common.loss_weights.distill", 1.0), "train_segmenter")
    assert distilled.for_arch("unet", "train_segmenter").teacher == "models/segmenters/big"
    with pytest.raises(ParamsError, match=r"loss_weights\.distill > 0 needs train_segmenter\.pspnet\.teacher"):
        distilled.for_arch("pspnet", "train_segmenter")


@dataclass(frozen=True)
class Inner(Section):
    width: int = param(1, low=1)


@dataclass(frozen=True)
class Outer(Section):
    name: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)
    pair: tuple[int, int] = (1, 2)
    weights: str | None = None
    ratios: list[float] = param([0.5], low=0, high=1)


def test_nested_sections_and_types() -> None:
    parsed = Outer.from_params(
        {"name": "b", "inner": {"width": 3}, "pair": [4, 5], "weights": None, "ratios": [0, 1]}, "outer"
    )
    assert parsed == Outer("b", Inner(3), (4, 5), None, [0.0, 1.0]) and isinstance(parsed.ratios[0], float)
    with pytest.raises(ParamsError, match=r"outer.inner.width must be >= 1, got 0"):
        Outer.from_params({"name": "a", "inner": {"width": 0}, "pair": [1, 2], "weights": None, "ratios": []}, "outer")
    with pytest.raises(ParamsError, match=r"outer.ratios must be >= 0 and <= 1, got 2.0"):
        Outer.from_params({"name": "a", "inner": {"width": 1}, "pair": [1, 2], "weights": None, "ratios": [2]}, "outer")
    with pytest.raises(ParamsError, match=r"outer.pair must be a list, got \[1\]"):
        Outer.from_params({"name": "a", "inner": {"width": 1}, "pair": [1], "weights": None, "ratios": []}, "outer")
    with pytest.raises(ParamsError, match="outer must be a mapping"):
        Outer.from_params([1, 2], "outer")  # type: ignore[arg-type]


def test_load_params_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params("crop", tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("data: {}\n")
    with pytest.raises(ParamsError, match="has no 'crop' section"):
        load_params("crop", tmp_path / "params.yaml")


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow  # ~10 s: the stage's imports (torch, MLflow)
def test_a_stage_refuses_bad_params_before_any_work(tmp_path: Path) -> None:
    """train_base with max_epochs 0, in a scratch copy of the project holding a previous models/base: the stage
    stops at its first line, naming the key; the model folder stays byte for byte, no run is logged."""
    copy_project(tmp_path, ROOT, {"train_base": {"max_epochs": 0}})
    previous = tmp_path / "models" / "base"
    (previous / "onnx").mkdir(parents=True)
    (previous / "model.safetensors").write_bytes(bytes(range(256)) * 64)  # never read: the stage refuses first
    (previous / "meta.json").write_text('{"best_epoch": 12}\n')
    (previous / "onnx" / "tcnn.onnx").write_bytes(b"\x00\xff" * 100)
    before = tree_bytes(previous)
    store = tmp_path / "mlflow.db"
    done = subprocess.run(
        [sys.executable, "stages/train_base.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**scratch_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{store}"},
    )
    assert done.returncode == 2
    # The stage's only word is the params check (not an error further on, no traceback), naming the key.
    assert (
        done.stderr.strip().splitlines()[-1]
        == "train_base: error: params.yaml: train_base.max_epochs must be >= 1, got 0"
    )
    assert "Traceback" not in done.stderr
    assert tree_bytes(previous) == before
    assert [path.name for path in (tmp_path / "models").iterdir()] == ["base"]  # no staging folder left either
    assert not store.exists() and not (tmp_path / "reports").exists() and not (tmp_path / "checkpoints").exists()
