"""The install: pyproject's base dependencies are what `lipseg predict` imports, and both lock files pin every
package with hashes at the versions pyproject names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-cuda.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def read_lock(name: str) -> dict[str, tuple[str, int]]:
    """{canonical name: (version, number of hashes)} of a pip-compile lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith(" "):
            current = None
    return pins


def project_requirements() -> dict[str, list[Requirement]]:
    """pyproject's direct dependencies: {"base": [...], "<extra>": [...]}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"base": project["dependencies"], **project["optional-dependencies"]}
    return {group: [Requirement(text) for text in texts] for group, texts in groups.items()}


def test_every_locked_package_has_a_hash_and_the_locks_agree() -> None:
    cpu, cuda = (read_lock(name) for name in LOCKS)
    assert len(cpu) > 100 and len(cuda) > len(cpu)
    for name, pins in zip(LOCKS, (cpu, cuda)):
        unhashed = sorted(package for package, (_, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"{name}: pinned without a hash: {unhashed}"
        assert "lipseg" not in pins, f"{name} pins the project itself"
    # the same tree but for torch's build and the CUDA libraries it brings
    assert cpu["torch"][0] == "2.13.0+cpu" and cuda["torch"][0] == "2.13.0"
    for package in set(cpu) & set(cuda) - {"torch"}:
        assert cpu[package][0] == cuda[package][0], package
    assert {package for package in set(cuda) - set(cpu) if not package.startswith(("nvidia-", "cuda-"))} == {"triton"}


def test_the_locks_pin_what_pyproject_names() -> None:
    for name in LOCKS:
        pins = read_lock(name)
        for group, requirements in project_requirements().items():
            for requirement in requirements:
                package = canonicalize_name(requirement.name)
                assert package in pins, f"{name} lacks {requirement} ([{group}])"
                locked = Version(pins[package][0])
                # a local build label (2.13.0+cpu) satisfies ==2.13.0, as pip has it
                assert requirement.specifier.contains(locked.public), f"{name}: {package}=={locked} vs {requirement}"


def base_closure() -> set[str]:
    """Every distribution the base install brings: pyproject's base dependencies and theirs, recursively."""
    seen: set[str] = set()
    todo = [requirement.name for requirement in project_requirements()["base"]]
    while todo:
        package = canonicalize_name(todo.pop())
        if package in seen:
            continue
        seen.add(package)
        for text in metadata.distribution(package).requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


# Runs `lipseg predict` as if only the base install were there: every module of a distribution outside it
# fails to import, as it would in a venv without the extras (optional imports, such as torch's of pydot,
# then take their fallbacks). Prints the distributions that were imported.
BASE_ONLY_PREDICT = """
import json, sys
from importlib import metadata

# None in sys.modules: `import x` raises ModuleNotFoundError and importlib.util.find_spec("x") is None,
# exactly as for a package that is not installed
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
from lipseg.inference.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
if code:
    sys.exit(code)
owners = metadata.packages_distributions()
print(json.dumps(sorted({d for m in list(sys.modules) for d in owners.get(m.split(".")[0], [])})))
"""


def modules_outside_the_base_install() -> list[str]:
    base = base_closure() | {"lipseg", "setuptools"}  # setuptools' start-up hook is loaded by every interpreter
    return sorted(
        module
        for module, owners in metadata.packages_distributions().items()
        if not any(canonicalize_name(owner) in base for owner in owners)
    )


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_predict_needs_only_the_base_install(engine: str, face_photo: Path, tmp_path: Path) -> None:
    """`lipseg predict` on a photo, both engines, mask from the segmenter, with every package of the extras
    unimportable: it works, so `pip install lipseg` without extras is enough."""
    absent = modules_outside_the_base_install()
    assert {"mlflow", "dvc", "sklearn", "matplotlib", "pyspark", "yaml"} <= set(absent)
    out = tmp_path / "out"
    command = [sys.executable, "-c", BASE_ONLY_PREDICT, json.dumps(absent), "predict", str(face_photo)]
    command += ["--out", str(out), "--engine", engine, "--jobs", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "face.json").read_text())["faces"], "the synthetic photo has a face"
    imported = {canonicalize_name(name) for name in json.loads(result.stdout.splitlines()[-1])}
    expected = {"numpy", "opencv-python-headless", "dlib-bin", "pillow"}
    expected |= {"onnxruntime"} if engine == "onnx" else {"torch", "safetensors"}
    assert expected <= imported


def test_an_mlflow_uri_without_the_train_extra_says_what_to_install(tmp_path: Path, face_photo: Path) -> None:
    absent = modules_outside_the_base_install()
    command = [sys.executable, "-c", BASE_ONLY_PREDICT, json.dumps(absent), "predict", str(face_photo)]
    command += ["--out", str(tmp_path / "out"), "--model", "models:/lipseg@champion"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("lipseg: ")]
    assert message and "pip install 'lipseg[train]'" in message[0] and "mlflow" in message[0].lower(), message
    assert not (tmp_path / "mlflow.db").exists()
