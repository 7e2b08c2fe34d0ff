from __future__ import annotations

import importlib.util
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lipseg.core import tracking

PYFUNC = Path(importlib.util.find_spec("lipseg.inference.pyfunc").origin)


def runs_by_name(experiment_id: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for run in MlflowClient().search_runs([experiment_id]):
        found.setdefault(run.info.run_name, []).append(run)
    return found


def test_stages_of_one_pipeline_share_a_parent(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "pipeline-A")
    with tracking.stage_run("crop", {"size": 40, "augment": {"flip": True}}) as run:
        run.log_metrics({"crops": 10.0})
    with tracking.stage_run("train_base", {"lr": 0.001}) as run:
        run.log_metrics({"val_nme": 0.5}, step=1)
        run.log_metrics({"best": 0.4}, to_parent=True)
        with run.child("head_0", {"cluster": 0}) as child:
            child.log_metrics({"val_nme": 0.3}, step=1)
    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "pipeline-B")
    with tracking.stage_run("crop", {"size": 48, "augment": {"flip": True}}):
        pass

    assert mlflow.get_tracking_uri() == mlflow_store
    experiment_id = mlflow.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    runs = runs_by_name(experiment_id)
    client = MlflowClient()
    parent_keys = sorted(
        client.get_run(r.data.tags["mlflow.parentRunId"]).data.tags[tracking.PIPELINE_KEY_TAG] for r in runs["crop"]
    )
    assert parent_keys == ["pipeline-A", "pipeline-B"]
    assert sum(name.startswith("pipeline ") for name in runs for _ in runs[name]) == 2
    train = runs["train_base"][0]
    crop_a = next(r for r in runs["crop"] if r.data.tags[tracking.PIPELINE_KEY_TAG] == "pipeline-A")
    assert train.data.tags["mlflow.parentRunId"] == crop_a.data.tags["mlflow.parentRunId"]
    assert train.data.tags[tracking.STAGE_TAG] == "train_base"
    assert "git_commit" in train.data.tags and train.data.params["lr"] == "0.001"
    assert crop_a.data.params["augment.flip"] == "True"
    parent = MlflowClient().get_run(train.data.tags["mlflow.parentRunId"])
    assert parent.data.params["crop.size"] == "40" and parent.data.metrics["best"] == 0.4
    head = runs["head_0"][0]
    assert head.data.tags["mlflow.parentRunId"] == train.info.run_id


def test_default_store_is_sqlite_at_the_project_root(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "stages").mkdir()
    monkeypatch.chdir(tmp_path / "stages")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_registered_model_round_trip(mlflow_store: str, monkeypatch: pytest.MonkeyPatch, tiny_model_folder) -> None:
    """evaluate registers lipseg-tcnn; `lipseg predict --model models:/lipseg-tcnn@champion` gets it back."""
    import numpy as np

    from lipseg.inference.models import resolve_model
    from lipseg.tcnn.model import load_tcnn
    from lipseg.tcnn.predict import predict_crops

    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "registry")
    crops = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    model, _, _ = load_tcnn(tiny_model_folder)
    expected = predict_crops(model, crops, flip_average=True).lips
    assert np.abs(expected - predict_crops(model, crops).lips).max() > 1e-4  # the setting matters for this model
    with tracking.stage_run("evaluate", {}) as run:
        version = run.register_model(tiny_model_folder, PYFUNC, crops, expected, model_config={"flip_average": True})
    assert version == "1"
    folder = resolve_model("models:/lipseg-tcnn@champion")
    reloaded, _, meta = load_tcnn(folder)
    np.testing.assert_array_equal(predict_crops(reloaded, crops, flip_average=True).lips, expected)
    assert meta["kind"] == "tweaked"
    pyfunc = mlflow.pyfunc.load_model("models:/lipseg-tcnn@champion")
    np.testing.assert_allclose(pyfunc.predict(crops), expected, atol=1e-6)
    signature = pyfunc.metadata.signature
    assert signature is not None and tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 40, 40, 3)


def test_a_pipeline_key_survives_a_clock_step() -> None:
    """Two stages of one `dvc repro` must find the same parent run. psutil's create_time() moves when the
    system clock is stepped (seen: 1-3 s between stages, three parent runs for one repro), so the key uses
    the process start that does not."""
    import subprocess
    import sys

    # A stand-in `dvc repro` process runs a stage that asks for its ancestor twice, the clock stepping between.
    stage = (
        "import itertools, os, psutil; from lipseg.core import tracking; steps = itertools.count(); "
        "real = psutil.Process.create_time; "
        "psutil.Process.create_time = lambda self: 1000.0 + next(steps) if self.pid == os.getppid() else real(self); "
        "print(tracking._dvc_ancestor() == tracking._dvc_ancestor() is not None)"
    )
    dvc = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {stage!r}])"
    done = subprocess.run([sys.executable, "-c", dvc, "dvc", "repro"], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True", done.stderr
