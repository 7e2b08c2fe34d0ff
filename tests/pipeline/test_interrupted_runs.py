"""Interrupted and repeated runs of the real pipeline, in scratch repos on the tiny synthetic set:
`dvc repro` SIGKILLed in the middle of `train_base` and of `finetune_heads` resumes from the per-epoch
checkpoints and ends with exactly the metrics of an uninterrupted run; a killed stage leaves nothing DVC
takes as done; two forced runs give the same metrics.json; the outputs travel through a DVC remote."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lipseg.core.checkpoint import load_checkpoint
from lipseg.core.scratch import dvc_repro, make_scratch_repo, run_checked

ROOT = Path(__file__).resolve().parents[2]
TCNN = ["download", "crop", "train_base", "extract_features", "fit_gmm", "finetune_heads", "evaluate"]

# Long enough (in epochs) that a kill lands mid-training, short enough (tiny crops) to run in seconds.
LONG_TINY = {
    "data": {"source": "synthetic", "seed": 0, "synthetic": {"n_train": 40, "n_test": 12, "image_size": 128}},
    "crop": {"augment": {"copies": 2}},
    "train_base": {"max_epochs": 40, "patience": 40, "batch_size": 32},
    "gmm": {"k": 2, "n_init": 1, "montage_per_cluster": 8},
    "heads": {
        "epochs": 200,
        "patience": 200,
        "min_cluster_size": 5,
        "min_val_size": 2,
    },  # a head epoch takes milliseconds
    "evaluate": {"overlay_count": 4},
}
DVC = [sys.executable, "-m", "dvc"]
MODEL_FILES = ("models/base/model.safetensors", "models/tcnn/model.safetensors", "models/gmm/gmm.npz")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_epoch(path: Path) -> tuple[int, bool] | None:
    """(last finished epoch, training finished) of a checkpoint, None while there is none yet."""
    if not path.is_file():
        return None
    state = load_checkpoint(path)  # written by os.replace: never half a file
    return int(state["epoch"]), bool(state["finished"])


def kill_repro_mid_training(repo: Path, env: dict[str, str], target: str, checkpoints: Path, min_epoch: int = 3) -> int:
    """Start `dvc repro target`, SIGKILL its whole process group once a checkpoint under `checkpoints` has
    reached `min_epoch` without finishing; return the epoch of that checkpoint."""
    process = subprocess.Popen(
        [*DVC, "repro", target],
        cwd=repo,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            states = [state for path in sorted(checkpoints.glob("*.safetensors")) if (state := checkpoint_epoch(path))]
            running = [epoch for epoch, finished in states if not finished]
            if running and max(running) >= min_epoch:
                os.killpg(process.pid, signal.SIGKILL)  # dvc and the stage it runs: nothing gets to clean up
                process.wait(timeout=30)
                return max(running)
            assert process.poll() is None, (
                f"dvc repro {target} ended (rc {process.returncode}) before it could be killed"
            )
            time.sleep(0.02)
        raise AssertionError(f"no checkpoint of {target} reached epoch {min_epoch} in time")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def stale_stages(repo: Path, env: dict[str, str]) -> str:
    return run_checked([*DVC, "status"], repo, env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("uninterrupted") / "repo"
    env = make_scratch_repo(repo, ROOT, LONG_TINY)
    assert dvc_repro(repo, env, ("evaluate",))[0] == TCNN
    return repo, env


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_uninterrupted_result(
    uninterrupted: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    reference, _ = uninterrupted
    repo = tmp_path / "repo"
    env = make_scratch_repo(repo, ROOT, LONG_TINY)
    assert dvc_repro(repo, env, ("crop",))[0] == ["download", "crop"]

    killed_at = kill_repro_mid_training(repo, env, "train_base", repo / "checkpoints/train_base")
    assert not (repo / "models/base").exists()  # the model folder appears only when complete
    assert "train_base" in stale_stages(repo, env)  # DVC does not take the killed stage as done

    output = run_checked([*DVC, "repro", "fit_gmm"], repo, env)
    resumed = re.search(r"resumed after epoch (\d+)", output)
    assert resumed and int(resumed.group(1)) >= killed_at, (
        output
    )  # the checkpoint may have moved on before the kill landed
    assert digest(repo / MODEL_FILES[0]) == digest(reference / MODEL_FILES[0])

    kill_repro_mid_training(repo, env, "finetune_heads", repo / "checkpoints/finetune_heads", min_epoch=2)
    assert not (repo / "models/tcnn").exists()
    assert "finetune_heads" in stale_stages(repo, env)

    output = run_checked([*DVC, "repro", "evaluate"], repo, env)
    assert re.findall(r"Running stage '([a-z_]+)'", output) == ["finetune_heads", "evaluate"]
    assert re.search(r"finetune_heads: head \d+: .*\(resumed after epoch \d+\)", output), (
        output
    )  # not retrained from scratch
    for model_file in MODEL_FILES:
        assert digest(repo / model_file) == digest(reference / model_file), model_file
    assert (repo / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert run_checked([*DVC, "status", "evaluate"], repo, env).strip().endswith("Data and pipelines are up to date.")


def pickled(path: Path) -> bool:
    """Whether a file is (or holds) a pickle stream: raw pickle, a torch.save zip, or an object .npy/.npz."""
    data = path.read_bytes()
    if path.suffix in (".pkl", ".pickle", ".joblib") or (
        data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    ):
        return True
    if data.startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith(".pkl") for name in archive.namelist()):
                return True
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                try:
                    [arrays[key] for key in arrays.files]
                except ValueError:  # "Object arrays cannot be loaded when allow_pickle=False"
                    return True
    return False


@pytest.mark.slow
def test_no_artifact_holds_a_pickle(uninterrupted: tuple[Path, dict[str, str]]) -> None:
    repo, _ = uninterrupted
    folders = ("data", "models", "checkpoints", "reports", "mlruns")
    files = [path for folder in folders for path in (repo / folder).rglob("*") if path.is_file()]
    assert any(path.parent.name == "train_base" and path.parent.parent.name == "checkpoints" for path in files)
    assert any(path.name == "MLmodel" for path in files)  # the registered MLflow model is scanned too
    assert [path.relative_to(repo) for path in files if pickled(path)] == []
    probe = repo / "probe.pt"
    torch.save({"w": torch.ones(1)}, probe)
    assert pickled(probe)  # the scan does see a torch.save file
    probe.unlink()


@pytest.mark.slow
def test_two_forced_runs_give_the_same_metrics(uninterrupted: tuple[Path, dict[str, str]]) -> None:
    repo, env = uninterrupted
    first = (repo / "metrics.json").read_bytes()
    weights = {name: digest(repo / name) for name in MODEL_FILES}
    shutil.rmtree(repo / "checkpoints")  # otherwise the finished checkpoints would be resumed, not retrained
    assert dvc_repro(repo, env, ("--force", "evaluate"))[0] == TCNN
    assert (repo / "metrics.json").read_bytes() == first
    assert {name: digest(repo / name) for name in MODEL_FILES} == weights


@pytest.mark.slow
def test_outputs_round_trip_through_a_local_dvc_remote(
    uninterrupted: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    repo, env = uninterrupted
    remote = tmp_path / "team-remote"
    weights = {name: digest(repo / name) for name in MODEL_FILES}
    run_checked([*DVC, "remote", "add", "--local", "-f", "-d", "team", str(remote)], repo, env)
    pushed = run_checked([*DVC, "push", "--with-deps", "evaluate"], repo, env)  # the stages this repo ran
    assert remote.is_dir() and any(remote.rglob("*")), pushed

    # A teammate's clone: the same commit and dvc.lock, no outputs and an empty cache.
    run_checked(["git", "add", "-A"], repo, env)
    run_checked(["git", "commit", "-qm", "pipeline outputs tracked by dvc.lock"], repo, env)
    clone = tmp_path / "clone"
    run_checked(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    run_checked([*DVC, "remote", "add", "--local", "-f", "-d", "team", str(remote)], clone, env)
    assert not (clone / "models").exists()
    run_checked([*DVC, "pull", "--with-deps", "evaluate"], clone, env)
    assert {name: digest(clone / name) for name in MODEL_FILES} == weights
    assert run_checked([*DVC, "status", "evaluate"], clone, env).strip().endswith("Data and pipelines are up to date.")
    assert dvc_repro(clone, env, ("evaluate",))[0] == []  # nothing to rerun: the pulled outputs are the pipeline's


@pytest.mark.slow  # ~10 s: the stage's imports and an MLflow store
def test_a_stage_failing_after_its_fit_leaves_its_previous_outputs(tmp_path: Path, mlflow_store: str) -> None:
    """fit_gmm fits its mixture, then dies (the training crops for its montages are gone): the previous
    models/gmm and BIC table stay byte for byte, because every output is swapped in only after all the work."""
    import runpy

    import yaml

    from lipseg.core import paths
    from lipseg.core.files import write_npz_atomic

    gmm = yaml.safe_load((ROOT / "params.yaml").read_text())["gmm"] | {"k": 2, "n_init": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gmm": gmm}))
    features = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    names = np.array([f"face_{index}" for index in range(40)])
    write_npz_atomic(paths.FEATURES, fc5=features, names=names, copy_index=np.zeros(40, np.int64))
    previous = {paths.GMM: b"the previous mixture", paths.REPORTS / "fit_gmm_bic.csv": b"k,bic,aic\n2,1.0,1.0\n"}
    for path, data in previous.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    with pytest.raises(FileNotFoundError, match="train.npz"):
        runpy.run_path(str(ROOT / "stages" / "fit_gmm.py"), run_name="__main__")
    assert {path: path.read_bytes() for path in previous} == previous
    assert [path.name for path in Path("models").iterdir()] == ["gmm"]  # no staging folder left behind
    assert not (paths.REPORTS / "fit_gmm").exists()
