"""Multi-process (DDP) training: the rank sharding, the torchrun launch, and `stages/train_base.py` on two
CPU processes (gloo) on tiny synthetic crops."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lipseg.core.distributed import (
    Ranks,
    backend_for,
    launched_by_torchrun,
    process_group,
    rank_shard,
    torchrun_command,
)
from lipseg.core.files import write_json_atomic, write_npz_atomic
from lipseg.data.crops import Jitter, normalisation_images, split_train_val
from lipseg.data.geometry import CropGeometry
from lipseg.data.helen import load_split
from lipseg.tcnn.crops import make_crops

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STAGE = PROJECT_ROOT / "stages" / "train_base.py"
WEIGHTS_LINE = re.compile(r"train_base: rank (\d) of (\d) ended with weights ([0-9a-f]{16})")
# Small enough for two CPU processes to train in seconds; lr high enough that 5 epochs clearly learn.
TINY_TRAIN_BASE = {
    "conv_channels": [8, 16, 16, 16],
    "fc5": 32,
    "lr": 0.003,
    "batch_size": 8,
    "max_epochs": 5,
    "patience": 5,
    "lr_patience": 0,
    "device": "cpu",
    "num_workers": 0,
}


# ---- rank sharding --------------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "world_size"), [(10, 2), (11, 2), (17, 3), (5, 4)])
def test_ranks_split_one_permutation_into_equal_disjoint_shares(count: int, world_size: int) -> None:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(3))
    shares = [rank_shard(order, rank, world_size) for rank in range(world_size)]
    assert len({len(share) for share in shares}) == 1, "unequal shares would leave a rank waiting in a collective"
    together = torch.cat(shares)
    assert len(together) == count - count % world_size  # at most world_size - 1 crops sit out the epoch
    assert len(set(together.tolist())) == len(together)  # no crop twice
    assert set(together.tolist()) <= set(order.tolist())


def test_step_k_of_all_ranks_is_one_contiguous_big_batch() -> None:
    # Why interleaved shares: N ranks with batch B then step on the same crops as one process with batch N*B.
    order, batch, world_size = torch.randperm(48, generator=torch.Generator().manual_seed(0)), 4, 3
    shares = [rank_shard(order, rank, world_size) for rank in range(world_size)]
    for step in range(len(shares[0]) // batch):
        stepped = torch.cat([share[step * batch : (step + 1) * batch] for share in shares])
        expected = order[step * batch * world_size : (step + 1) * batch * world_size]
        assert sorted(stepped.tolist()) == sorted(expected.tolist())


def test_a_single_process_keeps_the_whole_permutation_in_order() -> None:
    order = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    assert rank_shard(order, 0, 1) is order
    with pytest.raises(ValueError, match="outside a world"):
        rank_shard(order, 2, 2)


# ---- launching ------------------------------------------------------------------------------------


def test_torchrun_command_uses_this_interpreter_and_a_standalone_rendezvous() -> None:
    command = torchrun_command(3, Path("stages/train_base.py"))
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=3",
        "stages/train_base.py",
    ]
    with pytest.raises(ValueError, match="at least 1"):
        torchrun_command(0, Path("stages/train_base.py"))


def test_outside_torchrun_there_is_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched_by_torchrun()
    with process_group("cpu") as ranks:
        assert ranks == Ranks(rank=0, world_size=1, local_rank=0) and ranks.is_main
        assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launched_by_torchrun()
    assert backend_for(torch.device("cpu")) == "gloo" and backend_for(torch.device("cuda", 1)) == "nccl"


# ---- stages/train_base.py on two processes ----------------------------------------------------------


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path) -> Path:
    """data/crops as the crop stage writes it, from the 30 synthetic training faces (40 px, one jittered
    copy each, so an even number of training crops)."""
    records, _ = load_split(synthetic_dir, "train")
    fit_records, val_records = split_train_val(records, 0.2, seed=0)
    geometry = CropGeometry(size=40)
    train = make_crops(fit_records, geometry, Jitter(copies=1), seed=0, progress=False)
    val = make_crops(val_records, geometry, None, progress=False)
    folder = tmp_path_factory.mktemp("crops") / "data" / "crops"
    write_npz_atomic(folder / "train.npz", **train.arrays())
    write_npz_atomic(folder / "val.npz", **val.arrays())
    mean, std = normalisation_images(train.images)
    write_npz_atomic(folder / "norm.npz", mean=mean, std=std)
    write_json_atomic(
        folder / "manifest.json",
        {
            "geometry": geometry.to_dict(),
            "box_source": "gt",
            "face_to_mouth": None,
            "annotation_offset": 0.0,
            "training_data": {"source": "synthetic", "digest": "test", "train_faces": len(fit_records)},
        },
    )
    return folder


def make_workdir(folder: Path, crops_dir: Path, **train_base: object) -> Path:
    """A project folder holding exactly what train_base reads: params.yaml and data/crops."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train_base"].update(TINY_TRAIN_BASE, **train_base)
    (folder / "data").mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (folder / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")  # marks the project root for MLflow artifacts
    for item in crops_dir.iterdir():
        (folder / "data" / "crops").mkdir(exist_ok=True)
        (folder / "data" / "crops" / item.name).write_bytes(item.read_bytes())
    return folder


def files_under(folder: Path) -> dict[str, int]:
    return {
        str(path.relative_to(folder)): path.stat().st_mtime_ns for path in sorted(folder.rglob("*")) if path.is_file()
    }


def stage_env(tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LIPSEG_PIPELINE_ID")
    }
    env.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def train_base_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lipseg")
    return client.search_runs([experiment.experiment_id], filter_string="tags.`lipseg.stage` = 'train_base'")


def rank_weights(output: str) -> dict[int, str]:
    found = {int(rank): digest for rank, world, digest in WEIGHTS_LINE.findall(output) if world == "2"}
    assert sorted(found) == [0, 1], output[-3000:]
    return found


@pytest.mark.slow
def test_two_processes_train_one_model_and_only_rank_0_writes(tmp_path: Path, crops_dir: Path) -> None:
    # Each rank runs in its own copy of the project (torchrun starts `sh`, which enters rank<LOCAL_RANK>/),
    # so anything rank 1 wrote would show up in rank1/; both copies hold the same inputs.
    for rank in (0, 1):
        make_workdir(tmp_path / f"rank{rank}", crops_dir)
    rank1_before = files_under(tmp_path / "rank1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
        "sh",
        "-c",
        'cd "rank$LOCAL_RANK" && exec "$0" "$1"',
        sys.executable,
        str(STAGE),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=stage_env(tmp_path), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]

    weights = rank_weights(output)
    assert weights[0] == weights[1], "the ranks ended with different weights"
    assert files_under(tmp_path / "rank1") == rank1_before, "rank 1 wrote files"
    rank0 = tmp_path / "rank0"
    for output_file in (
        "models/base/model.safetensors",
        "models/base/lipseg_model.json",
        "checkpoints/train_base/last.safetensors",
        "reports/train_base/history.csv",
        "reports/train_base/curves.png",
    ):
        assert (rank0 / output_file).is_file(), output_file
    runs = train_base_runs(tmp_path)
    assert len(runs) == 1, "only rank 0 may open an MLflow run"
    assert runs[0].data.tags["processes"] == "2" and runs[0].data.tags["weights_digest"] == weights[0]
    with (rank0 / "reports/train_base/history.csv").open(encoding="utf-8") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == TINY_TRAIN_BASE["max_epochs"]
    val_nme = [float(row["val_nme"]) for row in history]
    assert min(val_nme[1:]) < 0.7 * val_nme[0], f"validation NME did not fall: {val_nme}"
    assert runs[0].data.metrics["best_val_nme"] == pytest.approx(min(val_nme))


@pytest.mark.slow
def test_the_processes_param_relaunches_the_stage_under_torchrun(tmp_path: Path, crops_dir: Path) -> None:
    # What `dvc exp run -S train_base.processes=2` runs: the unchanged dvc.yaml command, `python stages/train_base.py`.
    workdir = make_workdir(tmp_path / "project", crops_dir, processes=2, max_epochs=2, patience=2)
    done = subprocess.run(
        [sys.executable, str(STAGE)], cwd=workdir, env=stage_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    weights = rank_weights(output)
    assert weights[0] == weights[1]
    assert (workdir / "models/base/model.safetensors").is_file()
    runs = train_base_runs(tmp_path)
    assert len(runs) == 1 and runs[0].data.tags["processes"] == "2"
    assert runs[0].data.params["processes"] == "2"
    assert np.isfinite(runs[0].data.metrics["best_val_nme"])
