"""Benchmark: the TCNN accuracy levers one at a time, on ground-truth crops and end to end.

    python bench/ablation.py [--rows paper,flips,...] [--helen ../shared/data/helen_sample]
                             [--out bench/results/ablation] [--force] [--tweak-study ROW]

Each row is a full `dvc repro` on the Helen sample (bench/pipeline.py, in its own scratch repo under
--out/<row>/) with the params overrides listed in ROWS below. For every trained model it then measures:
- ground-truth crops: lips/upper/lower/inner F1 and NME_io of the base and tweaked models, each with and
  without flip test-time averaging, on the validation split (for choosing) and on the test split (for
  reporting), scored by lipseg.tcnn.scoring (equal to lipeval; the pipeline run also scores with lipeval);
- end to end: `lipseg predict --mouth cascade` on the photos (bench/predict.py), test and validation;
- ms per face on one CPU thread for the landmark step (crop + TCNN with gating, onnxruntime, batch 1,
  x2 with flip averaging), on the test photos' crops.
A row is reused when --out/<row>/row.json exists (unless --force). --tweak-study ROW reruns fit_gmm and
finetune_heads in ROW's repo for several K and head settings and reports tweaked/base NME.
Writes --out/ablation.json and a Markdown table --out/ablation.md.
"""

from __future__ import annotations

import os

# The timings are single-thread (set before numpy loads its thread pool); training runs in subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from lipseg.core.files import load_npz
from lipseg.core.images import read_image
from lipseg.core.scratch import dvc_repro, scratch_env, set_params
from lipseg.data.crops import CropSet
from lipseg.data.geometry import warp_crop
from lipseg.data.helen import load_split
from lipseg.tcnn.export import OnnxCropRunner
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import predict_crops
from lipseg.tcnn.scoring import ground_truth_for, score, score_metrics

ROOT = Path(__file__).resolve().parents[1]


def bench_script(name: str) -> ModuleType:
    """Another script of bench/ (a folder of scripts, not a package), loaded as a module from its path."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


predict_bench = bench_script("predict")  # read_names, image_path, run_ours, lipeval, summarise, our_no_face
speed_bench = bench_script("speed")  # letterbox_placement, letterbox, timed_ms

WIDE = ["train_base.conv_channels=[24,48,64,96]", "train_base.fc5=192"]
# Each row: (label, params overrides on top of params.yaml). The chain adds one lever at a time; the
# branches after "size48" try BatchNorm, the cosine schedule and longer training (more jitter copies) on top of it.
PAPER = [
    "crop.augment.flip=false",
    "crop.size=40",
    "train_base.loss=mse",
    "train_base.batch_norm=false",
    "train_base.conv_channels=[16,48,64,64]",
    "train_base.fc5=100",
    "train_base.lr_schedule=plateau",
    "train_base.conv_activation=abs_tanh",
]
ROWS: dict[str, tuple[str, list[str]]] = {
    "paper": ("paper TCNN: 40 px, MSE, no flips", PAPER),
    "flips": ("+ horizontal flips", PAPER + ["crop.augment.flip=true"]),
    "wing": ("+ wing loss", PAPER + ["crop.augment.flip=true", "train_base.loss=wing"]),
    "wide": ("+ width 24-48-64-96, FC5 192", PAPER + ["crop.augment.flip=true", "train_base.loss=wing", *WIDE]),
    "size48": ("+ 48 px input", PAPER + ["crop.augment.flip=true", "train_base.loss=wing", *WIDE, "crop.size=48"]),
    "bn": (
        "size48 + BatchNorm (ReLU)",
        PAPER
        + [
            "crop.augment.flip=true",
            "train_base.loss=wing",
            *WIDE,
            "crop.size=48",
            "train_base.batch_norm=true",
            "train_base.conv_activation=relu",
        ],
    ),
    "cosine": (
        "size48 + cosine LR, 60 epochs",
        PAPER
        + [
            "crop.augment.flip=true",
            "train_base.loss=wing",
            *WIDE,
            "crop.size=48",
            "train_base.lr_schedule=cosine",
            "train_base.max_epochs=60",
            "train_base.patience=60",
        ],
    ),
    "long": (
        "size48 + 16 jitter copies, patience 25",
        PAPER
        + [
            "crop.augment.flip=true",
            "train_base.loss=wing",
            *WIDE,
            "crop.size=48",
            "crop.augment.copies=16",
            "train_base.patience=25",
        ],
    ),
    "default": ("params.yaml as committed", []),
}
CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth")
TWEAK_STUDY = {
    "K=2": {"gmm": {"k": 2}},
    "K=4": {"gmm": {"k": 4}},
    "K=auto (BIC)": {"gmm": {"k": "auto"}},
    "K=auto, copies follow their face": {"heads": {"cluster_by": "source"}, "gmm": {"fit_on": "plain"}},
    "K=auto, heads 100 epochs, lr 3e-4": {
        "heads": {"epochs": 100, "patience": 15, "lr": 0.0003, "cluster_by": "crop"},
        "gmm": {"fit_on": "all"},
    },
}


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    env = dict(os.environ)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(variable, None)  # training may use every core
    subprocess.run(command, check=True, cwd=ROOT, env=env)


def crop_metrics(repo: Path, split: str, model_dir: Path, flip: bool) -> dict:
    """F1 per class and NMEs of one model on the unjittered crops of `split` (val or test)."""
    crops = CropSet.from_arrays(load_npz(repo / "data/crops" / f"{split}.npz"))
    records = {r.name: r for r in load_split(repo / "data/raw", "test" if split == "test" else "train")[0]}
    model, _, _ = load_tcnn(model_dir)
    predictions = predict_crops(model, crops.images, flip_average=flip)
    metrics = score_metrics(score(predictions, crops, ground_truth_for(crops, records), 0.1))
    return {
        **{key: metrics[f"f1_{key}"] for key in CLASSES},
        "nme_io": metrics["nme_io"],
        "nme_io_respaced": metrics["nme_io_respaced"],
    }


def landmark_ms(repo: Path, model_dir: Path, flip: bool, faces: int = 60, repeats: int = 20) -> float:
    """Median ms per face of warp_crop + onnxruntime TCNN (one thread, batch 1) on test photos
    letterboxed to 640x480 as in bench/speed.py (the crop's cost grows with the photo's size)."""
    import cv2

    cv2.setNumThreads(1)
    crops = CropSet.from_arrays(load_npz(repo / "data/crops/test.npz"))
    records = {r.name: r for r in load_split(repo / "data/raw", "test")[0]}
    runner = OnnxCropRunner(model_dir, threads=1)
    size = load_tcnn(model_dir)[1].size
    times = []
    for index in range(min(faces, len(crops))):
        image = read_image(records[str(crops.names[index])].image_path)
        scale, _, _, x0, y0 = speed_bench.letterbox_placement(*image.shape[:2])
        boxed = speed_bench.letterbox(image)
        transform = np.asarray(crops.image_to_crop[index], np.float64).copy()  # photo pixels -> letterbox pixels
        transform[:, 2] -= transform[:, :2] @ np.array([x0, y0], np.float64) / scale
        transform[:, :2] /= scale
        times.append(speed_bench.timed_ms(lambda: runner(warp_crop(boxed, transform, size)[None], flip), repeats))
    return float(np.median(times))


def end_to_end(args: argparse.Namespace, repo: Path, out: Path, flip: bool, names_source: Path | None) -> dict:
    """`lipseg predict --mouth cascade` on the photos of the test split (or `names_source`), scored by lipeval."""
    names = predict_bench.read_names(args.helen, None, names_source)
    out.mkdir(parents=True, exist_ok=True)
    names_file = out / "names.txt"
    names_file.write_text("\n".join(names) + "\n")
    options = ["--cascade-passes", str(args.cascade_passes), "--flip-tta" if flip else "--no-flip-tta"]
    predict_bench.run_ours(
        [predict_bench.image_path(args.helen, name) for name in names],
        out / "ours",
        repo / "models/tcnn",
        "cascade",
        "hog",
        None,
        options,
    )
    report = predict_bench.lipeval(args.lipeval, args.helen, out / "ours", out / "lipeval.json", names_file)
    ours = predict_bench.summarise(report, len(predict_bench.our_no_face(out / "ours", names)))
    return {
        **{key: ours[f"f1_{key}"] for key in CLASSES},
        "nme_io": ours["nme_io"],
        "no_face": ours["no_face"],
        "images": len(names),
    }


def measure_row(args: argparse.Namespace, name: str) -> dict:
    label, overrides = ROWS[name]
    folder = args.out / name
    cached = folder / "row.json"
    if cached.is_file() and not args.force:
        return json.loads(cached.read_text())
    command = [
        sys.executable,
        "bench/pipeline.py",
        "--helen",
        str(args.helen),
        "--workdir",
        str(folder / "work"),
        "--out",
        str(folder),
        "--skip-incremental",
    ]
    for item in overrides:
        command += ["--set", item]
    run(command)
    repo = folder / "work" / "repo"
    pipeline = json.loads((folder / "pipeline.json").read_text())
    row = {
        "label": label,
        "overrides": overrides,
        "pipeline_seconds": pipeline["full"]["seconds"],
        "k": pipeline["chosen_k"],
        "models": {},
    }
    for model in ("base", "tweaked"):
        model_dir = repo / "models" / ("base" if model == "base" else "tcnn")
        for flip in (False, True):
            key = model + ("+tta" if flip else "")
            row["models"][key] = {
                "val": crop_metrics(repo, "val", model_dir, flip),
                "test": crop_metrics(repo, "test", model_dir, flip),
                "ms_per_face": landmark_ms(repo, model_dir, flip),
            }
    for flip in (False, True):
        key, suffix = "tweaked" + ("+tta" if flip else ""), "_tta" if flip else ""
        row["models"][key]["e2e_val"] = end_to_end(
            args, repo, folder / f"e2e_val{suffix}", flip, repo / "data/crops/val.npz"
        )
        row["models"][key]["e2e_test"] = end_to_end(args, repo, folder / f"e2e_test{suffix}", flip, None)
    cached.write_text(json.dumps(row, indent=2) + "\n")
    return row


def tweak_study(args: argparse.Namespace, name: str) -> list[dict]:
    repo = args.out / name / "work" / "repo"
    if not (repo / "dvc.lock").is_file():
        raise SystemExit(f"run row {name} first (no {repo}/dvc.lock)")
    env = scratch_env(repo)
    results = []
    for label, changes in TWEAK_STUDY.items():
        set_params(repo, changes)
        stages, seconds = dvc_repro(repo, env)
        metrics = json.loads((repo / "metrics.json").read_text())
        heads = json.loads((repo / "reports/finetune_heads.json").read_text())
        e2e = end_to_end(args, repo, args.out / name / f"e2e_tweak_{len(results)}", True, None)
        results.append(
            {
                "setting": label,
                "e2e_test": e2e,
                "k": metrics["k"],
                "seconds": round(seconds, 1),
                "stages": stages,
                "test_ratio_nme_io": metrics["tweaked"]["nme_io"] / metrics["base"]["nme_io"],
                "test_ratio_nme_respaced": metrics["tweaked"]["nme_io_respaced"] / metrics["base"]["nme_io_respaced"],
                "val_ratio_nme_respaced": (
                    metrics["val"]["tweaked"]["nme_io_respaced"] / metrics["val"]["base"]["nme_io_respaced"]
                ),
                "test_f1_lips": {"base": metrics["base"]["f1_lips"], "tweaked": metrics["tweaked"]["f1_lips"]},
                "heads_kept": sum(not head["fallback"] for head in heads["heads"]),
                "head_val_gain": [round(head["head_val_nme"] / head["base_val_nme"], 4) for head in heads["heads"]],
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def markdown(rows: dict[str, dict], study: list[dict]) -> str:
    lines = [
        "| lever | model | GT val lips | GT test lips | upper | lower | inner | NME_io | NME_io* | ms/face "
        "| e2e val lips | e2e test lips | upper | lower | inner | pipeline s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        for key, model in row["models"].items():
            test, val = model["test"], model["val"]
            e2e_val, e2e_test = model.get("e2e_val"), model.get("e2e_test")
            e2e = (
                (
                    f"{e2e_val['lips']:.3f} | {e2e_test['lips']:.3f} | {e2e_test['upper_lip']:.3f} | "
                    f"{e2e_test['lower_lip']:.3f} | {e2e_test['inner_mouth']:.3f}"
                )
                if e2e_test
                else "- | - | - | - | -"
            )
            lines.append(
                f"| {row['label']} | {key}{' K=' + str(row['k']) if key.startswith('tweaked') else ''} | "
                f"{val['lips']:.3f} | {test['lips']:.3f} | {test['upper_lip']:.3f} | "
                f"{test['lower_lip']:.3f} | {test['inner_mouth']:.3f} | {test['nme_io']:.4f} | "
                f"{test['nme_io_respaced']:.4f} | "
                f"{model['ms_per_face']:.2f} | {e2e} | {row['pipeline_seconds']:.0f} |"
            )
    if study:
        lines += [
            "",
            "| tweak setting | K | tweaked/base NME_io* test | val | tweaked/base NME_io test "
            "| lips F1 base → tweaked | e2e test lips (tweaked+tta) | heads kept | rerun s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for item in study:
            lines.append(
                f"| {item['setting']} | {item['k']} | {item['test_ratio_nme_respaced']:.3f} | "
                f"{item['val_ratio_nme_respaced']:.3f} | {item['test_ratio_nme_io']:.3f} | "
                f"{item['test_f1_lips']['base']:.3f} → {item['test_f1_lips']['tweaked']:.3f} | "
                f"{item['e2e_test']['lips']:.3f} | {item['heads_kept']}/{item['k']} | {item['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--lipeval", type=Path, default=ROOT.parent / "shared" / "tools" / "lipeval.py")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ablation")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument(
        "--cascade-passes", type=int, default=3, help="lipseg predict --cascade-passes for the end-to-end runs"
    )
    parser.add_argument("--force", action="store_true", help="re-measure rows that already have results")
    parser.add_argument("--tweak-study", metavar="ROW", default=None, help="also rerun the tweak stages of ROW's repo")
    args = parser.parse_args()
    if not (args.helen / "annotation").is_dir():
        sys.exit(f"Helen-layout folder not found: {args.helen}")
    args.helen, args.out, args.lipeval = args.helen.resolve(), args.out.resolve(), args.lipeval.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = [name for name in args.rows.split(",") if name not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; choose from {list(ROWS)}")
    rows = {name: measure_row(args, name) for name in args.rows.split(",")}
    study = tweak_study(args, args.tweak_study) if args.tweak_study else []
    result = {"rows": rows, "tweak_study": study, "cascade_passes": args.cascade_passes}
    previous = args.out / "ablation.json"
    if previous.is_file():  # keep rows measured by earlier invocations
        old = json.loads(previous.read_text())
        result["rows"] = {**old.get("rows", {}), **rows}
        result["tweak_study"] = study or old.get("tweak_study", [])
    previous.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result["rows"], result["tweak_study"])
    (args.out / "ablation.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
