"""The registered `lipseg-tcnn` MLflow model, as "models from code": MLflow executes this file when it
loads the model, so nothing is pickled. Mouth crops in, lip points out: the TCNN alone, for callers that
crop themselves (lipseg.inference.photo_pyfunc takes whole photos). Registering happens in
lipseg.core.tracking; crop_model_package says how the model is packed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import set_model

from lipseg.core.packaging import PyfuncPackage, SignedPythonModel, lipseg_source, pinned_requirements
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import predict_crops

# The third-party distributions loading and predicting import (tests/inference/test_serving.py checks it).
REQUIREMENTS = ("mlflow", "numpy", "pandas", "torch", "safetensors")


class LipsegTCNNPyfunc(SignedPythonModel):
    """uint8 BGR crops (B, S, S, 3) in, (B, 56, 2) lip points in normalised crop coordinates out, predicted
    as the metrics logged with the model were (`flip_average` in the model config)."""

    def load_context(self, context: Any) -> None:
        self.model, self.geometry, self.meta = load_tcnn(Path(context.artifacts["model_folder"]))
        self.flip_average = bool((context.model_config or {}).get("flip_average", False))

    # No type hints: MLflow would read them as a schema; the signature says what goes in and out.
    def predict(self, context, model_input, params=None):
        return predict_crops(self.model, np.asarray(model_input, dtype=np.uint8), flip_average=self.flip_average).lips


def crop_model_package(
    model_folder: Path,
    example_input: np.ndarray,
    example_output: np.ndarray,
    staging: Path,
    model_config: dict[str, Any] | None = None,
) -> PyfuncPackage:
    """The crop model packed for MLflow: this file, the model folder, the lipseg source as code_paths,
    pinned third-party requirements, the example crops and the signature inferred from them."""
    from mlflow.models import infer_signature

    return PyfuncPackage(
        python_model=Path(__file__).resolve(),
        artifacts={"model_folder": str(model_folder)},
        model_config=model_config or {},
        code_paths=[lipseg_source(staging)],
        pip_requirements=pinned_requirements(REQUIREMENTS),
        input_example=example_input,
        signature=infer_signature(example_input, example_output),
    )


set_model(LipsegTCNNPyfunc())
