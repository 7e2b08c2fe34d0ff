"""The registered `lipseg-tcnn` MLflow model, as "models from code": MLflow executes this file when it
loads the model, so nothing is pickled. Logging and registering happen in lipseg.core.tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import predict_crops


class LipsegTCNNPyfunc(PythonModel):
    """uint8 BGR crops (B, S, S, 3) in, (B, 56, 2) lip points in normalised crop coordinates out, predicted
    as the metrics logged with the model were (`flip_average` in the model config)."""

    def load_context(self, context: Any) -> None:
        self.model, self.geometry, self.meta = load_tcnn(Path(context.artifacts["model_folder"]))
        self.flip_average = bool((context.model_config or {}).get("flip_average", False))

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> np.ndarray:
        return predict_crops(self.model, np.asarray(model_input, dtype=np.uint8), flip_average=self.flip_average).lips


set_model(LipsegTCNNPyfunc())
