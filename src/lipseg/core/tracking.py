"""Every MLflow call of the project lives here: store location, pipeline/stage runs, registry.

Store: `MLFLOW_TRACKING_URI` when set (a team server), else a sqlite file `mlflow.db` at the project
root with artifacts under `mlruns/` (the project's, also when `dvc exp run --queue/--temp` runs the stages
in a copy of it). Stages never choose a URI themselves.

One `dvc repro` = one parent run. DVC starts each stage as a separate process, so the stages find
their common parent through the `dvc` process they descend from (its pid and start time form the
pipeline key); `LIPSEG_PIPELINE_ID` overrides that, e.g. for CI jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from lipseg.core.lineage import DataInput, stage_inputs, validation_digest
from lipseg.core.packaging import PyfuncPackage
from lipseg.core.params import flatten
from lipseg.core.paths import RAW
from lipseg.core.paths import project_root as find_project_root

EXPERIMENT = "lipseg"
MODEL_NAME = "lipseg-tcnn"  # the TCNN alone: 48x48 mouth crops in, lip points out
PHOTO_MODEL_NAME = "lipseg"  # photos in, lips and masks out (lipseg.inference.photo_pyfunc)
CHAMPION, CHALLENGER = "champion", "challenger"
REGISTER_ENV = "LIPSEG_REGISTER"  # "0": register nothing (CI on pull requests)
PROMOTION_TAG = "lipseg.promotion"
MERIT_TAG = "lipseg.merit"  # on a version: the validation figure it was judged on, as JSON
PIPELINE_KEY_TAG = "lipseg.pipeline_key"
STAGE_TAG = "lipseg.stage"
KIND_TAG = "lipseg.kind"
TRAINING_STAGES = ("train_base", "finetune_heads", "train_segmenter")


# `dvc exp run --queue` runs in <root>/.dvc/tmp/exps/<tmp>/, `--temp` in <root>/.dvc/tmp/exps/standalone/<tmp>/.
DVC_EXPERIMENT_COPIES = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    """The project holding dvc.yaml, or the working directory outside any project. Inside one of DVC's
    experiment copies, the project the copy was made from: the copy is deleted when the experiment ends,
    and a store there would go with it."""
    found = find_project_root(start) or (start or Path.cwd()).resolve()
    parts, marker = found.parts, len(DVC_EXPERIMENT_COPIES)
    for index in range(len(parts) - marker):
        if parts[index : index + marker] == DVC_EXPERIMENT_COPIES:
            # The copy mirrors the repository, so dvc.yaml sits as deep below the copy as below the root.
            for copy_end in range(index + marker + 1, len(parts) + 1):
                original = Path(*parts[:index], *parts[copy_end:])
                if (original / "dvc.yaml").is_file():
                    return original
    return found


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

    def register(self, name: str, pack: Callable[[Path], PyfuncPackage], merit: Merit) -> Promotion | None:
        """Log the pyfunc that `pack(staging folder)` packs, register it as a new version of `name` with the
        alias `challenger`, and move `champion` to it only when its `merit` beats the champion's
        (promote_on_merit). The decision is a tag on the version and on this run, and one printed line.
        None, and nothing packed or registered, with LIPSEG_REGISTER=0 (pull-request CI runs)."""
        if not registration_enabled():
            print(f"{self.stage}: {REGISTER_ENV}=0: {name} not registered")
            return None
        with tempfile.TemporaryDirectory(prefix="lipseg-register-") as staging:
            arguments = pack(Path(staging)).mlflow_arguments()
            with untyped_predict_allowed():
                info = mlflow.pyfunc.log_model(name=name, registered_model_name=name, **arguments)
        version = str(info.registered_model_version)
        promotion = promote_on_merit(self.client, name, version, merit)
        self.client.set_tag(self.run_id, f"{PROMOTION_TAG}.{name}", promotion.decision)
        print(f"{self.stage}: registered {name} version {version} ({CHALLENGER}); {promotion.decision}")
        return promotion


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
        # CPU, memory and GPU use over time on the training runs (psutil, and pynvml where installed).
        training = stage.partition("@")[0] in TRAINING_STAGES
        with mlflow.start_run(run_name=stage, nested=True, tags=tags, log_system_metrics=training) as run:
            mlflow.log_params({key_: str(value) for key_, value in flatten(params).items()})
            log_data_inputs(stage, "training" if training else "evaluation")
            yield StageRun(run.info.run_id, parent_id, stage)


def log_data_inputs(stage: str, context: str) -> list[DataInput]:
    """mlflow.log_input of each data input of `stage`, named by its DVC digest (lipseg.core.lineage)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    root = project_root()
    inputs = stage_inputs(root, stage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local folder either way
        datasets = [
            MetaDataset(resolve_dataset_source(str(root / item.path)), name=item.path, digest=item.digest)
            for item in inputs
        ]
    if datasets:
        tags = [{"lipseg.digest_from": item.digest_from} for item in inputs]
        mlflow.log_inputs(datasets, contexts=[context] * len(datasets), tags_list=tags)
    return inputs


def save_pyfunc(path: Path, package: PyfuncPackage) -> Path:
    """An MLflow model folder at `path`, with no tracking store involved."""
    with untyped_predict_allowed():
        mlflow.pyfunc.save_model(path=str(path), **package.mlflow_arguments())
    return path


@contextlib.contextmanager
def untyped_predict_allowed() -> Iterator[None]:
    """Without MLflow's advice to type `predict`: the models declare their signatures explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*[Tt]ype hint", category=UserWarning)
        yield


def validation_data(names: list[str]) -> str:
    """The digest of the project's validation photos (`names`, held out of data/raw) that a Merit records."""
    return validation_digest(project_root(), RAW.as_posix(), names)


def registration_enabled() -> bool:
    return os.environ.get(REGISTER_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Merit:
    """What a registered version is judged on: one validation figure, which way is better, and a digest
    of the validation data it was measured on (two figures on different photos are not compared)."""

    metric: str  # e.g. val.tweaked.f1_lips
    value: float
    higher_is_better: bool = True
    data: str = ""

    def beats(self, other: Merit) -> bool:
        """Strictly better: a tie keeps the champion."""
        return self.value > other.value if self.higher_is_better else self.value < other.value

    def to_json(self) -> str:
        return json.dumps(
            {"metric": self.metric, "value": self.value, "higher_is_better": self.higher_is_better, "data": self.data}
        )

    @classmethod
    def from_json(cls, text: str | None) -> Merit | None:
        try:
            fields = json.loads(text or "")
            return cls(
                str(fields["metric"]),
                float(fields["value"]),
                bool(fields["higher_is_better"]),
                str(fields.get("data", "")),
            )
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True)
class Promotion:
    version: str
    promoted: bool
    decision: str  # one line, e.g. "promoted: val.tweaked.f1_lips 0.8300 > 0.8200 of version 3"


def promote_on_merit(client: MlflowClient, name: str, version: str, merit: Merit) -> Promotion:
    """Alias `version` as the challenger; make it the champion when there is none, when the champion has no
    recorded merit, or when `merit` is strictly better on the same validation data. The decision is tagged
    on the version."""
    version = str(version)
    client.set_model_version_tag(name, version, MERIT_TAG, merit.to_json())
    client.set_registered_model_alias(name, CHALLENGER, version)
    figure = f"{merit.metric} {merit.value:.4f}"
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        champion = None
    if champion is None:
        promoted, decision = True, f"promoted: the first {CHAMPION} of {name} ({figure})"
    elif (held := Merit.from_json(champion.tags.get(MERIT_TAG))) is None or held.metric != merit.metric:
        promoted, decision = True, f"promoted: version {champion.version} records no {merit.metric} ({figure})"
    elif held.data != merit.data:
        promoted = False
        decision = (
            f"kept version {champion.version}: its {held.metric} was measured on other validation data "
            f"({held.data[:12]} vs {merit.data[:12]}), so the figures do not compare; promote by hand if wanted"
        )
    elif not np.isfinite(merit.value):
        promoted, decision = False, f"kept version {champion.version}: {merit.metric} is {merit.value}"
    elif merit.beats(held):
        sign = ">" if merit.higher_is_better else "<"
        promoted, decision = True, f"promoted: {figure} {sign} {held.value:.4f} of version {champion.version}"
    else:
        sign = "<=" if merit.higher_is_better else ">="
        promoted, decision = False, f"kept version {champion.version}: {figure} {sign} {held.value:.4f}"
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, decision)
    return Promotion(version, promoted, decision)


def missing_local_store(uri: str) -> Path | None:
    """The file or folder of a local store (sqlite:///..., file:..., a plain path) when it does not exist;
    None for one that does, or a server."""
    from urllib.parse import urlparse

    if uri.startswith("sqlite:"):
        path = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        return path if path is not None and not path.exists() else None
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or len(parsed.scheme) == 1:  # a plain path (a Windows drive letter too)
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        return path if not path.exists() else None
    return None


def download_artifacts(uri: str, target: Path) -> Path:
    """Download a logged or registered MLflow model's files (e.g. models:/lipseg-tcnn@champion) into
    `target`; RuntimeError naming the store when it cannot."""
    store = tracking_uri()
    if (missing := missing_local_store(store)) is not None:
        # Opening a sqlite URI would create the file: a look-up must never leave a store behind.
        where = "MLFLOW_TRACKING_URI names" if os.environ.get("MLFLOW_TRACKING_URI") else "the default store is"
        raise RuntimeError(
            f"cannot look up {uri}: no MLflow store ({where} {missing}, which does not exist); run inside the "
            "lipseg project that registered it, or set MLFLOW_TRACKING_URI to the team server"
        )
    mlflow.set_tracking_uri(store)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except mlflow.exceptions.MlflowException as error:
        raise RuntimeError(f"cannot load {uri} from {tracking_uri()}: {error.message}") from error


def spark_udf(spark: Any, model_folder: Path, result_type: str, env_manager: str = "local") -> Any:
    """A Spark UDF of the MLflow model in the local `model_folder` (a registry URI is downloaded first, through
    download_artifacts, so that no store is touched on the workers). MLflow ships the folder to the executors;
    `local` runs it in their own Python, where lipseg's requirements are installed."""
    return mlflow.pyfunc.spark_udf(spark, str(model_folder), result_type=result_type, env_manager=env_manager)
