"""The team setup for real: a PostgreSQL server and an `mlflow server` on loopback (docs/operations.md "A shared MLflow
server"), the tiny pipeline tracked through `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`, and several stage
processes writing to the server at once (the load a team server takes and a per-checkout sqlite file is
not made for).

Everything is checked through the server's REST API, as a teammate's client would see it, plus the
PostgreSQL tables and the artifacts folder behind it. PostgreSQL's server binaries and psycopg2 are
required: CI installs them (`.ci/ensure_system`, requirements.lock), so their absence fails the tests
instead of skipping them."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_pipeline_e2e import TCNN, TINY

from lipseg.core.scratch import dvc_repro, make_scratch_repo
from lipseg.core.tracking import EXPERIMENT, KIND_TAG, MODEL_NAME, PIPELINE_KEY_TAG, STAGE_TAG, stage_run

ROOT = Path(__file__).resolve().parents[2]
DB_NAME, DB_USER, DB_PASSWORD = "mlflow", "mlflow", "lipseg-test-only"
SERVER_USER = "postgres"  # postgres refuses to run as root; Debian's package creates this system user
CONCURRENT_PIPELINE = "concurrent-matrix"
CONCURRENT_STAGES = [
    "train_segmenter@unet",
    "train_segmenter@pspnet",
    "train_segmenter@segnet",
    "train_segmenter@deeplabv3plus",
]
INDEPENDENT_PIPELINES = ["concurrent-exp-1", "concurrent-exp-2"]
EPOCHS = 6


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin_dir() -> Path:
    """Where initdb/pg_ctl/postgres live: PATH first, then Debian's versioned folders (newest first)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in /usr/lib/postgresql/*/bin: "
        "run .ci/ensure_system (as root it apt-get installs Debian's `postgresql`)",
        pytrace=False,
    )


def require_psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError as error:
        pytest.fail(
            f"psycopg2 is missing ({error}): the MLflow server needs it for its PostgreSQL store; "
            "install the locked tree: make install (pip install --require-hashes -r requirements.lock)",
            pytrace=False,
        )
    return psycopg2


def run_tool(command: list[str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done.stdout


@dataclass
class Postgres:
    """A throwaway cluster listening on 127.0.0.1 only, with its own unix-socket folder."""

    bin_dir: Path
    base: Path
    port: int
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    def command(self, tool: str, *args: str) -> list[str]:
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"  # util-linux; /usr/sbin may be missing from PATH
        prefix = [runuser, "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
        return [*prefix, str(self.bin_dir / tool), *args]

    def pg_ctl(self, *args: str) -> str:
        return run_tool(self.command("pg_ctl", "-D", str(self.data_dir), *args), cwd=self.base)

    def start(self) -> None:
        (self.base / "superuser.pw").write_text(DB_PASSWORD + "\n")
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SERVER_USER)
            except KeyError:
                pytest.fail(
                    f"running as root, but there is no `{SERVER_USER}` system user to run PostgreSQL as "
                    "(Debian's `postgresql` package creates it)",
                    pytrace=False,
                )
            for path in (self.base, self.socket_dir, self.base / "superuser.pw"):
                shutil.chown(path, SERVER_USER, SERVER_USER)
        # Password (scram) over TCP, as the documented server; trust only on the private socket folder for setup.
        run_tool(
            self.command(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--pwfile",
                str(self.base / "superuser.pw"),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ),
            cwd=self.base,
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )  # a throwaway cluster: speed over durability
        # In the foreground as our own child (not daemonised by `pg_ctl start`), so that its exit is reaped here.
        with (self.base / "postgres.log").open("w") as log:
            self.process = subprocess.Popen(
                self.command("postgres", "-D", str(self.data_dir)),
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while (
            subprocess.run(
                self.command("pg_isready", "-q", "-h", str(self.socket_dir), "-p", str(self.port)), cwd=self.base
            ).returncode
            != 0
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"PostgreSQL did not start (exit code {self.process.poll()}):\n{self.log_tail()}", pytrace=False
                )
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(
                RuntimeError, subprocess.TimeoutExpired
            ):  # fast: roll back open sessions, then checkpoint
                self.pg_ctl("-m", "fast", "-w", "-t", "30", "stop")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the clean stop failed: kill the group this fixture started
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self) -> str:
        log = self.base / "postgres.log"
        return log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"

    def create_database(self) -> None:
        psycopg2 = require_psycopg2()
        connection = psycopg2.connect(host=str(self.socket_dir), port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE refuses to run inside a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE ROLE {DB_USER} LOGIN PASSWORD %s", (DB_PASSWORD,))
                cursor.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
        finally:
            connection.close()

    def query(self, sql: str) -> list[tuple]:
        """Straight from the tables, over TCP with the role the MLflow server uses."""
        psycopg2 = require_psycopg2()
        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD, dbname=DB_NAME
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            connection.close()


@dataclass
class MlflowServer:
    url: str
    artifacts: Path
    postgres: Postgres
    log: Path

    def api(self, path: str, query: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One REST call: GET with a query string, POST with a JSON body."""
        address = f"{self.url}/api/2.0/mlflow/{path}"
        if query:
            address += "?" + urllib.parse.urlencode(query, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            address, data=data, headers={"Content-Type": "application/json"}, method="POST" if data else "GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{request.method} {address} -> {error.code}: {error.read()[:2000]!r}") from error

    def experiment_id(self) -> str:
        return self.api("experiments/get-by-name", {"experiment_name": EXPERIMENT})["experiment"]["experiment_id"]

    def search_runs(self, filter_string: str) -> list[dict[str, Any]]:
        runs, token = [], None
        while True:
            body = {
                "experiment_ids": [self.experiment_id()],
                "filter": filter_string,
                "max_results": 1000,
                **({"page_token": token} if token else {}),
            }
            page = self.api("runs/search", body=body)
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs

    def metric_history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        return self.api("metrics/get-history", {"run_id": run_id, "metric_key": key, "max_results": 10000}).get(
            "metrics", []
        )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.is_file() else "(no server log)"


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def params_of(run: dict[str, Any]) -> dict[str, str]:
    return {param["key"]: param["value"] for param in run["data"].get("params", [])}


def metrics_of(run: dict[str, Any]) -> dict[str, float]:
    """The latest value of each metric, as runs/search reports it."""
    return {metric["key"]: metric["value"] for metric in run["data"].get("metrics", [])}


def stop_mlflow_server(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the `mlflow server` process, which forwards it to uvicorn for a graceful stop of its workers
    (signalling the whole group instead makes uvicorn respawn the workers it sees die); SIGKILL the group's
    leftovers."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def mlflow_executable() -> list[str]:
    script = Path(sys.executable).parent / "mlflow"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[MlflowServer]:
    """PostgreSQL + `mlflow server` on loopback for this module, both stopped however the tests end."""
    require_psycopg2()
    bin_dir = postgres_bin_dir()
    # Not under pytest's tmp folder: that is private (0700) to the user running pytest, and as root the cluster
    # runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="lipseg-mlflow-server-"))
    base.chmod(0o711)  # `postgres` may pass through to its own subfolder, not list the rest
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, base, ignore_errors=True)
        postgres = Postgres(bin_dir, base / "postgres", free_port())
        postgres.base.mkdir()
        cleanup.callback(postgres.stop)
        postgres.start()
        postgres.create_database()

        artifacts, log = base / "artifacts", base / "mlflow-server.log"
        port = free_port()
        # Two workers: several server processes write to PostgreSQL at once, as with the default four, at half
        # the start-up.
        command = [
            *mlflow_executable(),
            "server",
            "--backend-store-uri",
            f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{postgres.port}/{DB_NAME}",
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
        # No GenAI job runner (seven huey consumer processes lipseg never uses) on a 2-core CI machine.
        env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        with log.open("w") as log_file:
            process = subprocess.Popen(
                command, cwd=base, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        cleanup.callback(stop_mlflow_server, process)
        server = MlflowServer(f"http://127.0.0.1:{port}", artifacts, postgres, log)

        deadline = time.monotonic() + 180  # the first start creates MLflow's schema in PostgreSQL
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{server.url}/health", timeout=5) as response:
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not come up (exit code {process.poll()}):\n{server.log_tail()}", pytrace=False
                )
            time.sleep(0.5)
        yield server


# ---------------------------------------------------------------- the pipeline against the server


@pytest.fixture(scope="module")
def tcnn_pipeline(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One tiny `dvc repro evaluate` (the TCNN stages, which end by registering the model), shared by the tests
    below."""
    repo = tmp_path_factory.mktemp("server-pipeline") / "repo"
    env = make_scratch_repo(repo, ROOT, TINY)
    env["MLFLOW_TRACKING_URI"] = mlflow_server.url
    try:
        ran, _ = dvc_repro(repo, env, ("evaluate",))
    except RuntimeError as error:
        raise AssertionError(f"{error}\n--- mlflow server log ---\n{mlflow_server.log_tail()}") from error
    return repo, ran


def pipeline_parents(server: MlflowServer) -> list[dict[str, Any]]:
    """Parent runs of `dvc repro` invocations (the concurrency test's pipelines have `concurrent-` keys)."""
    parents = server.search_runs(f"tags.`{KIND_TAG}` = 'pipeline'")
    return [run for run in parents if not tags_of(run)[PIPELINE_KEY_TAG].startswith("concurrent-")]


@pytest.mark.slow
def test_pipeline_stages_are_child_runs_of_one_parent_on_the_server(
    mlflow_server: MlflowServer, tcnn_pipeline: tuple[Path, list[str]]
) -> None:
    repo, ran = tcnn_pipeline
    assert ran == TCNN
    parents = pipeline_parents(mlflow_server)
    assert len(parents) == 1, [tags_of(run) for run in parents]
    parent_id = parents[0]["info"]["run_id"]
    children = mlflow_server.search_runs(f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(tags_of(run)[STAGE_TAG] for run in children) == sorted(TCNN)
    assert all(run["info"]["status"] == "FINISHED" for run in children)
    # The parent carries every stage's params under the stage's name (logged by each stage process over HTTP).
    assert params_of(parents[0])["train_base.max_epochs"] == str(TINY["train_base"]["max_epochs"])
    # finetune_heads nests one run per head under its own run.
    finetune_id = next(run["info"]["run_id"] for run in children if tags_of(run)[STAGE_TAG] == "finetune_heads")
    heads = mlflow_server.search_runs(f"tags.`mlflow.parentRunId` = '{finetune_id}'")
    k = json.loads((repo / "metrics.json").read_text())["k"]
    assert sorted(run["info"]["run_name"] for run in heads) == [f"head_{cluster}" for cluster in range(k)]
    # The client used the server alone: no local store appeared in the project.
    assert not (repo / "mlflow.db").exists()
    assert not (repo / "mlruns").exists() or not any((repo / "mlruns").iterdir())


@pytest.mark.slow
def test_pipeline_metrics_are_on_the_server(mlflow_server: MlflowServer, tcnn_pipeline: tuple[Path, list[str]]) -> None:
    repo, _ = tcnn_pipeline
    expected = json.loads((repo / "metrics.json").read_text())
    parent = pipeline_parents(mlflow_server)[0]
    children = {
        tags_of(run)[STAGE_TAG]: run
        for run in mlflow_server.search_runs(f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    }
    # evaluate logs the test scores on its own run and on the parent: both equal metrics.json.
    for run in (children["evaluate"], parent):
        logged = metrics_of(run)
        for label in ("base", "tweaked"):
            for key in ("f1_lips", "f1_inner_mouth", "nme_io"):
                assert logged[f"{label}.{key}"] == pytest.approx(expected[label][key], rel=1e-12), (label, key)
        assert logged["val.tweaked.f1_lips"] == pytest.approx(expected["val"]["tweaked"]["f1_lips"], rel=1e-12)
    # train_base's per-epoch curve: one point per epoch of reports/train_base/history.csv, in order.
    with (repo / "reports/train_base/history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    curve = sorted(
        mlflow_server.metric_history(children["train_base"]["info"]["run_id"], "val_nme"),
        key=lambda point: point["step"],
    )
    assert [int(point["step"]) for point in curve] == [int(row["epoch"]) for row in history]
    assert [point["value"] for point in curve] == pytest.approx([float(row["val_nme"]) for row in history], rel=1e-9)


@pytest.mark.slow
def test_pipeline_registers_the_model_and_stores_artifacts_behind_the_server(
    mlflow_server: MlflowServer, tcnn_pipeline: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, _ = tcnn_pipeline
    model = mlflow_server.api("registered-models/get", {"name": MODEL_NAME})["registered_model"]
    versions = mlflow_server.api("model-versions/search", {"filter": f"name = '{MODEL_NAME}'"})["model_versions"]
    assert [version["version"] for version in versions] == ["1"]
    assert versions[0]["status"] == "READY"
    # The first version is both the challenger and, with no champion before it, the champion.
    assert {alias["alias"]: alias["version"] for alias in model.get("aliases", [])} == {
        "champion": "1",
        "challenger": "1",
    }
    assert {tag["key"]: tag["value"] for tag in versions[0]["tags"]}["lipseg.promotion"].startswith("promoted")
    evaluate = next(
        run
        for run in mlflow_server.search_runs(f"tags.`{STAGE_TAG}` = 'evaluate'")
        if not tags_of(run)[PIPELINE_KEY_TAG].startswith("concurrent-")
    )
    assert versions[0]["run_id"] == evaluate["info"]["run_id"]
    # Artifacts went through the server's proxy into --artifacts-destination, not into the client's folders.
    listed = {
        item["path"]
        for item in mlflow_server.api("artifacts/list", {"run_id": evaluate["info"]["run_id"]}).get("files", [])
    }
    assert {"metrics.json", "ced.png", "overlays.png"} <= listed
    stored = {path.name for path in mlflow_server.artifacts.rglob("*") if path.is_file()}
    assert {"metrics.json", "ced.png", "overlays.png", "model.safetensors", "lipseg_model.json", "MLmodel"} <= stored
    # And the server's store is PostgreSQL: the rows are in its tables.
    assert mlflow_server.postgres.query(f"SELECT count(*) FROM model_versions WHERE name = '{MODEL_NAME}'") == [(1,)]
    assert mlflow_server.postgres.query(
        f"SELECT count(*) FROM runs WHERE run_uuid = '{evaluate['info']['run_id']}'"
    ) == [(1,)]
    # A teammate's client gets the champion back through the server, as
    # `lipseg predict --model models:/lipseg-tcnn@champion`.
    fetch = (
        "import sys; from pathlib import Path; from lipseg.inference.models import download_model_folder as get; "
        "print(get(sys.argv[1], Path(sys.argv[2])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", fetch, f"models:/{MODEL_NAME}@champion", str(tmp_path / "fetched")],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    fetched = Path(done.stdout.strip().splitlines()[-1])
    assert (fetched / "model.safetensors").read_bytes() == (repo / "models/tcnn/model.safetensors").read_bytes()


# ---------------------------------------------------------------- concurrent writers


def worker_main(argv: list[str]) -> None:
    """One stage-like process logging through lipseg.tracking exactly as the stages do (run from the test below)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--barrier", type=Path, help="wait for BARRIER/go after writing BARRIER/ready-INDEX")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.barrier:  # mlflow is imported by now (the slow part): line the processes up so that their writes overlap
        (args.barrier / f"ready-{args.index}").touch()
        deadline = time.monotonic() + 300
        while not (args.barrier / "go").exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go signal")
            time.sleep(0.02)
    scratch = args.out.parent / f"files-{args.index}"
    scratch.mkdir()
    (scratch / "notes.txt").write_text(f"worker {args.index}\n")
    (scratch / "model").mkdir()
    (scratch / "model" / "weights.bin").write_bytes(bytes(range(256)) * (args.index + 1))
    with stage_run(args.stage, {"width": 8 + args.index, "depth": 3, "lr": 0.01}) as run:
        run.set_tags({"worker": args.index})
        for epoch in range(1, EPOCHS + 1):  # one request per epoch, as on_epoch callbacks do
            run.log_metrics(
                {"train_loss": worker_value(args.index, epoch), "val_f1_lips": 1 - worker_value(args.index, epoch)},
                step=epoch,
            )
        run.log_history(
            [{"epoch": epoch, "val_loss": 2 * worker_value(args.index, epoch)} for epoch in range(1, EPOCHS + 1)],
            ("val_loss",),
        )
        run.log_metrics({f"worker_{args.index}.best": worker_value(args.index, EPOCHS)}, to_parent=True)
        with run.child("head_0", {"cluster": 0}) as child:
            child.log_metrics({"val_nme": worker_value(args.index, 1)})
        run.log_artifact(scratch / "notes.txt")
        run.log_artifacts(scratch / "model", "model")
        run.log_dict({"worker": args.index}, "summary.json")
    args.out.write_text(json.dumps({"run_id": run.run_id, "parent_run_id": run.parent_run_id}))


def worker_value(index: int, epoch: int) -> float:
    return 1.0 / (index + epoch + 1)


@pytest.mark.slow
def test_concurrent_stage_processes_write_to_one_server(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """Four matrix stages of one pipeline (its parent made by an earlier stage, as segment_crops precedes them)
    and two stages of other pipelines (other `dvc exp run` jobs), six processes writing at the same moment."""
    workdir = tmp_path / "project"
    workdir.mkdir()
    (workdir / "dvc.yaml").write_text("stages: {}\n")  # the project root lipseg.tracking looks for
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }

    def launch(index: int, stage: str, pipeline: str, wait_for_go: bool) -> subprocess.Popen:
        out = tmp_path / f"worker-{index}" / "result.json"
        out.parent.mkdir()
        command = [sys.executable, __file__, "worker", "--stage", stage, "--index", str(index), "--out", str(out)]
        if wait_for_go:
            command += ["--barrier", str(barrier)]
        return subprocess.Popen(
            command,
            cwd=workdir,
            env={**env, "LIPSEG_PIPELINE_ID": pipeline},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def finish(index: int, process: subprocess.Popen) -> dict[str, str]:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, (
            f"worker {index} failed:\n{output[-4000:]}\n--- server log ---\n{mlflow_server.log_tail()}"
        )
        return json.loads((tmp_path / f"worker-{index}" / "result.json").read_text())

    jobs = [(index + 1, stage, CONCURRENT_PIPELINE) for index, stage in enumerate(CONCURRENT_STAGES)]
    jobs += [
        (len(jobs) + 1 + offset, "train_segmenter@unet", pipeline)
        for offset, pipeline in enumerate(INDEPENDENT_PIPELINES)
    ]
    first_stage = launch(0, "segment_crops", CONCURRENT_PIPELINE, wait_for_go=False)
    processes = {index: launch(index, stage, pipeline, wait_for_go=True) for index, stage, pipeline in jobs}
    try:
        first = finish(0, first_stage)  # the matrix stages' parent exists before they start, as in a pipeline
        deadline = time.monotonic() + 300
        while len(list(barrier.glob("ready-*"))) < len(processes):
            crashed = [index for index, process in processes.items() if process.poll() is not None]
            assert not crashed, (
                f"workers {crashed} exited before the start signal: {processes[crashed[0]].communicate()[0][-4000:]}"
            )
            assert time.monotonic() < deadline, "workers did not get ready"
            time.sleep(0.05)
        (barrier / "go").touch()
        results = {index: finish(index, process) for index, process in processes.items()}
    finally:
        for process in [first_stage, *processes.values()]:
            if process.poll() is None:
                process.kill()
                process.wait()

    # One parent per pipeline: the matrix stages found the one their first stage made; the others made their own.
    parents = {
        tags_of(run)[PIPELINE_KEY_TAG]: run
        for run in mlflow_server.search_runs(f"tags.`{KIND_TAG}` = 'pipeline'")
        if tags_of(run)[PIPELINE_KEY_TAG].startswith("concurrent-")
    }
    assert sorted(parents) == sorted([CONCURRENT_PIPELINE, *INDEPENDENT_PIPELINES])
    matrix_parent = parents[CONCURRENT_PIPELINE]
    assert {results[index]["parent_run_id"] for index in range(1, 1 + len(CONCURRENT_STAGES))} == {
        first["parent_run_id"]
    }
    assert first["parent_run_id"] == matrix_parent["info"]["run_id"]
    matrix_children = mlflow_server.search_runs(f"tags.`mlflow.parentRunId` = '{matrix_parent['info']['run_id']}'")
    assert sorted(tags_of(run)[STAGE_TAG] for run in matrix_children) == sorted(["segment_crops", *CONCURRENT_STAGES])
    # Every process's writes to the shared parent survived the others': params under each stage's name, metrics
    # per worker.
    parent_params, parent_metrics = params_of(matrix_parent), metrics_of(matrix_parent)
    for index, stage in enumerate(["segment_crops", *CONCURRENT_STAGES]):
        assert parent_params[f"{stage.replace('@', '.')}.width"] == str(8 + index)
        assert parent_metrics[f"worker_{index}.best"] == pytest.approx(worker_value(index, EPOCHS))

    for index in [0, *results]:
        run_id = (results.get(index) or first)["run_id"]
        run = mlflow_server.api("runs/get", {"run_id": run_id})["run"]
        assert run["info"]["status"] == "FINISHED" and tags_of(run)["worker"] == str(index)
        epochs = range(1, EPOCHS + 1)
        for key, scale in (("train_loss", 1), ("val_loss", 2)):  # per-epoch requests, then one batch
            curve = sorted(mlflow_server.metric_history(run_id, key), key=lambda point: point["step"])
            assert [int(point["step"]) for point in curve] == list(epochs), (index, key)
            assert [point["value"] for point in curve] == pytest.approx(
                [scale * worker_value(index, epoch) for epoch in epochs]
            ), (index, key)
        listed = {item["path"] for item in mlflow_server.api("artifacts/list", {"run_id": run_id}).get("files", [])}
        assert listed == {"notes.txt", "model", "summary.json"}, index
        weights = mlflow_server.api("artifacts/list", {"run_id": run_id, "path": "model"})["files"]
        assert [(item["path"], int(item["file_size"])) for item in weights] == [
            ("model/weights.bin", 256 * (index + 1))
        ]
        heads = mlflow_server.search_runs(f"tags.`mlflow.parentRunId` = '{run_id}'")
        assert [metrics_of(head)["val_nme"] for head in heads] == [pytest.approx(worker_value(index, 1))]
    # The workers' own project folder stayed free of a local store.
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()


# ---------------------------------------------------------------- the documented server commands

SERVER_COMMAND = re.compile(r"\bmlflow\s+(?:server|ui)\b")
LOOPBACK = re.compile(r"(?:--host[ =]|-h\s+)127\.0\.0\.1\b")


def server_commands(text: str) -> list[str]:
    """Every `mlflow server` / `mlflow ui` command line in a README or Makefile (continuation lines joined):
    fenced code, inline code and Makefile recipes, but not prose that names the command."""
    joined = re.sub(r"\s*\\\n\s*", " ", text)
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", joined, flags=re.S | re.M)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", joined, flags=re.S | re.M)
    candidates = [line for block in fenced for line in block.splitlines()]
    candidates += re.findall(r"`([^`\n]+)`", outside)
    candidates += [line for line in outside.splitlines() if line.startswith("\t")]  # Makefile recipes
    return [line.strip() for line in candidates if SERVER_COMMAND.search(line)]


def unbound_commands(text: str) -> list[str]:
    return [command for command in server_commands(text) if not LOOPBACK.search(command)]


DOCUMENTS = ["README.md", "Makefile", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md"))]


def test_every_documented_mlflow_server_binds_loopback() -> None:
    """A server the README, the docs or the Makefile start listens on 127.0.0.1 only; exposing it is a
    deliberate extra step."""
    texts = {name: (ROOT / name).read_text(encoding="utf-8") for name in DOCUMENTS}
    # The check has something to check: the Makefile's `make ui` and the team server in the operations guide.
    assert server_commands(texts["Makefile"]) and server_commands(texts["docs/operations.md"])
    for name, text in texts.items():
        assert unbound_commands(text) == [], name


def test_the_loopback_check_catches_unbound_servers() -> None:
    sample = (
        "Prose may say mlflow server freely.\n```bash\n"
        "mlflow server --backend-store-uri postgresql+psycopg2://u@h/db \\\n"
        "    --host 0.0.0.0 --port 5000\nmlflow ui --port 5000 --host 127.0.0.1\n```\nor run `mlflow ui --port 5001`.\n"
        "ui:\n\t$(BIN)/mlflow server --port 5000\n"
    )
    assert unbound_commands(sample) == [
        "mlflow server --backend-store-uri postgresql+psycopg2://u@h/db --host 0.0.0.0 --port 5000",
        "mlflow ui --port 5001",
        "$(BIN)/mlflow server --port 5000",
    ]


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker_main(sys.argv[2:])
