"""Every stage reads its params.yaml section through one `from_params` style: the dataclass is the schema,
and an unknown key, a missing key, a value of the wrong type or out of range is an error naming the key."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("stage", "key", "value", "message"),
    [
        ("train_base", "lr", "abc", "train_base.lr must be a number, got 'abc'"),
        ("train_base", "batch_size", 0, "train_base.batch_size must be >= 1, got 0"),
        ("train_base", "max_epochs", 0, "train_base.max_epochs must be >= 1"),
        ("train_base", "amp", "yes", "train_base.amp must be true or false"),
        ("train_base", "loss", "l1", "train_base.loss must be one of 'wing', 'mse'"),
        ("train_base", "conv_kernels", [5, 3], "conv_channels and train_base.conv_kernels need one entry per conv"),
        ("fit_gmm", "k", "abc", "gmm.k must be an integer or one of 'auto'"),
        ("fit_gmm", "k_range", [6, 2], "gmm.k_range must be .low, high. with low <= high"),
        ("fit_gmm", "covariance_type", "covarience", "gmm.covariance_type must be one of"),
        ("crop", "size", 0, "crop.size must be >= 16, got 0"),
        ("crop", "margin", -1, "crop.margin must be >= 0"),
        ("crop", "augment", {"copies": 3}, "missing keys crop.augment.shift"),
        ("finetune_heads", "cluster_by", "face", "heads.cluster_by must be one of 'crop', 'source'"),
        ("train_segmenter", "common", {"lr": 1}, "missing keys train_segmenter.common.optimizer"),
        ("evaluate_segmenters", "threads", -1, "evaluate_segmenters.threads must be >= 0"),
    ],
)
def test_a_bad_value_is_named_with_what_it_should_be(stage: str, key: str, value: object, message: str) -> None:
    section, cls = section_class(stage)
    with pytest.raises(ParamsError, match=message):
        cls.from_params({**PARAMS[section], key: value}, section)


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


def test_a_stage_refuses_bad_params_before_any_work(tmp_path: Path) -> None:
    """train_base with max_epochs 0 stops at its first line: no model folder is touched, no run is logged."""
    params = {**PARAMS, "train_base": {**PARAMS["train_base"], "max_epochs": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "keep.txt").write_text("the previous model")
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train_base.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0
    assert "train_base.max_epochs must be >= 1, got 0" in done.stderr
    assert (tmp_path / "models" / "base" / "keep.txt").read_text() == "the previous model"
    assert not (tmp_path / "mlflow.db").exists()
