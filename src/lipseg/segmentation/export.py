"""ONNX export of a segmenter folder: crops (B, 3, S, S) float in [0, 255] -> class probabilities
(B, 4, S, S), the normalisation and the softmax inside the graph, checked against torch in onnxruntime.
`lipseg.segmentation.runner.SegmenterRunner(engine="onnx")` runs it without torch."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipseg import __version__
from lipseg.core.files import write_bytes_atomic, write_json_atomic
from lipseg.core.onnx_runtime import OnnxError, session_from, weights_digest
from lipseg.segmentation.model import SegmenterNet, load_segmenter
from lipseg.segmentation.onnx_runner import INPUT_NAME, ONNX_SCHEMA, OUTPUT_NAME, SEGMENTER_FILE, SIDECAR_FILE

VERIFY_TOLERANCE = 1e-4  # absolute, probabilities; float32 noise is ~1e-6


class _Probabilities(nn.Module):
    def __init__(self, model: SegmenterNet):
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model(crops).softmax(dim=1)  # (B, 4, S, S)


def export_segmenter_onnx(model_folder: Path, out_dir: Path, opset: int = 17) -> dict[str, Any]:
    """Write `out_dir`/segmenter.onnx and its sidecar (last, so its presence marks a finished export);
    raises OnnxError when onnxruntime's probabilities differ from torch's."""
    try:
        import onnx
    except ImportError as error:
        raise OnnxError(f"ONNX export needs the 'onnx' package ({error}): pip install onnx==1.23.2") from error
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    model, geometry, meta = load_segmenter(model_folder)
    graph = _Probabilities(model.cpu().eval()).eval()
    size, channels = model.config.input_size, model.config.in_channels
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 255.0
    probe = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(1)) * 255.0
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its successor
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    got = session_from(data, threads=1).run(None, {INPUT_NAME: probe.numpy()})[0]
    with torch.no_grad():
        expected = graph(probe).numpy()
    difference = float(np.abs(got - expected).max())
    if not np.isfinite(difference) or difference > VERIFY_TOLERANCE:
        raise OnnxError(
            f"{model_folder}: onnxruntime and torch differ by {difference:.3g} (tolerance {VERIFY_TOLERANCE})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / SEGMENTER_FILE, data)
    sidecar = {
        "schema": ONNX_SCHEMA,
        "lipseg_version": __version__,
        "opset": opset,
        "file": SEGMENTER_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "description": "BGR mouth crops, raw pixel values in [0, 255], NCHW",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", 4, size, size],
            "dtype": "float32",
            "description": "class probabilities: 0 background, 1 upper lip, 2 inner mouth, 3 lower lip",
        },
        "verification": {"max_abs_difference": difference},
        "geometry": geometry.to_dict(),
        "weights_sha256": weights_digest(model_folder),  # a folder's shipped export is used only for these weights
        "source_model": {"folder": str(model_folder), "meta": meta},
    }
    write_json_atomic(out_dir / SIDECAR_FILE, sidecar)
    return {"out_dir": str(out_dir), "bytes": len(data), "verification": sidecar["verification"]}
