"""Benchmark: the segmenter's accuracy levers one at a time, end to end on the validation photos (for
choosing) and the test photos (reported only), on top of a finished real-data pipeline run.

    python bench/segmenter_levers.py --repo WORK/repo [--levers seed1,longer,...] [--threads 1]
                                     [--out bench/results/segmenter_levers] [--score-only]

--repo is a scratch repo where `dvc repro` ran with profiles/helen.yaml (scripts/release.py --workdir WORK
leaves one). Its TCNN places every crop; its plain_unet is the `baseline` row. Each trained lever is
`stages/train_segmenter.py plain_unet` (and `stages/segment_crops.py` when the lever changes the crops)
run in --work/<lever>/ with the lever's params on top of the repo's, the repo's data and TCNN linked in,
so a lever is exactly the pipeline's code with one setting changed. Scoring-only levers (flip averaging,
an ensemble of two) reuse trained models. Every model is then scored as `lipseg predict` writes its PNGs
(every face found, dlib HOG, the TCNN's flip-averaged lips), with the mask step's ms per face on one thread.
A lever is trained once: its model folder is reused unless it is deleted. Levers run in the order given,
so two processes with disjoint --levers (and --threads 1) share two cores; then --score-only writes
--out/levers.json and --out/levers.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the ms per face are one-thread figures

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from lipseg.core.scratch import deep_update, scratch_env
from lipseg.data.helen import load_split
from lipseg.inference.predictor import LipPredictor
from lipseg.segmentation.compare import LANDMARKS, compare_mask_sources
from lipseg.segmentation.runner import SegmenterRunner

ROOT = Path(__file__).resolve().parents[1]
ARCH = "plain_unet"
CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth")
LINKED = ("data/raw", "data/crops", "models/base", "models/tcnn")  # read-only inputs shared with --repo

# lever -> (what it is, params on top of the repo's). `{baseline_epoch}` and `{teacher}` are filled in.
TRAINED: dict[str, tuple[str, dict[str, Any]]] = {
    "seed1": (
        "another seed (run-to-run spread; the ensemble's second member)",
        {"train_segmenter": {"common": {"seed": 1}}},
    ),
    "longer": (
        "twice the epochs (cosine over 180, early stopping on validation)",
        {"train_segmenter": {"common": {"max_epochs": 180, "patience": 40}}},
    ),
    "regularised": (
        "weight decay 0.05 and dropout 0.1",
        {"train_segmenter": {"common": {"weight_decay": 0.05}, ARCH: {"dropout": 0.1}}},
    ),
    "strong_aug": (
        "stronger augmentation: shift 0.10, scale 0.12, rotation 15 deg, brightness 0.3",
        {"segment_crops": {"min_shift": 0.10, "min_scale": 0.12, "rotate_deg": 15.0, "brightness": 0.3}},
    ),
    "no_flip": ("no mirrored training crops", {"segment_crops": {"flip": False}}),
    "size128": ("128 px crops instead of 96", {"segment_crops": {"size": 128}}),
    "boundary": (
        "boundary-aware loss: class-border pixels weigh 3x in the cross-entropy",
        {"train_segmenter": {"common": {"loss_weights": {"boundary": 2.0}}}},
    ),
    "wide": ("twice the channels (24-48-96-144)", {"train_segmenter": {ARCH: {"width": 24}}}),
    "distilled": (
        "distilled from the ensemble (baseline + seed1: KL to their mean probabilities, weight 1)",
        {"train_segmenter": {"common": {"loss_weights": {"distill": 1.0}}, ARCH: {"teacher": "{teacher}"}}},
    ),
    "train_val": (
        "retrained on train + validation faces for the baseline's best epoch count (validation not held out)",
        {"train_segmenter": {"common": {"include_val": True, "max_epochs": "{baseline_epoch}"}}},
    ),
}
SCORED: dict[str, str] = {
    "baseline": "profiles/helen.yaml as shipped",
    "flip_tta": "baseline + flip averaging at test time (twice the cost)",
    "ensemble": "baseline + seed1, probabilities averaged (twice the cost)",
    "landmarks": "the TCNN's landmark polygons (no segmenter)",
}


def lever_params(repo: Path, lever: str, work: Path, threads: int) -> dict:
    text = json.dumps(TRAINED[lever][1])
    if "{baseline_epoch}" in text:
        baseline = repo / "models/segmenters" / ARCH / "lipseg_model.json"
        if not baseline.is_file():
            raise SystemExit(f"[{lever}] needs the baseline's best epoch: train {baseline.parent} first")
        text = text.replace('"{baseline_epoch}"', str(int(json.loads(baseline.read_text())["best_epoch"])))
    teachers = [repo / "models/segmenters" / ARCH, work / "seed1" / "models/segmenters" / ARCH]
    text = text.replace('"{teacher}"', json.dumps([str(folder.resolve()) for folder in teachers]))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    deep_update(params, json.loads(text))
    params["train_segmenter"]["common"]["threads"] = threads
    return params


def train_lever(repo: Path, lever: str, levers: Path, threads: int) -> Path:
    """The lever's model folder, trained by the pipeline's own stage scripts in --work/<lever>/."""
    work = levers / lever
    model = work / "models/segmenters" / ARCH
    if (model / "lipseg_model.json").is_file():
        return model
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "dvc.yaml", work / "dvc.yaml")  # marks the project root: MLflow and paths stay in `work`
    params = lever_params(repo, lever, levers, threads)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for item in LINKED:
        link = work / item
        if not link.is_symlink() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((repo / item).resolve(), target_is_directory=True)
    repo_params = yaml.safe_load((repo / "params.yaml").read_text())
    env = scratch_env()
    env["PYTHONPATH"] = str(ROOT / "src")
    segment_crops = work / "data/segment_crops"
    if params["segment_crops"] != repo_params["segment_crops"]:
        if not (segment_crops / "manifest.json").is_file():
            run(["stages/segment_crops.py"], work, env, lever)
    elif not segment_crops.is_symlink() and not segment_crops.exists():
        segment_crops.symlink_to((repo / "data/segment_crops").resolve(), target_is_directory=True)
    run(["stages/train_segmenter.py", ARCH], work, env, lever)
    return model


def run(script: list[str], work: Path, env: dict[str, str], lever: str) -> None:
    print(f"[{lever}] python {' '.join(script)}", flush=True)
    with open(work / "train.log", "a") as log:
        done = subprocess.run(
            [sys.executable, str(ROOT / script[0]), *script[1:]], cwd=work, env=env, stderr=log, stdout=log
        )
    if done.returncode:
        raise SystemExit(f"[{lever}] {script[0]} failed: see {work / 'train.log'}")


def score(repo: Path, helen_records: dict[str, list], runners: dict[str, SegmenterRunner]) -> dict[str, dict]:
    predictor = LipPredictor(repo / "models/tcnn", "hog", 1, engine="torch", flip_average=True)
    figures: dict[str, dict] = {}
    for split, records in helen_records.items():
        comparison = compare_mask_sources(records, predictor, runners, desc=f"{split} photos")
        for name, scores in comparison.as_predicted.items():
            summary = scores.summary()
            row = figures.setdefault(name, {})
            row[split] = {cls: summary[f"f1_{cls}"] for cls in CLASSES} | {"no_face": comparison.no_face}
            if split == "test":
                row["ms_per_face"] = comparison.nearest[name].summary()["ms_per_face"]
    return figures


def table(rows: dict[str, dict], descriptions: dict[str, str]) -> str:
    lines = [
        "| lever | what | val lips | val upper | val lower | val inner | test lips | test upper | test lower "
        "| test inner | ms/face | best epoch / run | train min |",
        "|---|---|" + "---|" * 11,
    ]
    for name, row in rows.items():
        val, test = row["val"], row["test"]
        trained = row.get("trained", {})
        epochs = f"{trained['best_epoch']} / {trained['epochs_run']}" if trained else ""
        minutes = f"{trained['train_minutes']:.0f}" if trained else ""
        lines.append(
            f"| {name} | {descriptions[name]} | "
            + " | ".join(f"{val[c]:.3f}" for c in CLASSES)
            + " | "
            + " | ".join(f"{test[c]:.3f}" for c in CLASSES)
            + f" | {row['ms_per_face']:.2f} | {epochs} | {minutes} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, required=True, help="a finished scratch repo (profiles/helen.yaml)")
    parser.add_argument("--levers", default=",".join(TRAINED), help=f"comma-separated, from {', '.join(TRAINED)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/segmenter_levers", help="the tables")
    parser.add_argument("--work", type=Path, default=None, help="lever runs (default: --repo/../levers)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training")
    parser.add_argument("--score-only", action="store_true", help="train nothing; score every trained lever")
    args = parser.parse_args()
    repo, out = args.repo.resolve(), args.out.resolve()
    work = (args.work or repo.parent / "levers").resolve()
    if not (repo / "data/segment_crops/manifest.json").is_file():
        raise SystemExit(f"{repo}: no pipeline run up to segment_crops there")
    if not args.score_only:
        for lever in filter(None, args.levers.split(",")):
            if lever not in TRAINED:
                raise SystemExit(f"unknown lever {lever!r}; choose from {', '.join(TRAINED)}")
            if lever == "distilled":
                train_lever(repo, "seed1", work, args.threads)
            train_lever(repo, lever, work, args.threads)
        return
    baseline = repo / "models/segmenters" / ARCH
    if not (baseline / "lipseg_model.json").is_file() or not (repo / "models/tcnn").is_dir():
        raise SystemExit(f"{repo}: score after the pipeline has finished (models/tcnn, {baseline})")
    folders = {"baseline": baseline} | {
        lever: work / lever / "models/segmenters" / ARCH
        for lever in TRAINED
        if (work / lever / "models/segmenters" / ARCH / "lipseg_model.json").is_file()
    }
    runners = {name: SegmenterRunner(folder, threads=1) for name, folder in folders.items()}
    runners["flip_tta"] = SegmenterRunner(baseline, flip_average=True, threads=1)
    if "seed1" in folders:
        runners["ensemble"] = SegmenterRunner(baseline, threads=1, ensemble=(folders["seed1"],))
    manifest = json.loads((repo / "data/crops/manifest.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    helen = Path(params["data"]["helen_path"])
    val_names = set(manifest["names"]["val"])
    records = {
        "val": [record for record in load_split(helen, "train")[0] if record.name in val_names],
        "test": load_split(helen, "test")[0],
    }
    figures = score(repo, records, runners)
    rows = {}
    for name in [*runners, LANDMARKS]:
        row = figures[name]
        if name in folders:
            meta = json.loads((folders[name] / "lipseg_model.json").read_text())
            row["trained"] = {key: meta[key] for key in ("best_epoch", "epochs_run", "train_minutes", "parameters")}
        rows["landmarks" if name == LANDMARKS else name] = row
    descriptions = SCORED | {name: text for name, (text, _) in TRAINED.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "levers.json").write_text(json.dumps({"repo": str(repo), "rows": rows}, indent=2) + "\n")
    markdown = table(rows, descriptions)
    (out / "levers.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
