"""Build the release model that ships inside the package: the pipeline on Helen with the real-data profile,
end-to-end figures on the validation and test photos, and a model card.

    python scripts/release.py [--helen ../shared/data/helen_sample] [--profile profiles/helen.yaml]
                              [--workdir DIR] [--set KEY=VALUE ...] [--dry-run]

1. `dvc repro` in a scratch copy of the pipeline (git + DVC), params.yaml with the profile on top;
2. `lipseg predict` (as a user runs it, defaults only) with the TCNN (tweaked only when it beats the
   vanilla one on validation, `choose_tcnn`) and the segmenter that evaluate_segmenters chose on the
   validation photos, on the validation and the test photos; every
   label PNG scored by the project's evaluator (= ../shared/tools/lipeval.py, cross-checked when present);
3. the two model folders copied to src/lipseg/weights/{tcnn,segmenter}, with release.json (the figures,
   the validation names, data digest, params, commit) and MODEL_CARD.md beside them.
With --dry-run, steps 1-2 run and nothing in src/ is touched.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lipseg.core.files import atomic_directory, write_json_atomic, write_text_atomic
from lipseg.core.onnx_runtime import SHIPPED_FOLDER
from lipseg.core.scratch import SOURCE_FILE, dvc_repro, helen_scratch_repo, load_profile, run_checked, source_commit
from lipseg.data.helen import load_split
from lipseg.evaluation.outputs import annotated_face_masks, score_folder
from lipseg.inference.models import RELEASE
from lipseg.segmentation.export import export_segmenter_onnx
from lipseg.tcnn.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth", "mouth")
REFERENCES = {  # the 330 Helen test photos, end to end, the annotated face's PNG mask scored by lipeval
    "MediaPipe Face Mesh 0.10.21 (refine_landmarks, 40 lip points as polygons)": {
        "lips": 0.818,
        "upper_lip": 0.745,
        "lower_lip": 0.812,
        "inner_mouth": 0.824,
        "no_face": 0,
    },
    "dlib HOG + 68 points": {"lips": 0.803, "upper_lip": 0.763, "lower_lip": 0.780, "inner_mouth": 0.782, "no_face": 5},
}


def predict_and_score(
    repo: Path, env: dict[str, str], records: list, tcnn: Path, segmenter: Path, out: Path, mask_source: str = "auto"
) -> dict:
    """`lipseg predict` on the records' photos (defaults, no overlay) and the lipeval figures of its PNGs."""
    photos = [str(record.image_path) for record in records]
    started = time.perf_counter()
    command = [
        sys.executable,
        "-m",
        "lipseg",
        "predict",
        *photos,
        "--out",
        str(out),
        "--model",
        str(tcnn),
        "--segmenter",
        str(segmenter),
        "--mask-source",
        mask_source,
        "--no-overlay",
        "--quiet",
        "--format",
        "png-grey",  # lipeval_check hands these PNGs to lipeval, which refuses a palette PNG as a colour one
    ]
    # This checkout's `lipseg predict` (what ships), not the scratch repo's copy of the code.
    done = subprocess.run(
        command, cwd=repo, env={**env, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, text=True
    )
    if done.returncode not in (0, 1):
        raise SystemExit(f"lipseg predict failed ({done.returncode}):\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    results = [json.loads((out / f"{record.name}.json").read_text()) for record in records]
    # The mask step as predict ran it (one thread per worker), on the photos with exactly one face.
    mask_ms = [result["timings_ms"]["mask"] for result in results if len(result["faces"]) == 1]
    return {
        "photos": len(records),
        "no_face": sum(1 for result in results if not result["faces"]),
        "seconds": round(seconds, 1),
        "mask_ms_per_face": round(float(np.median(mask_ms)), 2) if mask_ms else None,
        **score_pngs(out, records),
    }


def score_pngs(folder: Path, records: list) -> dict[str, float]:
    headline = score_folder(folder, records, "png")["headline"]
    return {name: headline[f"f1_{name}"] for name in CLASSES}


def choose_tcnn(val_metrics: dict) -> tuple[str, str]:
    """The tweaked TCNN (GMM gate + K heads) ships only when it beats the vanilla one on the validation
    split's ground-truth crops (lips F1); otherwise the vanilla one does: as accurate, a fifth of the size
    and faster."""
    base, tweaked = val_metrics["base"]["f1_lips"], val_metrics["tweaked"]["f1_lips"]
    kind = "tweaked" if tweaked > base else "vanilla"
    return kind, f"validation lips F1 on ground-truth crops: vanilla {base:.4f}, tweaked {tweaked:.4f}"


def lipeval_check(lipeval: Path, helen: Path, split: str, records: list, out: Path, ours: dict) -> float:
    """The official scorer on the same PNGs (alone in a folder: beside a JSON, lipeval scores the JSON's
    points): the largest difference from our figures."""
    names_file, report = out.parent / f"{out.name}_names.txt", out.parent / f"{out.name}_lipeval.json"
    names_file.write_text("\n".join(record.name for record in records) + "\n")
    pngs = out.parent / f"{out.name}_png_only"
    shutil.rmtree(pngs, ignore_errors=True)
    pngs.mkdir()
    for png in out.glob("*.png"):
        (pngs / png.name).symlink_to(png.resolve())
    run_checked(
        [
            sys.executable,
            str(lipeval),
            "--gt",
            str(helen),
            "--split",
            split,
            "--names",
            str(names_file),
            "--pred",
            str(pngs),
            "--json",
            str(report),
            "--quiet",
        ],
        ROOT,
        {"PATH": str(Path(sys.executable).parent)},
    )
    pooled = json.loads(report.read_text())["pooled"]
    return max(abs(pooled[name]["f1"] - ours[name]) for name in CLASSES)


def model_card(release: dict) -> str:
    def row(name: str, figures: dict) -> str:
        return f"| {name} | " + " | ".join(f"{figures[c]:.3f}" for c in CLASSES[:4]) + f" | {figures['no_face']} |"

    val, test, test_annotated = release["validation"], release["test"], release["test_annotated_face"]
    data = release["training_data"]
    return (
        f"""# lipseg release model

The model `lipseg predict` uses when no `--model` is given: a {release["tcnn"]["kind"]} TCNN (lip landmarks and
the crop they place) and a {release["segmenter"]["arch"]} segmenter (the lip mask), trained by this project's DVC
pipeline with the real-data profile (`{release["profile"]}`), commit `{release["commit"]}`. The tweaked
TCNN (a GMM gate over FC5 picking one of K fine-tuned heads) ships only when it beats the vanilla one on
the validation split; here: {release["tcnn"]["chosen_on"]}.

## Training data
- Helen (Le, Brandt, Lin, Bourdev, Huang, ECCV 2012): {data["train_faces"]} training faces, model settings
  chosen on {data["val_faces"]} validation faces carved from the Helen train photos (whole photos, never split),
  the 330 Helen test photos only reported. Source folder digest (sha256 over names and bytes):
  `{data["digest"]}`.
- Annotations: the original Helen 194-point annotations (the lip points 58-113).

## Licence
The Helen images and the 300-W annotations are for research, non-commercial use, and so are these weights.
Do not use them in a product or redistribute them for commercial purposes. Cite the Helen paper.

## End-to-end figures
`lipseg predict` with its defaults (dlib HOG face, TCNN landmarks, segmenter mask), every photo's label PNG
scored by the EVALUATION.md evaluator (pooled pixel F1; a photo without a face scores as an empty mask).
Helen annotates one face per photo. *Annotated face*: the PNG keeps only that face (the JSON face whose
lips are nearest the annotation, as the evaluator picks from JSON), the protocol of the MediaPipe and dlib
reference rows, whose scripts draw only that face. *Every face*: the PNG as `lipseg predict` writes it,
where the other people in a photo count as false positives
({test_annotated["photos_with_other_faces"]} of the {test["photos"]} test photos have more than one face).

| photos | lips | upper lip | lower lip | inner mouth | photos without a face |
|---|---|---|---|---|---|
{row(f"validation ({val['photos']}), annotated face", release["validation_annotated_face"])}
{row(f"test ({test['photos']}), annotated face", test_annotated)}
{row("validation, every face", val)}
{row("test, every face", test)}
{row("validation, `--mask-source landmarks`, annotated face", release["validation_landmarks_annotated_face"])}
{row("test, `--mask-source landmarks`, annotated face", release["test_landmarks_annotated_face"])}
"""
        + "\n".join(row(f"{name}, test", figures) for name, figures in REFERENCES.items())
        + f"""

Mask step (crop, segmenter, paste-back): {release["test"]["mask_ms_per_face"]:.2f} ms per face as
`lipseg predict` runs it (onnxruntime, one thread; median over the test photos with one face),
{release["segmenter"]["ms_per_face"]:.2f} ms in torch (evaluate_segmenters, one thread). The segmenter has
{release["segmenter"]["parameters"]:,} parameters. `release.json` beside this card holds every figure, the
validation photo names and the params.

## Intended use and limits
- Frontal and moderately turned faces in photos and video frames; lips at least about 30 px wide (dlib's
  HOG detector finds faces from about 40 px, upsampling once when it finds none; smaller faces are missed).
- Profile views, heavy occlusion (hands, microphones), and faces dlib does not detect give no output
  (`"faces": []`), not a guess. Extreme head roll is outside the training data.
- Trained on Helen's Flickr portraits: other populations, lighting and cameras may score lower.
- Not for identification, surveillance or any decision about a person.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--profile", type=Path, default=ROOT / "profiles" / "helen.yaml")
    parser.add_argument("--lipeval", type=Path, default=ROOT.parent / "shared" / "tools" / "lipeval.py")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch repo location (default: a temp dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override (repeatable)")
    parser.add_argument(
        "--reuse", action="store_true", help="keep --workdir's scratch repo as it is: `dvc repro` finishes it"
    )
    parser.add_argument("--dry-run", action="store_true", help="train and score, but leave src/lipseg/weights alone")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    workdir = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="lipseg-release-"))
    started = time.perf_counter()
    repo, env = helen_scratch_repo(args.helen, workdir, args.set, "lipseg-release-", profile, keep=args.reuse)
    print(f"dvc repro on {args.helen} with {args.profile.name} (scratch repo {repo}) ...", flush=True)
    stages, _ = dvc_repro(repo, env)
    # With --reuse this is only what was left to run; each model folder records its own training time.
    repro_minutes = (time.perf_counter() - started) / 60
    best = json.loads((repo / "models" / "segmenters" / "best.json").read_text())
    tcnn_kind, tcnn_reason = choose_tcnn(json.loads((repo / "metrics.json").read_text())["val"])
    tcnn = repo / "models" / ("tcnn" if tcnn_kind == "tweaked" else "base")
    segmenter = repo / best["folder"]
    print(f"TCNN: {tcnn_kind} ({tcnn_reason})", flush=True)
    crops = json.loads((repo / "data" / "crops" / "manifest.json").read_text())
    val_names = set(crops["names"]["val"])
    val = [record for record in load_split(args.helen, "train")[0] if record.name in val_names]
    test = load_split(args.helen, "test")[0]
    figures = {}
    for split, records in (("validation", val), ("test", test)):
        for mask_source, suffix in (("auto", ""), ("landmarks", "_landmarks")):
            out = workdir / f"predict_{split}{suffix}"
            shutil.rmtree(out, ignore_errors=True)
            figures[f"{split}{suffix}"] = predict_and_score(repo, env, records, tcnn, segmenter, out, mask_source)
            annotated = workdir / f"predict_{split}{suffix}_annotated_face"
            shutil.rmtree(annotated, ignore_errors=True)
            trimmed = annotated_face_masks(out, records, annotated)
            figures[f"{split}{suffix}_annotated_face"] = figures[f"{split}{suffix}"] | score_pngs(annotated, records)
            figures[f"{split}{suffix}_annotated_face"]["photos_with_other_faces"] = trimmed
            if args.lipeval.is_file():
                for folder, key in ((out, f"{split}{suffix}"), (annotated, f"{split}{suffix}_annotated_face")):
                    figures[key]["lipeval_max_difference"] = lipeval_check(
                        args.lipeval,
                        args.helen,
                        "train" if split == "validation" else "test",
                        records,
                        folder,
                        figures[key],
                    )
        for key in (split, f"{split}_annotated_face"):
            print(
                f"{key}: "
                + ", ".join(f"{name} {figures[key][name]:.3f}" for name in CLASSES)
                + f", {figures[key]['no_face']} without a face",
                flush=True,
            )
    segmenter_metrics = json.loads((repo / "metrics_segmenters.json").read_text())
    segmenter_meta = json.loads((segmenter / "lipseg_model.json").read_text())
    # The commit whose pipeline trained the models (the scratch repo's code); predicting ran this checkout's.
    source = repo / SOURCE_FILE
    commit = json.loads(source.read_text())["commit"] if source.is_file() else source_commit(ROOT)
    release = {
        "profile": str(args.profile.relative_to(ROOT)) if args.profile.is_relative_to(ROOT) else str(args.profile),
        "settings": args.set,
        "params": yaml.safe_load((repo / "params.yaml").read_text()),
        "commit": commit,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}",
        "repro_minutes": round(repro_minutes, 1),
        "stages_run": stages,
        "training_data": crops["training_data"],
        "validation_names": sorted(val_names),
        "validation": figures["validation"],
        "test": figures["test"],
        **{
            f"{split}{suffix}": figures[f"{split}{suffix}"]
            for split in ("validation", "test")
            for suffix in ("_annotated_face", "_landmarks", "_landmarks_annotated_face")
        },
        "references": REFERENCES,
        "tcnn": {"kind": tcnn_kind, "chosen_on": tcnn_reason},
        "segmenter": {
            "arch": best["arch"],
            "chosen_on": best["chosen_on"],
            "parameters": segmenter_meta["parameters"],
            "train_minutes": segmenter_meta.get("train_minutes"),
            "ms_per_face": segmenter_metrics["models"][best["arch"]]["ms_per_face"],
        },
    }
    if args.dry_run:
        print(json.dumps({key: release[key] for key in ("validation", "test", "segmenter")}, indent=2))
        return
    with atomic_directory(RELEASE) as staging:
        shutil.copytree(tcnn, staging / "tcnn")
        shutil.copytree(segmenter, staging / "segmenter")
        # Their ONNX exports ship too: `lipseg predict` (the ONNX engine) then starts without importing torch.
        export_onnx(staging / "tcnn", staging / "tcnn" / SHIPPED_FOLDER)
        export_segmenter_onnx(staging / "segmenter", staging / "segmenter" / SHIPPED_FOLDER)
        write_json_atomic(staging / "release.json", release)
        write_text_atomic(staging / "MODEL_CARD.md", model_card(release))
    megabytes = sum(file.stat().st_size for file in RELEASE.rglob("*") if file.is_file()) / 1e6
    print(f"release model written to {RELEASE} ({megabytes:.1f} MB)")


if __name__ == "__main__":
    main()
