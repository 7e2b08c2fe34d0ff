"""The photo-level MLflow model (lipseg.inference.photo_pyfunc): how it is packed (code_paths, complete
pinned requirements, input example, signature), that it answers as `lipseg predict` does, and, slow, that
`mlflow models serve` serves it over HTTP with the same answers."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as coco_mask

from lipseg.inference.cli import main
from lipseg.inference.models import RELEASE_SEGMENTER, RELEASE_TCNN
from lipseg.inference.outputs import PHOTO_MODEL_COLUMNS
from lipseg.inference.photo_pyfunc import answer_mask, pip_requirements, save_photo_model

HELEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "helen_sample"
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def photo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release TCNN and segmenter saved as the photo model, with lipseg predict's default options."""
    return save_photo_model(tmp_path_factory.mktemp("photo-model") / "model", RELEASE_TCNN, RELEASE_SEGMENTER)


@pytest.fixture
def photo(face_photo: Path) -> Path:
    """A real photo from the Helen sample when it is here, else a generated face."""
    names = (HELEN / "testnames.txt").read_text().split() if (HELEN / "testnames.txt").is_file() else []
    return HELEN / "images" / f"{names[0]}.jpg" if names else face_photo


def predicted(photo: Path, out: Path) -> tuple[dict, np.ndarray]:
    """`lipseg predict`'s JSON and label mask for `photo`, with the options the photo model was saved with;
    the JSON also holds, as `coco_annotations`, what `--format coco` writes for the photo (ids left out)."""
    arguments = ["predict", str(photo), "--model", str(RELEASE_TCNN), "--quiet", "--jobs", "1"]
    arguments += ["--mask-source", "segmenter", "--segmenter", str(RELEASE_SEGMENTER)]
    assert main([*arguments, "--out", str(out)]) == 0
    assert main([*arguments, "--out", str(out / "coco"), "--format", "coco"]) == 0
    payload = json.loads((out / f"{photo.stem}.json").read_text())
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    ids = ("id", "image_id")
    payload["coco_annotations"] = [{k: v for k, v in item.items() if k not in ids} for item in coco["annotations"]]
    return payload, np.array(Image.open(out / f"{photo.stem}.png"))  # palette indices or grey: the labels


def assert_same_answer(row: dict, payload: dict, mask: np.ndarray) -> float:
    """The served row equals lipseg predict's output; returns the largest lips point difference (pixels)."""
    assert row["error"] == "", row["error"]
    faces = json.loads(row["faces"])
    assert len(faces) == len(payload["faces"]) >= 1
    for face, expected in zip(faces, payload["faces"]):
        assert set(expected) <= set(face)  # every key lipseg predict writes per face
        for key in ("box", "crop_box", "score", "cluster", "head"):
            assert face[key] == expected[key], key
    difference = max(
        float(np.abs(np.array(face["lips"]) - np.array(expected["lips"])).max())
        for face, expected in zip(faces, payload["faces"])
    )
    assert difference == 0.0
    assert json.loads(row["image_size"]) == payload["image_size"]
    assert row["mask_source"] == payload["mask_source"]
    np.testing.assert_array_equal(answer_mask(row), mask)
    face_masks = json.loads(row["face_masks"])  # per face and lip class, as --format coco writes them
    assert face_masks == payload["coco_annotations"]
    assert {item["face"] for item in face_masks} == set(range(len(faces)))
    for label in (1, 2, 3):  # the faces' RLE masks of a class together are that class of the label mask
        rles = [
            dict(item["rle"], counts=item["rle"]["counts"].encode())
            for item in face_masks
            if item["category_id"] == label
        ]
        union = np.any([coco_mask.decode(rle) for rle in rles], axis=0) if rles else np.zeros_like(mask, bool)
        np.testing.assert_array_equal(union, mask == label)
    return difference


def test_the_model_ships_its_code_complete_pinned_requirements_an_example_and_a_signature(photo_model: Path) -> None:
    requirements = (photo_model / "requirements.txt").read_text().split()
    names = {line.split("==")[0].lower() for line in requirements if line and not line.startswith("-")}
    assert "lipseg" not in names  # no package index has it: the source travels as code_paths
    assert {"opencv-python-headless", "pyyaml", "dlib-bin", "face-recognition-models", "onnxruntime"} <= names
    assert all("==" in line for line in requirements if not line.startswith("-")), requirements
    # The ONNX engine runs the shipped exports: no torch (gigabytes) for a fresh environment to install.
    assert "torch" not in names and "torch" in {line.split("==")[0] for line in pip_requirements("torch")}
    flavor = yaml.safe_load((photo_model / "MLmodel").read_text())["flavors"]["python_function"]
    assert (photo_model / flavor["code"] / "lipseg" / "inference" / "predictor.py").is_file()
    assert not list((photo_model / flavor["code"]).rglob("*.safetensors"))  # weights are artifacts, once
    for artifact in ("tcnn", "segmenter"):  # the exports ship, so serving never needs torch to export
        assert list((photo_model / "artifacts" / artifact / "onnx").glob("*.onnx")), artifact
    example = json.loads((photo_model / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == ["image", "name"]
    assert base64.b64decode(example["dataframe_split"]["data"][0][0])[:2] == b"\xff\xd8"  # a JPEG photo
    signature = yaml.safe_load((photo_model / "MLmodel").read_text())["signature"]
    assert json.loads(signature["inputs"])[0] == {"type": "binary", "name": "image", "required": True}
    assert [column["name"] for column in json.loads(signature["outputs"])] == list(PHOTO_MODEL_COLUMNS)


def test_a_segmenter_onnx_cannot_export_is_packed_to_run_in_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Seen in the pipeline: pspnet's adaptive pooling on 32-pixel crops has no ONNX export. The photo
    model is still packed, to run in torch, with torch in its requirements."""
    import lipseg.core.onnx_runtime as onnx_runtime
    from lipseg.inference.photo_pyfunc import photo_model_package
    from lipseg.segmentation.onnx_runner import SIDECAR_FILE

    exports = onnx_runtime.export_for

    def no_segmenter_export(folder: Path, sidecar: str, export):
        if sidecar == SIDECAR_FILE:
            raise RuntimeError("Unsupported: ONNX export of operator adaptive_avg_pool2d\nmore lines")
        return exports(folder, sidecar, export)

    packed = photo_model_package(RELEASE_TCNN, RELEASE_SEGMENTER, tmp_path / "onnx")
    assert packed.model_config["engine"] == "onnx" and not any("torch" in r for r in packed.pip_requirements)
    monkeypatch.setattr(onnx_runtime, "export_for", no_segmenter_export)
    packed = photo_model_package(RELEASE_TCNN, RELEASE_SEGMENTER, tmp_path / "torch")
    assert packed.model_config["engine"] == "torch"
    assert {"torch", "safetensors"} <= {line.split("==")[0] for line in packed.pip_requirements}
    assert packed.artifacts == {"tcnn": str(RELEASE_TCNN), "segmenter": str(RELEASE_SEGMENTER)}
    assert "runs in torch: no ONNX export (Unsupported: ONNX export of operator adaptive_avg_pool2d)" in (
        capsys.readouterr().err
    )
    # Masks from the landmark polygons: the segmenter is carried, never run, so its export does not matter.
    packed = photo_model_package(RELEASE_TCNN, RELEASE_SEGMENTER, tmp_path / "landmarks", {"mask_source": "landmarks"})
    assert packed.model_config["engine"] == "onnx" and packed.artifacts["segmenter"] == str(RELEASE_SEGMENTER)


def test_loading_and_predicting_import_only_what_the_requirements_install(photo_model: Path) -> None:
    """In a fresh process: every third-party package the model imports is a requirement or installed by
    one, and lipseg comes from the model's own code folder, not from the installed package."""
    probe = f"""
import importlib.metadata as md, json, sys
import mlflow.pyfunc, pandas as pd
before = set(sys.modules)
model = mlflow.pyfunc.load_model({str(photo_model)!r})
example = json.load(open({str(photo_model / "serving_input_example.json")!r}))["dataframe_split"]
import base64
frame = pd.DataFrame([[base64.b64decode(row[0]), row[1]] for row in example["data"]], columns=example["columns"])
out = model.predict(frame)
assert out["error"].tolist() == [""], out["error"].tolist()
tops = {{name.split(".")[0] for name in set(sys.modules) - before}} - set(sys.stdlib_module_names)
owners = md.packages_distributions()
print(json.dumps({{"dists": sorted({{d for top in tops for d in owners.get(top, [])}}),
                  "lipseg": sys.modules["lipseg"].__file__}}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the models declare their signatures: MLflow's advice to type `predict` would only be noise in each process
    assert "Add type hints" not in done.stderr, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["lipseg"]).is_relative_to(photo_model / "code")
    required = {line.split("==")[0].lower() for line in (photo_model / "requirements.txt").read_text().split()}
    assert {"opencv-python-headless", "dlib-bin", "onnxruntime"} <= {dist.lower() for dist in found["dists"]}
    assert set(map(str.lower, found["dists"])) - {"lipseg"} <= installed_closure(required), found["dists"]


def installed_closure(names: set[str]) -> set[str]:
    """`names` and every distribution they require, transitively, as installed here (lower case)."""
    import importlib.metadata as metadata
    import re

    seen, todo = set(), [name.lower() for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!~\[(]", item, maxsplit=1)[0].lower() for item in requires if "extra ==" not in item]
    return {name.replace("_", "-") for name in seen} | seen


def test_the_model_answers_as_lipseg_predict(photo_model: Path, photo: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd

    payload, mask = predicted(photo, tmp_path / "out")
    model = mlflow.pyfunc.load_model(str(photo_model))
    answer = model.predict(pd.DataFrame({"image": [photo.read_bytes(), b"not a photo"], "name": ["a", "b"]}))
    assert list(answer.columns) == list(PHOTO_MODEL_COLUMNS)
    assert_same_answer(answer.iloc[0].to_dict(), payload, mask)
    assert answer.iloc[1]["error"] and answer.iloc[1]["faces"] == ""  # one bad photo, the batch goes on


def register_photo_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """The release TCNN and segmenter registered as evaluate_segmenters registers them, in the test's store
    (mlflow_store); returns the champion's URI."""
    from lipseg.core import tracking
    from lipseg.inference.photo_pyfunc import photo_model_package

    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "photo-registry")
    with tracking.stage_run("evaluate_segmenters", {}) as run:
        promotion = run.register(
            tracking.PHOTO_MODEL_NAME,
            lambda staging: photo_model_package(RELEASE_TCNN, RELEASE_SEGMENTER, staging),
            tracking.Merit("val.f1_lips", 0.8, data="d"),
        )
    assert promotion.promoted
    return f"models:/{tracking.PHOTO_MODEL_NAME}@{tracking.CHAMPION}"


@pytest.mark.slow
def test_the_registered_photo_model_is_what_lipseg_predict_uses_from_the_registry(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch, photo: Path, tmp_path: Path
) -> None:
    """evaluate_segmenters registers the photo model as `lipseg`; `lipseg predict --model
    models:/lipseg@champion` takes its TCNN and the segmenter it carries, and answers as with the folders."""
    model_uri = register_photo_model(monkeypatch)
    payload, mask = predicted(photo, tmp_path / "folders")
    out = tmp_path / "registry"
    arguments = ["predict", str(photo), "--out", str(out), "--model", model_uri, "--quiet"]
    assert main([*arguments, "--jobs", "1"]) == 0
    from_registry = json.loads((out / f"{photo.stem}.json").read_text())
    assert from_registry["faces"] == payload["faces"]
    assert from_registry["mask_source"] == payload["mask_source"]
    np.testing.assert_array_equal(np.array(Image.open(out / f"{photo.stem}.png")), mask)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(port: int, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}: {server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server did not answer /ping within {seconds} s")


PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "bin"  # MLflow's virtualenv manager asks pyenv
# MLflow builds the fresh virtualenv with pyenv's Python and about 1.2 GB from the package index (2-5 minutes
# cold, under a minute once MLflow's environment cache has it): the case mlflow models serve's users meet.
FRESH_ENVIRONMENT = pytest.param(
    "virtualenv",
    marks=pytest.mark.skipif(
        not (PYENV / "pyenv").is_file() and not shutil.which("pyenv"),
        reason=f"MLflow's virtualenv manager needs pyenv (not in {PYENV} nor on PATH): https://github.com/pyenv/pyenv",
    ),
)


@pytest.mark.slow
@pytest.mark.parametrize("env_manager", ["local", FRESH_ENVIRONMENT])
def test_mlflow_models_serve_answers_over_http_as_lipseg_predict(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch, photo: Path, tmp_path: Path, env_manager: str
) -> None:
    """`mlflow models serve -m models:/lipseg@champion` on 127.0.0.1, in this environment or in a fresh
    virtualenv built from the model's requirements alone; a photo POSTed as MLflow's JSON (base64 bytes)
    comes back with lipseg predict's points and masks."""
    model_uri = register_photo_model(monkeypatch)
    payload, mask = predicted(photo, tmp_path / "out")
    port = free_port()
    path = os.pathsep.join([str(VENV_BIN), os.environ["PATH"], str(PYENV)])
    # the server needs the store to find the model, and nothing else of the test's MLflow settings (an
    # experiment id set by the registration would point a fresh environment at an experiment it lacks)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": mlflow_store, "PATH": path}
    command = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", env_manager]
    server = subprocess.Popen(
        [*command, "-h", "127.0.0.1", "-p", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_until_up(port, server, 180 if env_manager == "local" else 1800)
        body = {
            "dataframe_split": {
                "columns": ["image", "name"],
                "data": [[base64.b64encode(photo.read_bytes()).decode(), photo.name]],
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        latencies = []
        for _ in range(3):  # the first request pays for nothing extra: the model loads at start-up
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=120) as reply:
                answer = json.loads(reply.read())
            latencies.append((time.perf_counter() - started) * 1000)
        rows = answer["predictions"]
        assert len(rows) == 1 and rows[0]["name"] == photo.name
        difference = assert_same_answer(rows[0], payload, mask)
        print(
            f"serving round trip ({env_manager}): {photo.name}, {len(json.loads(rows[0]['faces']))} face(s), latency "
            f"{min(latencies):.0f}-{max(latencies):.0f} ms, max point difference {difference}, masks equal"
        )
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
