"""Benchmark: end-to-end accuracy on the Helen test photos, ours versus plain dlib, scored by lipeval.

    python bench/predict.py [--helen ../shared/data/helen_sample] [--model models/tcnn]
                            [--mouth dlib68|cascade] [--cascade-passes N] [--[no-]flip-tta]
                            [--out bench/results/predict] [--limit N]

No ground-truth crop is used anywhere: both pipelines start from the photo.
1. ours: `lipseg predict` run as a user would (a subprocess on the test images, read in place);
2. dlib: HOG detection (upsample 1) + the 68-point predictor, mouth points 48..67 -> label mask
   (EVALUATION.md's iBUG polygons), one PNG per image (all zero when no face is found);
3. both folders scored by the official lipeval; a side-by-side table, --out/predict.json, and an
   overlay grid --out/predict_overlays.png (mouth close-ups: ground truth | ours | dlib).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from lipseg.core.images import ImageError, read_image
from lipseg.data.helen import find_image, load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.masks import ibug_mouth_polygons, label_mask_from_lips, rasterise_polygons
from lipseg.evaluation.overlays import crop_around, overlay, overlay_grid
from lipseg.inference.detect import DETECTORS, FaceDetector, ShapePredictor68, mouth_points, to_rgb

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("lips", "upper_lip", "lower_lip", "inner_mouth")
# Reference row: dlib HOG + 68 points on all 330 test photos of the Helen sample, scored by the same evaluator.
DLIB_REFERENCE = {
    "lips": 0.803,
    "upper_lip": 0.763,
    "lower_lip": 0.780,
    "inner_mouth": 0.782,
    "mouth": 0.897,
    "no_face": 5,
}


def read_names(helen: Path, limit: int | None, names_source: Path | None = None) -> list[str]:
    """Test names, or those of `names_source`: a text file (one per line) or a pipeline crops file such as
    data/crops/val.npz, so settings can be chosen on the validation split and only reported on test."""
    source = names_source or helen / "testnames.txt"
    if source.suffix == ".npz":
        with np.load(source) as crops:
            names = list(dict.fromkeys(str(name) for name in crops["names"]))
    else:
        names = [line.strip() for line in source.read_text().splitlines() if line.strip()]
    return names[:limit] if limit else names


def image_path(helen: Path, name: str) -> Path:
    path = find_image(helen, name)
    if path is None:
        raise FileNotFoundError(f"no image for {name} in {helen / 'images'}")
    return path


def helen_lips(helen: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Ground-truth lip points (`HELEN_LIPS` of the Helen annotation) of the wanted names, read by
    lipseg.data.helen: the test split, then the train split for names it lacks (validation photos)."""
    found: dict[str, np.ndarray] = {}
    rejected: dict[str, str] = {}
    for split in ("test", "train"):
        if wanted <= found.keys():
            break
        records, rejects = load_split(helen, split)
        found |= {
            record.name: record.points[HELEN_LIPS].astype(np.float64) for record in records if record.name in wanted
        }
        rejected |= {reject.name: reject.reason for reject in rejects if reject.name in wanted}
    missing = sorted(wanted - found.keys())
    if missing:
        reasons = "; ".join(f"{name}: {rejected.get(name, 'in neither split list')}" for name in missing[:5])
        raise SystemExit(f"{len(missing)} photos without usable Helen ground truth in {helen} ({reasons})")
    return found


def run_ours(
    paths: list[Path], out_dir: Path, model: Path, mouth: str, detector: str, engine: str | None, options: list[str]
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "lipseg",
        "predict",
        *map(str, paths),
        "--out",
        str(out_dir),
        "--no-overlay",
        "--quiet",
        "--format",
        "png-grey",  # the overlay grid reads the masks with OpenCV, which expands a palette PNG to colours
        "--model",
        str(model),
        "--mouth",
        mouth,
        "--detector",
        detector,
        *options,
    ]
    if engine:  # only when asked, so the script also runs against a CLI without --engine
        command += ["--engine", engine]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)  # the installed package
    seconds = time.perf_counter() - started
    if completed.returncode not in (0, 1):  # 1 = some files failed, reported but the rest were written
        sys.stderr.write(completed.stdout + completed.stderr)
        raise SystemExit(f"lipseg predict failed with exit status {completed.returncode}")
    return {"seconds": seconds, "exit_status": completed.returncode, "stderr_tail": completed.stderr[-2000:]}


def run_dlib(
    paths: list[Path], names: list[str], out_dir: Path, gt: dict[str, np.ndarray], detector_kind: str = "hog"
) -> dict:
    """dlib's detector (`detector_kind`, upsample 1; the reference row is HOG) + 68 points -> iBUG mouth
    polygons -> label mask of the face whose mouth is nearest the annotated one. lipeval picks that face
    from our JSON files; a PNG has no faces, so the same choice is made here, or every other face's mouth
    would count as false positives."""
    out_dir.mkdir(parents=True, exist_ok=True)
    detector, shapes = FaceDetector(detector_kind, 1), ShapePredictor68()
    no_face, unreadable, faces_total = [], [], 0
    mouths: dict[str, list[list[list[float]]]] = {}
    started = time.perf_counter()
    for name, path in zip(names, paths):
        try:
            image = read_image(path)
        except ImageError:
            unreadable.append(name)
            continue  # no PNG: lipeval counts it as missing
        height, width = image.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        faces = detector(image)
        rgb = to_rgb(image)
        found = [mouth_points(shapes(image, face, rgb)) for face in faces]
        mouths[name] = [mouth.tolist() for mouth in found]
        if found:
            centre = gt[name].mean(axis=0)
            nearest = min(found, key=lambda mouth: float(np.linalg.norm(mouth.mean(axis=0) - centre)))
            mask = rasterise_polygons(ibug_mouth_polygons(nearest), height, width)
        faces_total += len(faces)
        if not faces:
            no_face.append(name)
        if not cv2.imwrite(str(out_dir / f"{name}.png"), mask):
            raise OSError(f"cannot write {out_dir / name}.png")
    return {
        "seconds": time.perf_counter() - started,
        "faces": faces_total,
        "no_face": no_face,
        "unreadable": unreadable,
        "mouths": mouths,
    }


def lipeval(script: Path, helen: Path, pred: Path, report: Path, names_file: Path | None) -> dict:
    command = [
        sys.executable,
        str(script),
        "--gt",
        str(helen),
        "--split",
        "test",
        "--pred",
        str(pred),
        "--json",
        str(report),
        "--quiet",
    ]
    if names_file is not None:
        command += ["--names", str(names_file)]
    subprocess.run(command, check=True)
    return json.loads(report.read_text())


def summarise(report: dict, no_face: int) -> dict:
    pooled = report["pooled"]
    nme = report.get("nme") or {}
    return {
        **{f"f1_{c}": pooled[c]["f1"] for c in CLASSES},
        "iou_mouth": pooled["mouth"]["iou"],
        "f1_mouth": pooled["mouth"]["f1"],
        "mean_image_f1_lips": report["mean_image_f1_lips"],
        "nme_io": nme.get("mean_io"),
        "nme_io_median": nme.get("median_io"),
        "failure_rate": nme.get("failure_rate"),
        "no_face": no_face,
        "images": report["n_images"],
        "counts": report["counts"],
    }


def our_no_face(out_dir: Path, names: list[str]) -> list[str]:
    missing = []
    for name in names:
        path = out_dir / f"{name}.json"
        try:
            if not json.loads(path.read_text())["faces"]:
                missing.append(name)
        except (OSError, ValueError, KeyError):
            missing.append(name)  # failed file: no usable face either
    return missing


def print_table(rows: list[tuple[str, dict]], images: int, split: str = "test split") -> None:
    print(f"\n{split}, {images} photos, end to end (no ground-truth crops), scored by lipeval (F1; mouth IoU)")
    header = (
        f"{'':22s} {'lips':>6s} {'upper':>6s} {'lower':>6s} {'inner':>6s} {'mouth':>6s} {'mouthIoU':>8s} "
        f"{'NME_io':>7s} {'no face':>8s}"
    )
    print(header)
    print("-" * len(header))
    for label, row in rows:

        def fmt(key, width=6):
            value = row.get(key)
            return f"{value:{width}.3f}" if isinstance(value, float) else f"{'-':>{width}s}"

        print(
            f"{label:22s} {fmt('f1_lips')} {fmt('f1_upper_lip')} {fmt('f1_lower_lip')} {fmt('f1_inner_mouth')} "
            f"{fmt('f1_mouth')} {fmt('iou_mouth', 8)} {fmt('nme_io', 7)} {row.get('no_face', '-'):>8}"
        )


def overlay_rows(
    helen: Path,
    names: list[str],
    gt: dict[str, np.ndarray],
    ours_dir: Path,
    dlib_dir: Path,
    f1: dict[str, dict[str, float]],
    count: int,
    tile: int,
) -> np.ndarray | None:
    """Rows of mouth close-ups, ground truth | ours | dlib, for `count` names spread over the list."""
    chosen = [names[int(i)] for i in np.linspace(0, len(names) - 1, min(count, len(names)))]
    tiles, captions = [], []
    for name in dict.fromkeys(chosen):
        if name not in gt:
            continue
        image = read_image(image_path(helen, name))
        height, width = image.shape[:2]
        truth = gt[name]
        ours_mask = cv2.imread(str(ours_dir / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        ours_lips = None
        try:
            faces = json.loads((ours_dir / f"{name}.json").read_text())["faces"]
            if faces:  # the face lipeval scores: lip centroid nearest the ground-truth mouth
                candidates = [np.asarray(face["lips"], np.float64) for face in faces]
                ours_lips = min(candidates, key=lambda lips: np.linalg.norm(lips.mean(0) - truth.mean(0)))
        except (OSError, ValueError, KeyError):
            pass
        dlib_mask = cv2.imread(str(dlib_dir / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        blank = np.zeros((height, width), np.uint8)
        window, (x0, y0) = crop_around(image, truth, margin=0.4)  # the same mouth window for all three
        h, w = window.shape[:2]
        scale = tile / max(h, w)  # zoom before drawing, so the points and contours stay thin
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        zoomed = cv2.resize(window, size, interpolation=cv2.INTER_LINEAR)

        def panel(mask: np.ndarray | None, lips: np.ndarray | None) -> np.ndarray:
            part = (mask if mask is not None and mask.shape == (height, width) else blank)[y0 : y0 + h, x0 : x0 + w]
            part = cv2.resize(part, size, interpolation=cv2.INTER_NEAREST)
            points = None if lips is None else (lips - (x0, y0) + 0.5) * (size[0] / w, size[1] / h) - 0.5
            return overlay(zoomed, part, points)

        tiles += [
            panel(label_mask_from_lips(truth, height, width), truth),
            panel(ours_mask, ours_lips),
            panel(dlib_mask, None),
        ]
        captions += [
            f"{name} truth",
            f"ours F1 {f1['ours'].get(name, 0.0):.2f}",
            f"dlib F1 {f1['dlib'].get(name, 0.0):.2f}",
        ]
    return overlay_grid(tiles, 3, tile, captions) if tiles else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--lipeval", type=Path, default=ROOT.parent / "shared" / "tools" / "lipeval.py")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tcnn", help="passed to lipseg predict --model")
    parser.add_argument(
        "--mouth", choices=("dlib68", "cascade"), default="dlib68", help="passed to lipseg predict --mouth"
    )
    parser.add_argument(
        "--detector",
        choices=DETECTORS,
        default="hog",
        help="passed to lipseg predict --detector; the dlib baseline uses the same detector",
    )
    parser.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        default=None,
        help="passed to lipseg predict --engine (default: the CLI's)",
    )
    parser.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="passed to lipseg predict (default: the CLI's)",
    )
    parser.add_argument(
        "--cascade-passes", type=int, default=None, help="passed to lipseg predict (with --mouth cascade)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "predict")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test names (quick runs)")
    parser.add_argument(
        "--names",
        type=Path,
        default=None,
        help="photos to use instead of the test split: a names file, or a crops file such as "
        "WORKDIR/data/crops/val.npz (the validation split, for choosing settings)",
    )
    parser.add_argument("--overlays", type=int, default=8, help="images in the overlay grid (default 8)")
    parser.add_argument("--tile", type=int, default=200, help="overlay tile size in pixels (default 200)")
    args = parser.parse_args()

    helen, out = args.helen.resolve(), args.out.resolve()
    names = read_names(helen, args.limit, args.names)
    paths = [image_path(helen, name) for name in names]
    ours_dir, dlib_dir = out / "ours", out / "dlib"
    out.mkdir(parents=True, exist_ok=True)
    names_file = None
    if args.limit or args.names:
        names_file = out / "names.txt"
        names_file.write_text("\n".join(names) + "\n")

    print(
        f"lipseg predict on {len(names)} test photos ({args.model}, mouth={args.mouth}, "
        f"engine={args.engine or 'default'}) ...",
        flush=True,
    )
    options = [] if args.flip_tta is None else ["--flip-tta" if args.flip_tta else "--no-flip-tta"]
    if args.cascade_passes:
        options += ["--cascade-passes", str(args.cascade_passes)]
    ours_run = run_ours(paths, ours_dir, args.model.resolve(), args.mouth, args.detector, args.engine, options)
    print(f"dlib {args.detector} + 68 points on {len(names)} test photos ...", flush=True)
    gt = helen_lips(helen, set(names))
    dlib_run = run_dlib(paths, names, dlib_dir, gt, args.detector)

    ours_report = lipeval(args.lipeval, helen, ours_dir, out / "lipeval_ours.json", names_file)
    dlib_report = lipeval(args.lipeval, helen, dlib_dir, out / "lipeval_dlib.json", names_file)
    ours_missing = our_no_face(ours_dir, names)
    ours = summarise(ours_report, len(ours_missing))
    dlib = summarise(dlib_report, len(dlib_run["no_face"]))
    dlib["nme_io"] = dlib["nme_io_median"] = dlib["failure_rate"] = None  # PNGs have no points
    reference = {f"f1_{c}": DLIB_REFERENCE[c] for c in CLASSES}
    reference |= {"f1_mouth": DLIB_REFERENCE["mouth"], "no_face": DLIB_REFERENCE["no_face"]}

    rows = [("ours (lipseg predict)", ours), ("dlib 68 (this run)", dlib)]
    default_sample = helen == (ROOT.parent / "shared" / "data" / "helen_sample").resolve()
    if not args.limit and not args.names and default_sample:  # the reference row is the Helen sample's test split
        rows.append(("dlib 68 (reference)", reference))
    print_table(rows, len(names), f"names from {args.names}" if args.names else "test split")
    if args.limit:
        print(
            f"(--limit {args.limit}: a subset; the dlib HOG + 68 points reference row on all 330 photos is "
            + ", ".join(f"{c} {DLIB_REFERENCE[c]:.3f}" for c in (*CLASSES, "mouth"))
            + f", {DLIB_REFERENCE['no_face']} without a face)"
        )
    print(
        f"ours: {ours['no_face']} photos without a face ({', '.join(ours_missing[:8]) or '-'}), "
        f"mean per-image F1 lips {ours['mean_image_f1_lips']:.3f}, FR@0.1 {ours['failure_rate']:.3f}; "
        f"lipseg predict took {ours_run['seconds']:.1f} s (incl. start-up)"
    )
    print(
        f"dlib: {dlib['no_face']} photos without a face ({', '.join(dlib_run['no_face'][:8]) or '-'}), "
        f"mean per-image F1 lips {dlib['mean_image_f1_lips']:.3f}; {dlib_run['seconds']:.1f} s"
    )

    per_image = {
        key: {rec["name"]: rec["f1"]["lips"] for rec in report["per_image"]}
        for key, report in (("ours", ours_report), ("dlib", dlib_report))
    }
    grid = overlay_rows(helen, names, gt, ours_dir, dlib_dir, per_image, args.overlays, args.tile)
    if grid is not None:
        cv2.imwrite(str(out / "predict_overlays.png"), grid)

    result = {
        "helen": str(helen),
        "model": str(args.model),
        "mouth": args.mouth,
        "detector": args.detector,
        "engine": args.engine,
        "predict_options": options,
        "limit": args.limit,
        "images": len(names),
        "ours": {**ours, "no_face_names": ours_missing, "run": ours_run},
        "dlib": {
            **dlib,
            "no_face_names": dlib_run["no_face"],
            "unreadable": dlib_run["unreadable"],
            "faces": dlib_run["faces"],
            "seconds": dlib_run["seconds"],
        },
        "dlib_reference": reference,
        "per_image_f1_lips": per_image,
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "outputs": {"ours": str(ours_dir), "dlib": str(dlib_dir), "overlays": str(out / "predict_overlays.png")},
    }
    (out / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'predict.json'}" + (f", {out / 'predict_overlays.png'}" if grid is not None else ""))


if __name__ == "__main__":
    main()
