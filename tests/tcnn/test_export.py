"""ONNX export: the exported graphs reproduce torch (lips and gate choices) and describe themselves.

onnx and onnxruntime are pinned dependencies, so these tests fail (not skip) when they are missing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from lipseg.core.model_folder import META_FILE, ModelFolderError
from lipseg.data.geometry import CropGeometry
from lipseg.tcnn.export import (
    BASE_FILE,
    ONNX_SCHEMA,
    SIDECAR_FILE,
    TWEAKED_FILE,
    ExportError,
    export_onnx,
    onnx_session,
    time_onnx,
)
from lipseg.tcnn.gmm import GMMConfig, fit_gmm, full_precision_cholesky
from lipseg.tcnn.model import TCNNConfig, TweakedTCNN, VanillaTCNN, load_tcnn

COMPONENTS = 3
ATOL = 1e-4


def _crops(count: int, seed: int, size: int = 40) -> np.ndarray:
    """Raw float pixel crops (B, 3, S, S) in [0, 255] of three kinds (dark, bright, striped), so the
    gate's features form clusters."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 3, count)
    base = np.where(kinds == 0, 40.0, 200.0)[:, None, None, None] * np.ones((count, 3, size, size))
    stripes = (np.arange(size) // 4 % 2 * 180.0)[None, None, :, None]
    base = np.where((kinds == 2)[:, None, None, None], stripes + 30.0, base)
    noisy = base + rng.normal(0.0, 25.0, base.shape) + rng.normal(0.0, 20.0, (count, 3, 1, 1))
    return np.clip(noisy, 0.0, 255.0).astype(np.float32)


def _vanilla(seed: int) -> VanillaTCNN:
    torch.manual_seed(seed)
    model = VanillaTCNN(TCNNConfig()).eval()
    rng = np.random.default_rng(seed)
    mean = rng.uniform(90.0, 160.0, (40, 40, 3)).astype(np.float32)
    std = rng.uniform(30.0, 70.0, (40, 40, 3)).astype(np.float32)
    model.normaliser.set_images(mean, std)
    return model


def _tweaked(seed: int) -> TweakedTCNN:
    model = TweakedTCNN.from_vanilla(_vanilla(seed), COMPONENTS).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for index, head in enumerate(model.heads):  # each head its own tweak, so choosing matters
            for parameter in head.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05 * (index + 1))
        features = model.base_head.features(model.trunk(model.normaliser(torch.from_numpy(_crops(300, seed)))))
    mixture, _ = fit_gmm(features.numpy(), GMMConfig(k=COMPONENTS, covariance_type="diag", n_init=1, seed=seed))
    model.gate.set_mixture(mixture.weights_, mixture.means_, full_precision_cholesky(mixture))
    return model


@pytest.fixture(scope="module")
def tweaked_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[TweakedTCNN, Path, Path, dict]:
    root = tmp_path_factory.mktemp("tweaked")
    _tweaked(3).save(root / "model", CropGeometry().to_dict(), extra={"note": "test model"})
    model, _, _ = load_tcnn(root / "model")
    summary = export_onnx(root / "model", root / "onnx")
    return model, root / "model", root / "onnx", summary


@pytest.fixture(scope="module")
def vanilla_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[VanillaTCNN, Path, Path, dict]:
    root = tmp_path_factory.mktemp("vanilla")
    _vanilla(5).save(root / "model", CropGeometry().to_dict())
    model, _, _ = load_tcnn(root / "model")
    summary = export_onnx(root / "model", root / "onnx")
    return model, root / "model", root / "onnx", summary


@pytest.mark.parametrize("batch", [1, 17])
def test_tweaked_onnx_matches_torch(tweaked_export, batch: int) -> None:
    model, _, onnx_dir, _ = tweaked_export
    crops = _crops(batch, seed=100 + batch)
    with torch.no_grad():
        lips, clusters = model.forward_with_clusters(torch.from_numpy(crops))
    got_lips, got_clusters, _ = onnx_session(onnx_dir / TWEAKED_FILE).run(None, {"crops": crops})
    assert got_lips.shape == (batch, 56, 2) and got_lips.dtype == np.float32
    assert got_clusters.shape == (batch,) and got_clusters.dtype == np.int64
    np.testing.assert_array_equal(got_clusters, clusters.numpy())
    np.testing.assert_allclose(got_lips, lips.numpy(), rtol=0, atol=ATOL)
    if batch > 1:  # the gate really routes: several heads are chosen, and they give different lips
        assert len(np.unique(got_clusters)) >= 2
        with torch.no_grad():
            base = model.base_head(model.trunk(model.normaliser(torch.from_numpy(crops)))).numpy()
        assert np.abs(got_lips - base).max() > 1e-2


@pytest.mark.parametrize("batch", [1, 17])
def test_base_onnx_of_tweaked_is_the_base_head(tweaked_export, batch: int) -> None:
    model, _, onnx_dir, _ = tweaked_export
    crops = _crops(batch, seed=200 + batch)
    with torch.no_grad():
        expected = model.base_head(model.trunk(model.normaliser(torch.from_numpy(crops)))).numpy()
    outputs = onnx_session(onnx_dir / BASE_FILE).run(None, {"crops": crops})
    assert len(outputs) == 1
    np.testing.assert_allclose(outputs[0], expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("batch", [1, 17])
def test_vanilla_onnx_matches_torch(vanilla_export, batch: int) -> None:
    model, _, onnx_dir, summary = vanilla_export
    assert not (onnx_dir / TWEAKED_FILE).exists() and set(summary["files"]) == {BASE_FILE, SIDECAR_FILE}
    crops = _crops(batch, seed=300 + batch)
    with torch.no_grad():
        expected = model(torch.from_numpy(crops)).numpy()
    (got,) = onnx_session(onnx_dir / BASE_FILE).run(None, {"crops": crops})
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_batch_axis_is_dynamic(tweaked_export) -> None:
    _, _, onnx_dir, _ = tweaked_export
    for name, outputs in [
        (BASE_FILE, [["batch", 56, 2]]),
        (TWEAKED_FILE, [["batch", 56, 2], ["batch"], ["batch", COMPONENTS, 56, 2]]),
    ]:
        session = onnx_session(onnx_dir / name)
        (crops,) = session.get_inputs()
        assert crops.name == "crops" and crops.type == "tensor(float)" and crops.shape == ["batch", 3, 40, 40]
        assert [output.shape for output in session.get_outputs()] == outputs
        for batch in (2, 5, 64):  # sizes never traced
            results = session.run(None, {"crops": _crops(batch, seed=batch)})
            assert all(len(result) == batch for result in results)
    types = [output.type for output in onnx_session(onnx_dir / TWEAKED_FILE).get_outputs()]
    assert types == ["tensor(float)", "tensor(int64)", "tensor(float)"]
    proto = onnx.load(str(onnx_dir / TWEAKED_FILE))
    assert [entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")] == [17]


def test_sidecar_describes_the_export(tweaked_export) -> None:
    _, model_dir, onnx_dir, summary = tweaked_export
    sidecar = json.loads((onnx_dir / SIDECAR_FILE).read_text(encoding="utf-8"))
    source_meta = json.loads((model_dir / META_FILE).read_text(encoding="utf-8"))
    assert sidecar["schema"] == ONNX_SCHEMA and sidecar["opset"] == 17 and sidecar["kind"] == "tweaked"
    assert sidecar["geometry"] == CropGeometry().to_dict()
    assert sidecar["source_model"]["schema"] == source_meta["schema"]
    assert sidecar["source_model"]["meta"] == source_meta and source_meta["note"] == "test model"
    assert sidecar["recommended"] == "tweaked" and set(sidecar["models"]) == {"base", "tweaked"}
    tweaked = sidecar["models"]["tweaked"]
    assert tweaked["file"] == TWEAKED_FILE and tweaked["components"] == COMPONENTS
    assert [spec["name"] for spec in tweaked["inputs"]] == ["crops"]
    assert tweaked["inputs"][0]["shape"] == ["batch", 3, 40, 40] and tweaked["inputs"][0]["dtype"] == "float32"
    assert [(spec["name"], spec["shape"], spec["dtype"]) for spec in tweaked["outputs"]] == [
        ("lips", ["batch", 56, 2], "float32"),
        ("cluster", ["batch"], "int64"),
        ("head_lips", ["batch", COMPONENTS, 56, 2], "float32"),
    ]
    assert [spec["name"] for spec in sidecar["models"]["base"]["outputs"]] == ["lips"]
    for entry in sidecar["models"].values():  # the sidecar's names and shapes are the graphs' own
        data = (onnx_dir / entry["file"]).read_bytes()
        assert entry["bytes"] == len(data) == summary["bytes"][entry["file"]]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        session = onnx_session(onnx_dir / entry["file"])
        assert [(node.name, node.shape) for node in session.get_outputs()] == [
            (spec["name"], spec["shape"]) for spec in entry["outputs"]
        ]
        assert entry["verification"]["max_abs_difference"] < 1e-3
    assert set(summary["files"]) == {BASE_FILE, TWEAKED_FILE, SIDECAR_FILE}
    assert all(Path(path).is_file() for path in summary["files"].values())
    assert not [path for path in onnx_dir.iterdir() if path.name.endswith(".tmp")]


def test_vanilla_export_replaces_a_stale_tweaked_graph(vanilla_export, tmp_path: Path) -> None:
    _, model_dir, _, _ = vanilla_export
    (tmp_path / TWEAKED_FILE).write_bytes(b"left from an earlier export")
    export_onnx(model_dir, tmp_path, verify=False)
    sidecar = json.loads((tmp_path / SIDECAR_FILE).read_text(encoding="utf-8"))
    assert not (tmp_path / TWEAKED_FILE).exists()
    assert sidecar["kind"] == "vanilla" and sidecar["recommended"] == "base" and set(sidecar["models"]) == {"base"}


def test_not_a_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelFolderError, match="not a lipseg model folder"):
        export_onnx(tmp_path, tmp_path / "onnx")
    with pytest.raises(ModelFolderError, match="not a lipseg model folder"):
        export_onnx(tmp_path / "missing", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_missing_onnxruntime_is_a_clear_error(tweaked_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, model_dir, _, _ = tweaked_export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(ExportError, match="pip install onnx"):
        export_onnx(model_dir, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_bad_arguments(tweaked_export, tmp_path: Path) -> None:
    _, model_dir, onnx_dir, _ = tweaked_export
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model_dir, tmp_path, exporter="tflite")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model_dir, tmp_path, opset=9)
    with pytest.raises(FileNotFoundError):
        onnx_session(tmp_path / "nothing.onnx")
    with pytest.raises(ValueError, match="threads"):
        onnx_session(onnx_dir / BASE_FILE, threads=0)


def test_session_threads_and_timing(tweaked_export) -> None:
    _, _, onnx_dir, _ = tweaked_export
    options = onnx_session(onnx_dir / TWEAKED_FILE, threads=2).get_session_options()
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 2
    assert onnxruntime.get_device() == "CPU" or "CPUExecutionProvider" in onnxruntime.get_available_providers()
    milliseconds = time_onnx(onnx_dir / TWEAKED_FILE, _crops(8, seed=1), repeats=3)
    assert np.isfinite(milliseconds) and milliseconds > 0
    with pytest.raises(ValueError, match="crops"):
        time_onnx(onnx_dir / TWEAKED_FILE, np.zeros((3, 40, 40), np.float32), repeats=1)


def test_flip_averaging_sends_the_mirror_image_through_the_plain_crops_head(tweaked_export) -> None:
    """The gate decides once per face: in torch and in onnxruntime, the mirrored crop is read by the head the
    plain crop chose, even where the gate alone would pick another head for the mirror image."""
    from lipseg.core.tta import average_with_mirror
    from lipseg.data.landmarks import flip_lips
    from lipseg.tcnn.export import OnnxCropRunner
    from lipseg.tcnn.predict import predict_crops

    model, folder, _, _ = tweaked_export
    crops = np.ascontiguousarray(_crops(200, 11).transpose(0, 2, 3, 1)).clip(0, 255).astype(np.uint8)  # (B, S, S, 3)
    batch = torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float()
    with torch.no_grad():
        plain, chosen = model.forward_with_clusters(batch)
        heads_on_mirror, gated_on_mirror = model.all_heads(torch.flip(batch, dims=[3]))
    disagree = np.flatnonzero((chosen != gated_on_mirror).numpy())
    assert len(disagree) > 0, "no crop whose mirror image the gate sends elsewhere: the test would prove nothing"
    same_head = heads_on_mirror[torch.arange(len(batch)), chosen].numpy()
    expected = average_with_mirror(plain.numpy(), same_head, flip_lips)
    torch_result = predict_crops(model, crops, flip_average=True)
    np.testing.assert_allclose(torch_result.lips, expected, atol=1e-5)
    np.testing.assert_array_equal(torch_result.clusters, chosen.numpy())
    onnx_result = OnnxCropRunner(folder)(crops, flip_average=True)
    np.testing.assert_array_equal(onnx_result.clusters[disagree], chosen.numpy()[disagree])
    np.testing.assert_allclose(onnx_result.lips[disagree], expected[disagree], atol=1e-3)
