"""Every MLflow call of the project lives here: store location, pipeline/stage runs, registry.

Store: `MLFLOW_TRACKING_URI` when set (a team server), else a sqlite file `mlflow.db` at the project
root with artifacts under `mlruns/`. Stages never choose a URI themselves.

One `dvc repro` = one parent run. DVC starts each stage as a separate process, so the stages find
their common parent through the `dvc` process they descend from (its pid and start time form the
pipeline key); `LIPSEG_PIPELINE_ID` overrides that, e.g. for CI jobs.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from lipseg.core.params import flatten
from lipseg.core.paths import project_root as find_project_root

EXPERIMENT = "lipseg"
MODEL_NAME = "lipseg-tcnn"
PIPELINE_KEY_TAG = "lipseg.pipeline_key"
STAGE_TAG = "lipseg.stage"
KIND_TAG = "lipseg.kind"


def project_root() -> Path:
    """The project holding dvc.yaml, or the working directory outside any project."""
    return find_project_root() or Path.cwd().resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def configure() -> str:
    """Point MLflow at the store and the `lipseg` experiment; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        mlflow.set_experiment(experiment_id=experiment.experiment_id)
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        artifact_location = (project_root() / "mlruns").as_uri()
    with contextlib.suppress(mlflow.exceptions.MlflowException):  # a concurrent stage may win the race
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifact_location)
    return mlflow.set_experiment(EXPERIMENT).experiment_id


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=project_root()
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def process_start(process) -> float:
    """When `process` started, stable for its whole life. psutil's create_time() is derived from the boot
    time, which moves when the system clock is stepped (NTP), so two stages of one `dvc repro` could see
    their DVC process start at different times; on Linux the start in clock ticks since boot does not move."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        return float(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the "(comm)" field
    return process.create_time()


def _dvc_ancestor() -> tuple[int, float] | None:
    """(pid, start time) of the nearest ancestor process running DVC, if any."""
    import psutil

    with contextlib.suppress(psutil.Error):
        process = psutil.Process().parent()
        while process is not None:
            with contextlib.suppress(psutil.Error):
                command = " ".join(process.cmdline())
                if "dvc" in command and any(verb in command for verb in ("repro", " exp ", "exp run")):
                    return process.pid, process_start(process)
            process = process.parent()
    return None


def pipeline_key() -> str:
    explicit = os.environ.get("LIPSEG_PIPELINE_ID")
    if explicit:
        return explicit
    ancestor = _dvc_ancestor()
    pid, started = ancestor if ancestor else (os.getpid(), time.time())
    return f"{socket.gethostname()}-{pid}-{started:.3f}"


def _parent_run_id(experiment_id: str, key: str) -> str:
    client = MlflowClient()
    query = f"tags.`{PIPELINE_KEY_TAG}` = '{key}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
        tags={
            PIPELINE_KEY_TAG: key,
            KIND_TAG: "pipeline",
            "git_commit": git_commit(),
            "mlflow.source.git.commit": git_commit(),
        },
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


class StageRun:
    """What a running stage may log; wraps the child run (and reaches the parent for summaries)."""

    def __init__(self, run_id: str, parent_run_id: str, stage: str):
        self.run_id, self.parent_run_id, self.stage = run_id, parent_run_id, stage
        self.client = MlflowClient()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, to_parent: bool = False) -> None:
        clean = {key: float(value) for key, value in metrics.items() if value is not None and np.isfinite(value)}
        mlflow.log_metrics(clean, step=step)
        if to_parent:
            timestamp = int(time.time() * 1000)
            for key, value in clean.items():
                self.client.log_metric(self.parent_run_id, key, value, timestamp, step or 0)

    def log_history(self, records: list[dict[str, float]], keys: tuple[str, ...], step_key: str = "epoch") -> None:
        """Per-epoch curves in one batched call (one sqlite transaction instead of one per epoch)."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(key, float(record[key]), timestamp, int(record[step_key])) for record in records for key in keys
        ]
        for start in range(0, len(metrics), 1000):  # MLflow's per-batch limit
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_numbers(self, summary: dict[str, Any], prefix: str = "", to_parent: bool = False) -> None:
        """Log every numeric leaf of a nested summary dict as a metric (`a.b` names)."""
        numbers = {
            f"{prefix}{key}": value
            for key, value in flatten(summary).items()
            if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        }
        self.log_metrics(numbers, to_parent=to_parent)

    def log_reject_counts(self, counts: dict[str, int]) -> None:
        """`rejected` (the total, 0 included) and `rejected.<kind>` per reject kind, e.g.
        rejected.truncated_image; MLflow keys allow no parentheses or colons, hence the slugs."""
        metrics = {"rejected": sum(counts.values())}
        for kind, count in counts.items():
            metrics[f"rejected.{re.sub(r'[^a-z0-9]+', '_', kind.lower()).strip('_')}"] = count
        self.log_metrics(metrics)

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({key: str(value)[:6000] for key, value in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({key: str(value) for key, value in tags.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_dict(self, payload: dict, artifact_file: str) -> None:
        mlflow.log_dict(payload, artifact_file)

    @contextlib.contextmanager
    def child(self, name: str, params: dict[str, Any] | None = None) -> Iterator[StageRun]:
        """A run nested under this stage's run (one per fine-tuned head, for example)."""
        with mlflow.start_run(run_name=name, nested=True, tags={STAGE_TAG: self.stage}) as run:
            if params:
                self.log_params(params)
            yield StageRun(run.info.run_id, self.parent_run_id, self.stage)

    def register_model(
        self,
        model_folder: Path,
        code_path: Path,
        example_input: np.ndarray,
        example_output: np.ndarray,
        name: str = MODEL_NAME,
        alias: str = "champion",
        model_config: dict[str, Any] | None = None,
    ) -> str:
        """Log the model folder as a pyfunc (models-from-code: MLflow runs `code_path`, so nothing is
        pickled) with `model_config` (how it predicts), register it as `name` with a signature, and point
        `alias` at the new version."""
        from mlflow.models import infer_signature

        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code_path),
            artifacts={"model_folder": str(model_folder)},
            signature=infer_signature(example_input, example_output),
            model_config=model_config or {},
            input_example=None,
            pip_requirements=["lipseg", "torch==2.13.0", "safetensors", "numpy"],
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
        self.client.set_registered_model_alias(name, alias, version)
        return version


@contextlib.contextmanager
def stage_run(stage: str, params: dict[str, Any]) -> Iterator[StageRun]:
    """A child run for one DVC stage under the pipeline's parent run, tagged with commit and params."""
    experiment_id = configure()
    key = pipeline_key()
    parent_id = _parent_run_id(experiment_id, key)
    commit = git_commit()
    # MLflow keys allow no "@": a matrix stage such as train_segmenter@unet logs train_segmenter.unet.* on the parent.
    section_params = flatten(params, f"{stage.replace('@', '.')}.")
    with mlflow.start_run(run_id=parent_id):
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # already logged by a rerun
            mlflow.log_params({key_: str(value) for key_, value in section_params.items()})
        tags = {STAGE_TAG: stage, PIPELINE_KEY_TAG: key, "git_commit": commit, "mlflow.source.git.commit": commit}
        with mlflow.start_run(run_name=stage, nested=True, tags=tags) as run:
            mlflow.log_params({key_: str(value) for key_, value in flatten(params).items()})
            yield StageRun(run.info.run_id, parent_id, stage)


def download_artifacts(uri: str, target: Path) -> Path:
    """Download a logged or registered MLflow model's files (e.g. models:/lipseg-tcnn@champion) into
    `target`; RuntimeError naming the store when it cannot."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except mlflow.exceptions.MlflowException as error:
        raise RuntimeError(f"cannot load {uri} from {tracking_uri()}: {error.message}") from error
