"""Benchmark: the five pixel-wise segmenters and the TCNN landmark polygons, end to end on the Helen
test photos (dlib face -> TCNN lips -> each mask source on the TCNN-located crop), in one table.

    python bench/segmenters.py [--helen ../shared/data/helen_sample] [--workdir DIR [--reuse]]
                               [--profile profiles/helen.yaml] [--out bench/results/segmenters]
                               [--set train_segmenter.common.max_epochs=20 ...]

Runs `dvc repro evaluate_segmenters` (and everything it depends on) in a scratch git + DVC repo on the
Helen sample, with the real-data profile on top of params.yaml, then scores every model's label-mask
PNGs with ../shared/tools/lipeval.py as well, and checks that it agrees with the stage's own numbers.
Writes --out/segmenters.json, --out/segmenters.md, the per-model figure and the training curves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lipseg.core.scratch import (
    PROJECT_FOLDERS,
    dvc_repro,
    helen_scratch_repo,
    load_profile,
    run_checked,
    scratch_env,
)
from lipseg.segmentation.compare import comparison_table

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth", "mouth")
# dlib HOG + 68 points, reference row: all 330 Helen-sample test photos end to end (as in bench/predict.py).
DLIB_REFERENCE = {"lips": 0.803, "upper_lip": 0.763, "lower_lip": 0.780, "inner_mouth": 0.782, "mouth": 0.897}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--lipeval", type=Path, default=ROOT.parent / "shared" / "tools" / "lipeval.py")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch repo location (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmenters")
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles" / "helen.yaml", help="real-data params")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeatable)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep --workdir's scratch repo (e.g. a release run): rerun what changed"
    )
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="keep the models trained in --workdir and rerun only the evaluate_segmenters script "
        "there, with this checkout's code (e.g. after a change to the evaluation)",
    )
    args = parser.parse_args()
    settings = args.set
    if args.reevaluate:
        if args.workdir is None or not (args.workdir / "repo" / "models" / "segmenters").is_dir():
            sys.exit("--reevaluate needs --workdir with a finished run")
        repo = (args.workdir / "repo").resolve()
        env = scratch_env(repo)
        for folder in PROJECT_FOLDERS:
            shutil.rmtree(repo / folder)
            shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        previous_file = args.out / "segmenters.json"
        previous = json.loads(previous_file.read_text()) if previous_file.is_file() else {}
        stages, seconds = previous.get("stages", []), previous.get("seconds", float("nan"))
        run_checked(
            [sys.executable, "stages/evaluate_segmenters.py"],
            repo,
            {**env, "PYTHONPATH": str(repo / "src"), "LIPSEG_PIPELINE_ID": "reevaluate"},
        )
    else:
        workdir = args.workdir.resolve() if args.workdir else None
        repo, env = helen_scratch_repo(
            args.helen, workdir, settings, "lipseg-seg-", load_profile(args.profile), keep=args.reuse
        )
        print(f"dvc repro evaluate_segmenters on {args.helen} (scratch repo {repo}) ...", flush=True)
        stages, seconds = dvc_repro(repo, env, ("evaluate_segmenters",))
    metrics = json.loads((repo / "metrics_segmenters.json").read_text())
    crops = json.loads((repo / "data/segment_crops/manifest.json").read_text())

    agreement = {}
    if args.lipeval.is_file():
        for folder in sorted((repo / "reports/evaluate_segmenters/pred_test").iterdir()):
            report_path = repo / f"lipeval_{folder.name}.json"
            run_checked(
                [
                    sys.executable,
                    str(args.lipeval),
                    "--gt",
                    str(repo / "data/raw"),
                    "--split",
                    "test",
                    "--pred",
                    str(folder),
                    "--json",
                    str(report_path),
                    "--quiet",
                ],
                repo,
                env,
            )
            report = json.loads(report_path.read_text())
            ours = metrics["models"][folder.name.replace("_", " ") if folder.name == "tcnn_landmarks" else folder.name]
            agreement[folder.name] = {
                c: {"lipeval": report["pooled"][c]["f1"], "lipseg": ours[f"f1_{c}"]} for c in CLASSES
            }
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "reports/evaluate_segmenters/models.png", args.out / "models.png")
    for curves in (repo / "reports/train_segmenter").glob("*/curves.png"):
        shutil.copy2(curves, args.out / f"curves_{curves.parent.name}.png")
    max_difference = max(
        (abs(v["lipeval"] - v["lipseg"]) for model in agreement.values() for v in model.values()), default=None
    )
    result = {
        "dataset": str(args.helen),
        "profile": str(args.profile),
        "settings": settings,
        "seconds": round(seconds, 1),
        "stages": stages,
        "locator_spread": crops["locator"],
        "segment_crop_counts": crops["counts"],
        "metrics": metrics,
        "lipeval_agreement": agreement,
        "lipeval_max_abs_difference": max_difference,
    }
    (args.out / "segmenters.json").write_text(json.dumps(result, indent=2) + "\n")
    table = comparison_table(metrics["models"])
    dlib_row = (
        "| dlib 68 (reference) | " + " | ".join(f"{DLIB_REFERENCE[c]:.3f}" for c in CLASSES) + " | - | - | - | - | - |"
    )
    (args.out / "segmenters.md").write_text(table + "\n" + dlib_row + "\n")
    print(f"\n{len(stages)} stages in {seconds / 60:.1f} min: {', '.join(stages)}")
    print(
        f"TCNN-located box vs ground truth on {crops['locator']['located']} validation faces: "
        f"{crops['locator']['box_vs_ground_truth']}"
    )
    print(
        f"\ntest split, {metrics['test_images']} photos end to end ({metrics['no_face']} without a face), "
        f"flip TTA {metrics['flip_tta']}"
    )
    print(table + "\n" + dlib_row)
    if agreement:
        print(f"lipeval vs lipseg.evaluation, largest F1 difference over all models and classes: {max_difference:.2e}")
    print(
        f"best segmenter: {metrics['best_segmenter']}; wrote {args.out / 'segmenters.json'}, segmenters.md, models.png"
    )


if __name__ == "__main__":
    main()
