"""The house rules that a reader relies on: ruff's lint and format (configured in pyproject.toml), every
module opening with what it owns, and no module growing into a grab-bag."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ["src", "stages", "tests", "bench"]
MODULES = sorted((ROOT / "src" / "lipseg").rglob("*.py"))
MAX_LINES = 450  # "about 400": a module past this holds more than one concept


def ruff() -> list[str]:
    found = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: it is part of the [test] extra (pip install -e '.[test]')")
    return [found]


def test_ruff_lint_is_clean() -> None:
    done = subprocess.run([*ruff(), "check", "--no-cache", *TREES], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_is_applied() -> None:
    done = subprocess.run(
        [*ruff(), "format", "--check", "--no-cache", *TREES], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(ROOT / "src")))
def test_each_module_says_what_it_owns_and_stays_small(module: Path) -> None:
    text = module.read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and docstring.strip(), "no opening docstring"
    assert len(text.splitlines()) <= MAX_LINES, f"{len(text.splitlines())} lines"


def test_packages_import_only_downwards() -> None:
    """core < data < evaluation < {tcnn, segmentation} < inference; tcnn and segmentation never import
    each other (docs/ARCHITECTURE.md)."""
    level = {"core": 0, "data": 1, "evaluation": 2, "tcnn": 3, "segmentation": 3, "inference": 4}
    for module in MODULES:
        package = module.relative_to(ROOT / "src" / "lipseg").parts[0]
        if package not in level:
            continue
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lipseg."):
                target = node.module.split(".")[1]
                if target in level and target != package:
                    assert level[target] < level[package], f"{module.relative_to(ROOT)} imports {node.module}"


def test_bench_scripts_use_the_installed_package() -> None:
    for script in sorted((ROOT / "bench").glob("*.py")):
        assert "sys.path.insert" not in script.read_text(encoding="utf-8"), script.name
