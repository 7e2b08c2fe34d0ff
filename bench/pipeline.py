"""Benchmark: a full `dvc repro` on a Helen-layout folder, then the incremental rerun after changing
gmm.k, plus the test-set figures of the base and tweaked models scored by the official lipeval.

    python bench/pipeline.py [--helen ../shared/data/helen_sample] [--workdir DIR] [--out bench/results]

Runs in a scratch git + DVC repo (your workspace and mlflow.db are left alone). Prints a table and
writes bench/results/pipeline.json plus the BIC curve, cluster montages, CED and overlay grid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from lipseg.core.scratch import dvc_repro, helen_scratch_repo, run_checked, set_params

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth", "mouth")


def lipeval(repo: Path, env: dict[str, str], lipeval_path: Path, model: str) -> dict:
    report = repo / f"lipeval_{model}.json"
    run_checked(
        [
            sys.executable,
            str(lipeval_path),
            "--gt",
            str(repo / "data/raw"),
            "--split",
            "test",
            "--pred",
            str(repo / "reports/evaluate/pred_test" / model),
            "--json",
            str(report),
            "--quiet",
        ],
        repo,
        env,
    )
    return json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--lipeval", type=Path, default=ROOT.parent / "shared" / "tools" / "lipeval.py")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch repo location (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. --set crop.box_source=detector (YAML value; repeatable)",
    )
    parser.add_argument("--skip-incremental", action="store_true", help="only the full run")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="STAGE",
        help="dvc repro these stages and what they depend on (default: evaluate, i.e. the TCNN "
        "pipeline; the segmenters have bench/segmenters.py)",
    )
    args = parser.parse_args()
    repo, env = helen_scratch_repo(args.helen, args.workdir, args.set)
    workdir = repo.parent

    print(f"full dvc repro on {args.helen} (scratch repo {repo}) ...", flush=True)
    targets = tuple(args.target or ["evaluate"])
    stages_full, full_seconds = dvc_repro(repo, env, targets)
    metrics = json.loads((repo / "metrics.json").read_text())
    clusters = json.loads((repo / "reports/fit_gmm/clusters.json").read_text())
    heads = json.loads((repo / "reports/finetune_heads.json").read_text())
    official = {}
    if args.lipeval.is_file():
        official = {model: lipeval(repo, env, args.lipeval, model) for model in ("base", "tweaked")}
    args.out.mkdir(parents=True, exist_ok=True)
    for source, name in (
        ("reports/fit_gmm/bic.png", "bic.png"),
        ("reports/evaluate/ced.png", "ced.png"),
        ("reports/train_base/curves.png", "train_curves.png"),
    ):
        shutil.copy2(repo / source, args.out / f"pipeline_{name}")
    for montage in sorted((repo / "reports/fit_gmm").glob("cluster_*.png")):
        shutil.copy2(montage, args.out / f"pipeline_{montage.name}")
    shutil.copy2(repo / "reports/evaluate/overlays.png", args.out / "pipeline_overlays.png")

    chosen = int(clusters["k"])
    new_k = chosen + 1 if chosen < 8 else chosen - 1
    stages_incremental, incremental_seconds, metrics_new_k = [], float("nan"), metrics
    if not args.skip_incremental:
        # A scratch copy keeps the auto-K models in place for the end-to-end benchmark.
        shutil.copytree(repo / "models", workdir / "models_auto_k", dirs_exist_ok=True)
        set_params(repo, {"gmm": {"k": new_k}})
        print(f"incremental dvc repro after gmm.k: auto (chose {chosen}) -> {new_k} ...", flush=True)
        stages_incremental, incremental_seconds = dvc_repro(repo, env, targets)
        metrics_new_k = json.loads((repo / "metrics.json").read_text())

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cuda": torch.cuda.is_available(),
        },
        "dataset": str(args.helen),
        "overrides": args.set,
        "crops": (
            "from dlib's 68-point mouth" if "crop.box_source=detector" in args.set else "from ground-truth landmarks"
        ),
        "full": {"seconds": round(full_seconds, 1), "stages": stages_full},
        "incremental_gmm_k": {"seconds": round(incremental_seconds, 1), "stages": stages_incremental, "k": new_k},
        "incremental_over_full": round(incremental_seconds / full_seconds, 3),
        "chosen_k": chosen,
        "bic": clusters["bic"],
        "cluster_sizes": clusters["sizes"],
        "heads": heads["heads"],
        "fallback_clusters": heads["fallback_clusters"],
        "metrics": metrics,
        "metrics_with_new_k": {m: metrics_new_k[m] for m in ("base", "tweaked")},
        "lipeval": {
            model: {"f1": {c: report["pooled"][c]["f1"] for c in CLASSES}, "nme": report["nme"]}
            for model, report in official.items()
        },
    }
    (args.out / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")

    print(
        f"\nfull dvc repro: {full_seconds:.0f} s ({len(stages_full)} stages); "
        f"incremental after gmm.k change: {incremental_seconds:.0f} s {stages_incremental}; "
        f"ratio {incremental_seconds / full_seconds:.2f}"
    )
    print(f"chosen K = {chosen} by BIC; cluster sizes {clusters['sizes']}; fallbacks {heads['fallback_clusters']}")
    print("BIC: " + ", ".join(f"K={row['k']}: {row['bic']:.0f}" for row in clusters["bic"]))
    print(f"\ntest split, crops {result['crops']}, scored by " + ("lipeval" if official else "lipseg.tcnn.scoring"))
    print(
        f"{'model':8s} {'lips':>7s} {'upper':>7s} {'lower':>7s} {'inner':>7s} {'mouth':>7s} {'NME_io':>8s} "
        f"{'NME_mw':>8s} {'FR@.1':>6s} {'NME_io*':>8s}"
    )
    for model in ("base", "tweaked"):
        ours = metrics[model]
        if official:
            f1, nme = result["lipeval"][model]["f1"], result["lipeval"][model]["nme"]
            row = [f1[c] for c in CLASSES] + [nme["mean_io"], nme["mean_mw"], nme["failure_rate"]]
        else:
            row = [ours[f"f1_{c}"] for c in CLASSES] + [ours["nme_io"], ours["nme_mw"], ours["failure_rate"]]
        print(
            f"{model:8s} "
            + " ".join(f"{v:7.4f}" for v in row[:5])
            + f" {row[5]:8.4f} {row[6]:8.4f} {row[7]:6.3f} {ours['nme_io_respaced']:8.4f}"
        )
    print("NME_io* = against the arc-length re-spaced ground truth (lipeval compares by index)")
    print(f"tweaked/base NME_io = {metrics['tweaked_vs_base_nme_io']:.3f}")
    print(f"\nwrote {args.out / 'pipeline.json'} and figures in {args.out}")


if __name__ == "__main__":
    main()
