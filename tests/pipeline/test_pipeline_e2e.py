"""The whole DVC pipeline on a tiny synthetic dataset, in a temporary git repo: it runs end to end,
tracks itself in MLflow, and after a parameter change reruns exactly the stages that depend on it
(read from DVC's own report of what ran)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from lipseg.core.scratch import dvc_repro, make_scratch_repo, run_checked, set_params
from lipseg.segmentation.nets import ARCHITECTURES

ROOT = Path(__file__).resolve().parents[2]
LIPEVAL = ROOT.parent / "shared" / "tools" / "lipeval.py"
TCNN = ["download", "crop", "train_base", "extract_features", "fit_gmm", "finetune_heads", "evaluate"]
SEGMENTERS = [f"train_segmenter@{arch}" for arch in ARCHITECTURES]
ALL = TCNN + ["segment_crops", *SEGMENTERS, "evaluate_segmenters"]

TINY = {
    "data": {"source": "synthetic", "seed": 0, "synthetic": {"n_train": 40, "n_test": 12, "image_size": 128}},
    "crop": {"augment": {"copies": 2}},
    "train_base": {"max_epochs": 3, "patience": 3, "batch_size": 32},
    "gmm": {"k": "auto", "k_range": [2, 3], "n_init": 1, "montage_per_cluster": 8},
    "heads": {"epochs": 2, "patience": 2, "min_cluster_size": 5, "min_val_size": 2},
    "evaluate": {"overlay_count": 4},
    "segment_crops": {"size": 32, "copies": 1},
    "train_segmenter": {"common": {"max_epochs": 2, "patience": 2, "batch_size": 32}},
    "evaluate_segmenters": {"figure_faces": 3},
}


def repro(repo: Path, env: dict[str, str]) -> list[str]:
    return dvc_repro(repo, env)[0]


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    return repo, make_scratch_repo(repo, ROOT, TINY)


@pytest.mark.slow
def test_full_run_then_incremental_reruns(pipeline_repo: tuple[Path, dict[str, str]]) -> None:
    repo, env = pipeline_repo
    assert repro(repo, env) == ALL

    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["k"] in (2, 3) and metrics["test_images"] == 12
    for model in ("base", "tweaked"):
        assert 0.0 <= metrics[model]["f1_lips"] <= 1.0 and metrics[model]["nme_io"] > 0
        assert 0.0 <= metrics["val"][model]["f1_lips"] <= 1.0 and metrics["val"][model]["nme_io"] > 0
    assert metrics["val"]["images"] > 0
    predictions = sorted((repo / "reports/evaluate/pred_test/tweaked").glob("*.json"))
    assert len(predictions) == 12
    face = json.loads(predictions[0].read_text())["faces"][0]
    assert len(face["lips"]) == 56 and len(face["box"]) == 4
    for artifact in (
        "reports/evaluate/overlays.png",
        "reports/evaluate/ced.png",
        "reports/fit_gmm/bic.png",
        "reports/fit_gmm/cluster_0.png",
        "reports/train_base/history.csv",
        "models/tcnn/model.safetensors",
    ):
        assert (repo / artifact).is_file(), artifact
    assert (
        run_checked([sys.executable, "-m", "dvc", "status"], repo, env)
        .strip()
        .endswith("Data and pipelines are up to date.")
    )

    segmenter_metrics = json.loads((repo / "metrics_segmenters.json").read_text())
    assert set(segmenter_metrics["models"]) == {"tcnn landmarks", *ARCHITECTURES}
    for name, summary in segmenter_metrics["models"].items():
        assert 0.0 <= summary["f1_lips"] <= 1.0 and summary["images"] == 12, name
        assert len(list((repo / "reports/evaluate_segmenters/pred_test" / name.replace(" ", "_")).glob("*.png"))) == 12
    best = json.loads((repo / "models/segmenters/best.json").read_text())
    assert (
        best["arch"] == segmenter_metrics["best_segmenter"] and (repo / best["folder"] / "model.safetensors").is_file()
    )
    assert (repo / "reports/evaluate_segmenters/models.png").is_file()

    # Nothing changed: nothing runs.
    assert repro(repo, env) == []
    # K changes: only the GMM and what follows it; the segmenters keep their crops (measured with the base model).
    set_params(repo, {"gmm": {"k": 2}})
    assert sorted(repro(repo, env)) == sorted(["fit_gmm", "finetune_heads", "evaluate", "evaluate_segmenters"])
    # The heads' learning rate: only the heads and the evaluations.
    set_params(repo, {"heads": {"lr": 0.0003}})
    assert sorted(repro(repo, env)) == sorted(["finetune_heads", "evaluate", "evaluate_segmenters"])
    # One architecture's params: that architecture and the comparison, nothing else.
    set_params(repo, {"train_segmenter": {"pspnet": {"width": 8}}})
    assert repro(repo, env) == ["train_segmenter@pspnet", "evaluate_segmenters"]
    # The base model's params: train_base and everything after it, never download or crop.
    set_params(repo, {"train_base": {"lr": 0.002}})
    assert sorted(repro(repo, env)) == sorted(ALL[2:])

    # MLflow: one parent run per `dvc repro` that ran something, each stage a child of it.
    with sqlite3.connect(repo / "mlflow.db") as db:
        kinds = dict(db.execute("select run_uuid, value from tags where key = 'lipseg.kind'").fetchall())
        parents = {run for run, kind in kinds.items() if kind == "pipeline"}
        stage_of = dict(db.execute("select run_uuid, value from tags where key = 'lipseg.stage'").fetchall())
        parent_of = dict(db.execute("select run_uuid, value from tags where key = 'mlflow.parentRunId'").fetchall())
        registry = {name: registered(db, name) for name in ("lipseg-tcnn", "lipseg")}
    assert len(parents) == 5
    stage_runs = [run for run, stage in stage_of.items() if parent_of.get(run) in parents]
    assert sorted(stage_of[run] for run in stage_runs) == sorted(
        ALL
        + ["fit_gmm", "finetune_heads", "evaluate", "evaluate_segmenters"]
        + ["finetune_heads", "evaluate", "evaluate_segmenters"]
        + ["train_segmenter@pspnet", "evaluate_segmenters"]
        + ALL[2:]
    )
    # Every evaluate registers lipseg-tcnn, every evaluate_segmenters the photo model lipseg; the newest
    # version is the challenger, and the champion is the first version with the best validation figure.
    for name, count in (("lipseg-tcnn", 4), ("lipseg", 5)):
        merits, aliases, decisions = registry[name]
        assert sorted(merits) == list(range(1, count + 1)) and len(decisions) == count, name
        assert aliases["challenger"] == count
        best = max(merits.values())
        assert aliases["champion"] == min(version for version, value in merits.items() if value == best), name
    # Lineage: each stage's latest run names its data by the very md5 DVC recorded in its deps.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    with sqlite3.connect(repo / "mlflow.db") as db:
        logged = db.execute(
            "select t.value, d.name, d.digest, r.start_time from datasets d join inputs i on i.source_id = "
            "d.dataset_uuid join tags t on t.run_uuid = i.destination_id and t.key = 'lipseg.stage' "
            "join runs r on r.run_uuid = i.destination_id"
        ).fetchall()
    latest = {}
    for stage, name, digest, _ in sorted(logged, key=lambda row: row[3]):
        latest.setdefault(stage, {})[name] = digest
    assert {"train_base", "finetune_heads", "evaluate", *SEGMENTERS} <= set(latest)
    for stage, inputs in latest.items():
        recorded = {
            dep["path"]: dep["md5"] for dep in lock[stage]["deps"] if not dep["path"].startswith(("src/", "stages/"))
        }
        assert inputs == recorded, stage


def registered(db: sqlite3.Connection, name: str) -> tuple[dict[int, float], dict[str, int], list[str]]:
    """({version: validation figure}, {alias: version}, promotion decisions) of one registered model."""
    tags = db.execute("select version, key, value from model_version_tags where name = ?", (name,)).fetchall()
    merits = {int(version): json.loads(value)["value"] for version, key, value in tags if key == "lipseg.merit"}
    decisions = [value for _, key, value in tags if key == "lipseg.promotion"]
    aliases = dict(db.execute("select alias, version from registered_model_aliases where name = ?", (name,)))
    return merits, {alias: int(version) for alias, version in aliases.items()}, decisions


@pytest.mark.slow
@pytest.mark.helen
def test_lipeval_agrees_with_the_pipeline(pipeline_repo: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """The official scorer, run on the pipeline's own prediction files, gives the metrics.json numbers."""
    if not LIPEVAL.is_file():
        pytest.skip("../shared/tools/lipeval.py not found")
    repo, env = pipeline_repo
    if not (repo / "metrics.json").is_file():
        repro(repo, env)
    metrics = json.loads((repo / "metrics.json").read_text())
    report = tmp_path / "lipeval.json"
    run_checked(
        [
            sys.executable,
            str(LIPEVAL),
            "--gt",
            str(repo / "data/raw"),
            "--split",
            "test",
            "--pred",
            str(repo / "reports/evaluate/pred_test/tweaked"),
            "--json",
            str(report),
            "--quiet",
        ],
        repo,
        env,
    )
    official = json.loads(report.read_text())
    for name in ("lips", "upper_lip", "lower_lip", "inner_mouth", "mouth"):
        assert official["pooled"][name]["f1"] == pytest.approx(metrics["tweaked"][f"f1_{name}"], abs=1e-9)
    assert official["nme"]["mean_io"] == pytest.approx(metrics["tweaked"]["nme_io"], rel=1e-6)


def stages_dvc_would_rerun(repo: Path, env: dict[str, str]) -> set[str]:
    """DVC's own report (`dvc status --json`) of the stages whose dependencies changed."""
    report = json.loads(run_checked([sys.executable, "-m", "dvc", "status", "--json"], repo, env) or "{}")
    return {name.split(":")[-1] for name in report}


@pytest.mark.slow
def test_editing_one_family_reruns_none_of_the_other(pipeline_repo: tuple[Path, dict[str, str]]) -> None:
    """Touch each module of one model family in turn: DVC's status lists no stage of the other family."""
    repo, env = pipeline_repo
    if not (repo / "metrics.json").is_file():
        repro(repo, env)
    assert stages_dvc_would_rerun(repo, env) == set()
    families = {"tcnn": set(SEGMENTERS), "segmentation": set(TCNN)}
    touched: dict[str, set[str]] = {}
    for family, other in families.items():
        for module in sorted((repo / "src" / "lipseg" / family).glob("*.py")):
            original = module.read_text()
            module.write_text(original + "\n# edited\n")
            try:
                rerun = stages_dvc_would_rerun(repo, env)
            finally:
                module.write_text(original)
            assert not rerun & other, f"editing {family}/{module.name} would rerun {sorted(rerun & other)}"
            touched[f"{family}/{module.name}"] = rerun
    # The reports are not vacuous: each family's training code does rerun its own stages.
    assert {"train_base", "finetune_heads"} <= touched["tcnn/training.py"]
    assert set(SEGMENTERS) <= touched["segmentation/training.py"]
    assert stages_dvc_would_rerun(repo, env) == set()
