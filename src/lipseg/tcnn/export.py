"""ONNX export of a model folder, so the lips can be predicted with onnxruntime alone (no lipseg, no torch).

`export_onnx(folder, out_dir)` writes
  base.onnx          the vanilla network (normaliser + trunk + base head): crops -> lips
  tweaked.onnx       tweaked folders only: normaliser + trunk + GMM gate + every head + gather:
                     crops -> lips, cluster
  lipseg_onnx.json   names, shapes, dtypes, crop geometry, preprocessing, and the source model's meta;
                     written last, so its presence means the export finished.
Every file is written to a temporary sibling and moved into place (os.replace).

The export uses torch's TorchScript-based exporter (`dynamo=False`): it needs only `onnx` (and
`onnxruntime` to verify), works offline, and natively writes opset 17. `exporter="dynamo"` selects the
torch.export-based exporter instead, which also needs `onnxscript`.

`lipseg.tcnn.onnx_runner.OnnxCropRunner` runs a model folder's export in onnxruntime, without torch.
"""

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
from lipseg.core.onnx_runtime import (  # noqa: F401  (the runtime's helpers, importable from here too)
    OnnxError,
    onnx_cache_dir,
    onnx_session,
    session_from,
    time_onnx,
    weights_digest,
)
from lipseg.tcnn.model import TweakedTCNN, VanillaTCNN, load_tcnn, select_heads
from lipseg.tcnn.onnx_runner import (  # noqa: F401
    BASE_FILE,
    INPUT_NAME,
    ONNX_SCHEMA,
    SIDECAR_FILE,
    TWEAKED_FILE,
    OnnxCropRunner,
)

EXPORTERS = ("torchscript", "dynamo")
VERIFY_TOLERANCE = 1e-3  # absolute, normalised crop units (a crop spans 1.0); float32 noise is ~1e-6


class ExportError(OnnxError):
    """The ONNX export cannot run here (missing packages) or produced a model that disagrees with torch."""


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs the 'onnx' and 'onnxruntime' packages ({error}); "
            "install them with: pip install onnx==1.23.2 onnxruntime==1.31.1"
        ) from error
    return onnx, onnxruntime


class _BaseGraph(nn.Module):
    """Raw pixels -> (B, P, 2): the vanilla network, with a static point axis in the exported graph."""

    def __init__(self, model: VanillaTCNN):
        super().__init__()
        self.model = model
        self.points = model.config.num_points

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model(crops).reshape(-1, self.points, 2)


class _TweakedGraph(nn.Module):
    """Raw pixels -> ((B, P, 2) lips from the gated head, (B,) int64 cluster, (B, K, P, 2) every head's lips:
    flip averaging takes the mirror image's lips from the plain crop's head)."""

    def __init__(self, model: TweakedTCNN):
        super().__init__()
        self.model = model
        self.points = model.config.num_points

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heads, clusters = self.model.all_heads(crops)
        heads = heads.reshape(heads.shape[0], -1, self.points, 2)
        return select_heads(heads, clusters).reshape(-1, self.points, 2), clusters, heads


def base_network(model: VanillaTCNN | TweakedTCNN) -> VanillaTCNN:
    """The vanilla network inside a model: itself, or a tweaked model's normaliser + trunk + base head."""
    if isinstance(model, VanillaTCNN):
        return model.eval()
    vanilla = VanillaTCNN(model.config)
    vanilla.normaliser.load_state_dict(model.normaliser.state_dict())
    vanilla.trunk.load_state_dict(model.trunk.state_dict())
    vanilla.head.load_state_dict(model.base_head.state_dict())
    return vanilla.eval()


def _to_onnx_bytes(module: nn.Module, example: torch.Tensor, outputs: list[str], opset: int, exporter: str) -> bytes:
    module = module.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its successor
        warnings.simplefilter("ignore", FutureWarning)
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
                do_constant_folding=True,
            )
            return buffer.getvalue()
        try:
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise ExportError(
                "exporter='dynamo' needs the 'onnxscript' package (pip install onnxscript==0.7.2)"
            ) from error
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={"crops": {0: batch}},
            external_data=False,
            verbose=False,
        )
        return program.model_proto.SerializeToString()


def _check_graph(onnx: Any, data: bytes, name: str, opset: int) -> None:
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)  # full_check also runs strict shape inference
    version = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    if version != opset:
        raise ExportError(f"{name}: exported with opset {version}, asked for {opset}")


def _verify(data: bytes, module: nn.Module, probe: torch.Tensor, name: str) -> dict[str, Any]:
    """Run the exported graph on `probe` and compare with torch; raise when they disagree."""
    session = session_from(data, threads=1)
    got = session.run(None, {INPUT_NAME: probe.numpy()})
    with torch.no_grad():
        expected = module(probe)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    lips_ort, lips_torch = got[0], expected[0].numpy()
    same = np.ones(len(probe), bool)
    if len(expected) > 1:  # tweaked: the heads chosen, then lips where the same head was chosen
        same = got[1] == expected[1].numpy()
        if not same.all():  # only a near tie of the gate may flip the choice
            with torch.no_grad():
                model = module.model
                scores = model.gate.log_joint(model.base_head.features(model.trunk(model.normaliser(probe)))).numpy()
            rows = np.flatnonzero(~same)
            gap = scores[rows].max(axis=1) - scores[rows, got[1][rows]]
            if (gap > 1e-4 * np.maximum(1.0, np.abs(scores[rows]).max(axis=1))).any():
                raise ExportError(
                    f"{name}: onnxruntime chose another head than torch for {len(rows)}/{len(same)} probe crops"
                )
    difference = float(np.abs(lips_ort[same] - lips_torch[same]).max())
    if len(expected) > 2:  # every head's lips, whichever the gate chose
        difference = max(difference, float(np.abs(got[2] - expected[2].numpy()).max()))
    if not np.isfinite(difference) or difference > VERIFY_TOLERANCE:
        raise ExportError(f"{name}: onnxruntime and torch differ by {difference:.3g} (tolerance {VERIFY_TOLERANCE})")
    return {"max_abs_difference": difference, "cluster_agreement": float(same.mean())}


def _io_spec(name: str, shape: list[int | str], dtype: str, description: str) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype, "description": description}


def export_onnx(
    model_folder: Path, out_dir: Path, opset: int = 17, exporter: str = "torchscript", verify: bool = True
) -> dict[str, Any]:
    """Export a model folder to ONNX (see the module docstring); returns a summary of what was written.

    `verify` runs each graph in onnxruntime on random crops and raises ExportError if it disagrees
    with torch. Raises ModelFolderError (a RuntimeError) when `model_folder` is not a model folder.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 13:
        raise ValueError(f"opset must be an integer >= 13 (GatherElements, Einsum, dynamic axes), got {opset!r}")
    onnx, onnxruntime = _require_onnx()
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    model, geometry, meta = load_tcnn(model_folder)
    model = model.cpu().eval()
    config = model.config
    size, channels, points = config.input_size, config.in_channels, config.num_points
    example = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 255.0
    probe = torch.rand(7, channels, size, size, generator=torch.Generator().manual_seed(1)) * 255.0

    graphs: list[tuple[str, nn.Module, list[str]]] = [(BASE_FILE, _BaseGraph(base_network(model)), ["lips"])]
    if isinstance(model, TweakedTCNN):
        graphs.append((TWEAKED_FILE, _TweakedGraph(model), ["lips", "cluster", "head_lips"]))

    exported: dict[str, bytes] = {}
    verification: dict[str, Any] = {}
    for name, module, outputs in graphs:
        data = _to_onnx_bytes(module, example, outputs, opset, exporter)
        _check_graph(onnx, data, name, opset)
        if verify:
            verification[name] = _verify(data, module, probe, name)
        exported[name] = data

    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / TWEAKED_FILE
    if TWEAKED_FILE not in exported and stale.exists():
        stale.unlink()  # a previous tweaked export here would not match this vanilla model
    for name, data in exported.items():
        write_bytes_atomic(out_dir / name, data)

    crops_spec = _io_spec(
        INPUT_NAME,
        ["batch", channels, size, size],
        "float32",
        "raw pixel values in [0, 255], channels in BGR order (as OpenCV reads them), layout NCHW: "
        "uint8 crops (B, S, S, 3) -> transpose(0, 3, 1, 2).astype(float32); no other normalisation "
        "(the mean/std images are inside the graph)",
    )
    lips_spec = _io_spec(
        "lips",
        ["batch", points, 2],
        "float32",
        "(x, y) per lip point in normalised crop coordinates: 0 at the crop centre, the crop spans "
        "[-0.5, 0.5); crop pixel = value * S + (S - 1) / 2",
    )
    cluster_spec = _io_spec("cluster", ["batch"], "int64", "index of the GMM component, i.e. the fine-tuned head used")
    heads_spec = _io_spec(
        "head_lips",
        ["batch", len(model.heads) if isinstance(model, TweakedTCNN) else 0, points, 2],
        "float32",
        "every head's lips; flip averaging takes the mirror image's from the plain crop's head",
    )
    models: dict[str, Any] = {
        "base": {
            "file": BASE_FILE,
            "inputs": [crops_spec],
            "outputs": [lips_spec],
            "description": "vanilla TCNN (the base head): no gating",
        },
    }
    if TWEAKED_FILE in exported:
        models["tweaked"] = {
            "file": TWEAKED_FILE,
            "inputs": [crops_spec],
            "outputs": [lips_spec, cluster_spec, heads_spec],
            "components": len(model.heads),
            "description": "tweaked TCNN: the GMM gate on base-head FC5 features picks one of the heads",
        }
    for entry in models.values():
        data = exported[entry["file"]]
        entry["bytes"] = len(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        if entry["file"] in verification:
            entry["verification"] = verification[entry["file"]]

    sidecar = {
        "schema": ONNX_SCHEMA,
        "lipseg_version": __version__,
        "opset": opset,
        "exporter": exporter,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": onnxruntime.__version__,
        "kind": meta["kind"],
        "recommended": "tweaked" if "tweaked" in models else "base",
        "geometry": geometry.to_dict(),
        "models": models,
        "source_model": {"folder": str(model_folder), "schema": meta["schema"], "meta": meta},
        "weights_sha256": weights_digest(model_folder),  # a folder's shipped export is used only for these weights
    }
    write_json_atomic(out_dir / SIDECAR_FILE, sidecar)  # last: its presence marks a finished export
    return {
        "out_dir": str(out_dir),
        "kind": meta["kind"],
        "opset": opset,
        "files": {name: str(out_dir / name) for name in [*exported, SIDECAR_FILE]},
        "bytes": {name: len(data) for name, data in exported.items()},
        "verification": verification,
    }
