"""dvc.yaml lists exactly what each stage reads: its script, every lipseg module it imports
(transitively), and the leaf params of its own params.yaml section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from lipseg.core.params import flatten

ROOT = Path(__file__).resolve().parents[2]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = list(DVC["stages"])
SECTION = {"download": "data", "fit_gmm": "gmm", "finetune_heads": "heads"}
# evaluate registers the model through MLflow's models-from-code, which runs this file by path.
LOADED_BY_PATH = {"evaluate": [ROOT / "src" / "lipseg" / "inference" / "pyfunc.py"]}


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "lipseg":
        return None
    base = ROOT / "src" / Path(*parts)
    return (
        base.with_suffix(".py")
        if base.with_suffix(".py").is_file()
        else (base / "__init__.py" if base.is_dir() else None)
    )


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
    assert STAGES == [
        "download",
        "crop",
        "train_base",
        "extract_features",
        "fit_gmm",
        "finetune_heads",
        "evaluate",
        "segment_crops",
        "train_segmenter",
        "evaluate_segmenters",
    ]


def test_the_segmenter_matrix_covers_every_architecture_with_the_same_params() -> None:
    from lipseg.segmentation.nets import ARCHITECTURES

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
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "load_params"
    ]
    assert [call.args[0].value for call in calls] == [section]
    if "matrix" in DVC["stages"][stage]:  # `common` plus the item's own subsection (all have the same keys)
        first = DVC["stages"][stage]["matrix"]["arch"][0]
        leaves = {f"{section}.common.{key}" for key in flatten(PARAMS[section]["common"])}
        leaves |= {f"{section}.${{item.arch}}.{key}" for key in flatten(PARAMS[section][first])}
    else:
        leaves = {f"{section}.{key}" for key in flatten(PARAMS[section])}
    assert set(DVC["stages"][stage].get("params", [])) == leaves


def test_stage_scripts_take_every_path_from_one_place() -> None:
    """Stage scripts name no data, model, report or checkpoint path themselves: lipseg.core.paths does."""
    for script in sorted((ROOT / "stages").glob("*.py")):
        literals = [node.value for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Constant)]
        paths = [
            text
            for text in literals
            if isinstance(text, str) and text.startswith(("data/", "models/", "reports/", "checkpoints/"))
        ]
        assert paths == [], f"{script.name} spells out {paths}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_output_a_stage_writes_comes_from_the_paths_module(stage: str) -> None:
    from lipseg.core import paths

    known = {str(value) for value in vars(paths).values() if isinstance(value, Path)}
    outs = [next(iter(out)) if isinstance(out, dict) else out for out in DVC["stages"][stage].get("outs", [])]
    for out in outs:
        out = Path(out.replace("${item.arch}", "unet"))
        related = {str(out), *map(str, out.parents)} & known or {path for path in known if out in Path(path).parents}
        assert related, f"{stage}: {out} is neither a path of lipseg.core.paths nor inside or around one"


def test_the_families_do_not_share_training_code() -> None:
    """The TCNN stages import no segmentation module, and the segmenter training imports no TCNN module, so
    DVC reruns neither family for a change to the other's code."""
    for stage in ("crop", "train_base", "extract_features", "fit_gmm", "finetune_heads", "evaluate"):
        reached = {str(path.relative_to(ROOT)) for path in lipseg_imports(ROOT / "stages" / f"{stage}.py")}
        assert not {path for path in reached if "/segmentation/" in path}, stage
    reached = {str(path.relative_to(ROOT)) for path in lipseg_imports(ROOT / "stages" / "train_segmenter.py")}
    assert not {path for path in reached if "/tcnn/" in path or "/inference/" in path}
