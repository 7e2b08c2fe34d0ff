"""dvc.yaml lists exactly what each stage reads: its script, every lipseg module it imports
(transitively), and the leaf params of its own params.yaml section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from lipseg.io import flatten

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = list(DVC["stages"])
SECTION = {"download": "data", "fit_gmm": "gmm", "finetune_heads": "heads"}
# evaluate registers the model through MLflow's models-from-code, which runs this file by path.
LOADED_BY_PATH = {"evaluate": [ROOT / "src" / "lipseg" / "mlflow_pyfunc.py"]}


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "lipseg":
        return None
    base = ROOT / "src" / Path(*parts)
    return base.with_suffix(".py") if base.with_suffix(".py").is_file() else (base / "__init__.py" if base.is_dir() else None)


def lipseg_imports(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """Every src/lipseg file reachable by imports from `path` (function-level imports included)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            target = module_file(name)
            if target is not None and target.name != "__init__.py" and target not in seen:
                seen.add(target)
                lipseg_imports(target, seen)
    return seen


def test_the_stages_in_order() -> None:
    assert STAGES == ["download", "crop", "train_base", "extract_features", "fit_gmm", "finetune_heads", "evaluate",
                      "segment_crops", "train_segmenter", "evaluate_segmenters"]


def test_the_segmenter_matrix_covers_every_architecture_with_the_same_params() -> None:
    from lipseg.segmenters import ARCHITECTURES

    assert DVC["stages"]["train_segmenter"]["matrix"] == {"arch": list(ARCHITECTURES)}
    assert set(PARAMS["train_segmenter"]) == {"common", *ARCHITECTURES}
    assert len({tuple(flatten(PARAMS["train_segmenter"][arch])) for arch in ARCHITECTURES}) == 1


@pytest.mark.parametrize("stage", STAGES)
def test_stage_lists_its_script_and_every_imported_module(stage: str) -> None:
    spec = DVC["stages"][stage]
    script = ROOT / "stages" / f"{stage}.py"
    assert spec["cmd"] == f"python stages/{stage}.py" + (" ${item.arch}" if "matrix" in spec else "")
    deps = {dep if isinstance(dep, str) else next(iter(dep)) for dep in spec["deps"]}
    assert f"stages/{stage}.py" in deps
    reached = lipseg_imports(script)
    for extra in LOADED_BY_PATH.get(stage, []):
        reached |= {extra} | lipseg_imports(extra)
    needed = {str(path.relative_to(ROOT)) for path in reached}
    listed_sources = {dep for dep in deps if dep.startswith("src/")}
    assert needed - listed_sources == set(), f"{stage}: imported but not listed"
    assert listed_sources - needed == set(), f"{stage}: listed but not imported"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_reads_only_its_own_section_and_lists_its_leaves(stage: str) -> None:
    section = SECTION.get(stage, stage)
    source = (ROOT / "stages" / f"{stage}.py").read_text()
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_params"]
    assert [call.args[0].value for call in calls] == [section]
    if "matrix" in DVC["stages"][stage]:  # `common` plus the item's own subsection (all have the same keys)
        first = DVC["stages"][stage]["matrix"]["arch"][0]
        leaves = {f"{section}.common.{key}" for key in flatten(PARAMS[section]["common"])}
        leaves |= {f"{section}.${{item.arch}}.{key}" for key in flatten(PARAMS[section][first])}
    else:
        leaves = {f"{section}.{key}" for key in flatten(PARAMS[section])}
    assert set(DVC["stages"][stage].get("params", [])) == leaves
