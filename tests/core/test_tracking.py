from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from lipseg.core import tracking


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


def test_registered_model_round_trip(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch, tiny_model_folder, capsys: pytest.CaptureFixture
) -> None:
    """evaluate registers lipseg-tcnn; `lipseg predict --model models:/lipseg-tcnn@champion` gets it back."""
    import numpy as np
    import yaml

    from lipseg.inference.models import resolve_model
    from lipseg.inference.pyfunc import crop_model_package
    from lipseg.tcnn.model import load_tcnn
    from lipseg.tcnn.predict import predict_crops

    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "registry")
    crops = np.random.default_rng(0).integers(0, 255, (3, 40, 40, 3), dtype=np.uint8)
    model, _, _ = load_tcnn(tiny_model_folder)
    expected = predict_crops(model, crops, flip_average=True).lips
    assert np.abs(expected - predict_crops(model, crops).lips).max() > 1e-4  # the setting matters for this model
    with tracking.stage_run("evaluate", {}) as run:
        promotion = run.register(
            tracking.MODEL_NAME,
            lambda staging: crop_model_package(
                tiny_model_folder, crops, expected, staging, model_config={"flip_average": True}
            ),
            tracking.Merit("val.tweaked.f1_lips", 0.5, data="d"),
        )
    assert promotion.version == "1" and promotion.promoted
    assert "registered lipseg-tcnn version 1 (challenger); promoted: the first champion" in capsys.readouterr().out
    client = MlflowClient()
    version = client.get_model_version_by_alias(tracking.MODEL_NAME, "champion")
    assert str(version.version) == "1" and version.tags[tracking.PROMOTION_TAG] == promotion.decision
    assert client.get_run(run.run_id).data.tags[f"{tracking.PROMOTION_TAG}.lipseg-tcnn"] == promotion.decision
    folder = resolve_model("models:/lipseg-tcnn@champion")
    reloaded, _, meta = load_tcnn(folder)
    np.testing.assert_array_equal(predict_crops(reloaded, crops, flip_average=True).lips, expected)
    assert meta["kind"] == "tweaked"
    pyfunc = mlflow.pyfunc.load_model("models:/lipseg-tcnn@champion")
    np.testing.assert_allclose(pyfunc.predict(crops), expected, atol=1e-6)
    signature = pyfunc.metadata.signature
    assert signature is not None and tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 40, 40, 3)
    # Packed for a fresh environment: the source as code_paths, real pinned requirements, an example.
    local = Path(mlflow.artifacts.download_artifacts("models:/lipseg-tcnn@champion"))
    requirements = (local / "requirements.txt").read_text().split()
    assert not [line for line in requirements if line.split("==")[0] == "lipseg"]
    assert {"torch", "numpy", "safetensors"} <= {line.split("==")[0] for line in requirements}
    code = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["code"]
    assert (local / code / "lipseg" / "tcnn" / "model.py").is_file()
    assert (local / "input_example.json").is_file()


def register_version(client: MlflowClient, name: str, merit: tracking.Merit) -> tracking.Promotion:
    """A bare registered version (no model files: promotion reads only the registry) judged on `merit`."""
    import contextlib

    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="file:///nowhere", run_id=None)
    return tracking.promote_on_merit(client, name, version.version, merit)


def test_the_champion_moves_only_to_a_better_version(mlflow_store: str) -> None:
    mlflow.set_tracking_uri(mlflow_store)
    client = MlflowClient()
    judged = [
        (0.80, "d", True, "promoted: the first champion"),
        (0.79, "d", False, "kept version 1: val.f1_lips 0.7900 <= 0.8000"),
        (0.80, "d", False, "kept version 1: val.f1_lips 0.8000 <= 0.8000"),  # a tie keeps the champion
        (0.83, "d", True, "promoted: val.f1_lips 0.8300 > 0.8000 of version 1"),
        (0.99, "other", False, "kept version 4: its val.f1_lips was measured on other validation data"),
        (float("nan"), "d", False, "kept version 4: val.f1_lips is nan"),
    ]
    for number, (value, data, promoted, decision) in enumerate(judged, start=1):
        promotion = register_version(client, "photos", tracking.Merit("val.f1_lips", value, data=data))
        assert (promotion.version, promotion.promoted) == (str(number), promoted)
        assert promotion.decision.startswith(decision), promotion.decision
        assert str(client.get_model_version_by_alias("photos", "challenger").version) == str(number)
        assert client.get_model_version("photos", str(number)).tags[tracking.PROMOTION_TAG] == promotion.decision
    assert str(client.get_model_version_by_alias("photos", "champion").version) == "4"
    # Lower is better (an error such as NME): 0.05 beats 0.06, 0.07 does not.
    for value, champion in ((0.06, "1"), (0.07, "1"), (0.05, "3")):
        register_version(client, "nme", tracking.Merit("val.nme_io", value, higher_is_better=False, data="d"))
        assert str(client.get_model_version_by_alias("nme", "champion").version) == champion


def test_lipseg_register_0_registers_nothing(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "pull-request")
    monkeypatch.setenv("LIPSEG_REGISTER", "0")
    packed = []
    with tracking.stage_run("evaluate", {}) as run:
        assert run.register("lipseg", packed.append, tracking.Merit("val.f1_lips", 0.9)) is None
    assert packed == []  # not even packed
    assert MlflowClient().search_registered_models() == []
    assert "evaluate: LIPSEG_REGISTER=0: lipseg not registered" in capsys.readouterr().out


def test_a_model_look_up_outside_a_project_creates_no_store(tmp_path: Path, face_photo: Path) -> None:
    """`lipseg predict --model models:/...` with no MLFLOW_TRACKING_URI and no project: one clear error,
    exit status 2, and no mlflow.db or mlruns left behind."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipseg",
            "predict",
            str(face_photo),
            "--out",
            "out",
            "--model",
            "models:/lipseg@champion",
        ],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot look up models:/lipseg@champion: no MLflow store" in done.stderr
    assert "MLFLOW_TRACKING_URI" in done.stderr and "Traceback" not in done.stderr
    assert sorted(path.name for path in empty.iterdir()) == []
    assert tracking.missing_local_store(f"sqlite:///{empty / 'mlflow.db'}") == empty / "mlflow.db"
    assert tracking.missing_local_store("http://mlflow.example:5000") is None


def test_stage_runs_name_their_data_by_dvc_digest_and_training_runs_log_system_metrics(
    mlflow_store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A stage run logs each data dep with the md5 dvc.lock records for it (the upstream stage's outs);
    a dep dvc.lock does not name gets a sha256 of its files; a training stage samples system metrics."""
    import time

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train_base:\n    cmd: python stages/train_base.py\n"
        "    deps: [stages/train_base.py, src/lipseg/core/fit.py, data/crops, data/extra]\n"
    )
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  crop:\n    cmd: python stages/crop.py\n"
        "    outs:\n    - path: data/crops\n      hash: md5\n      md5: 0123456789abcdef0123456789abcdef.dir\n"
    )
    (tmp_path / "data" / "extra").mkdir(parents=True)
    (tmp_path / "data" / "extra" / "a.txt").write_text("a")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    monkeypatch.setenv("LIPSEG_PIPELINE_ID", "lineage")
    with tracking.stage_run("train_base", {}) as run:
        time.sleep(1.5)
    logged = MlflowClient().get_run(run.run_id)
    inputs = {item.dataset.name: item for item in logged.inputs.dataset_inputs}
    assert sorted(inputs) == ["data/crops", "data/extra"]
    assert inputs["data/crops"].dataset.digest == "0123456789abcdef0123456789abcdef.dir"
    tags = {tag.key: tag.value for tag in inputs["data/crops"].tags}
    assert tags["mlflow.data.context"] == "training" and tags["lipseg.digest_from"] == "dvc.lock: outs of crop"
    assert len(inputs["data/extra"].dataset.digest) == 32
    assert any(key.startswith("system/") for key in logged.data.metrics), sorted(logged.data.metrics)


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
