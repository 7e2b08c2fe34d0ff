"""How lipseg's MLflow models are packed for a fresh environment: their base class, the pieces of a
"models from code" pyfunc, the lipseg source shipped with the model as code_paths (no package index has
lipseg), and the third-party requirements pinned at the versions installed here. Saving and logging happen
in lipseg.core.tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel


class SignedPythonModel(PythonModel):
    """The base of lipseg's MLflow models, which declare their signatures explicitly (their `predict` takes
    no type hints: MLflow would read them as a second schema)."""

    # MLflow's own switch (its chat models set it) for not wrapping predict in type-hint validation; without
    # it MLflow advises type hints in every process that loads the model (a server, each Spark worker), with
    # a warning no filter can silence.
    _skip_type_hint_validation = True


@dataclass
class PyfuncPackage:
    """What MLflow packs into a "models from code" pyfunc: the code file it executes on load, the model
    folders it reads (artifacts), how it predicts (model_config), the source it imports (code_paths), the
    pinned requirements of a fresh environment, an input example and the signature."""

    python_model: Path
    artifacts: dict[str, str]
    model_config: dict[str, Any] = field(default_factory=dict)
    code_paths: list[str] = field(default_factory=list)
    pip_requirements: list[str] = field(default_factory=list)
    input_example: Any = None
    signature: Any = None

    def mlflow_arguments(self) -> dict[str, Any]:
        return {
            "python_model": str(self.python_model),
            "artifacts": self.artifacts,
            "model_config": self.model_config,
            "code_paths": self.code_paths or None,
            "pip_requirements": self.pip_requirements,
            "input_example": self.input_example,
            "signature": self.signature,
        }


def pinned_requirements(distributions: tuple[str, ...]) -> list[str]:
    """`name==version` of each installed distribution; a local label (torch's `+cpu`) is dropped, since the
    package index has the public version only (and == matches either)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in distributions]


def lipseg_source(staging: Path) -> str:
    """A clean copy of the lipseg package (no caches, no release weights) under `staging`, for code_paths:
    the served model imports it, so its environment needs no lipseg on a package index."""
    import shutil

    package = Path(__file__).resolve().parents[1]
    copy = staging / "code" / package.name
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "weights"))
    return str(copy)
