"""`lipseg` command line: predict on photos, folders and videos; export to ONNX; time the steps."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lipseg.io import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_MODEL = Path("models/tcnn")
BEST_SEGMENTER = Path("models/segmenters/best.json")  # written by the evaluate_segmenters stage


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


class OutsideOutError(ValueError):
    """An output path that would leave --out (a `..` stem, or a symlink inside --out pointing away).
    A ValueError, so it fails that one input and the others are still processed."""


@dataclass
class InputFile:
    path: Path
    kind: str  # "image" or "video"
    out_stem: Path  # relative to --out, without suffix


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    no_face: int = 0
    videos: int = 0
    frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    landmark_ms: list[float] = field(default_factory=list)  # per face: mouth + crop + TCNN
    image_ms: list[float] = field(default_factory=list)

    def print(self, stream=None) -> None:
        stream = stream or sys.stderr
        mean_face = f"{np.mean(self.landmark_ms):.2f} ms" if self.landmark_ms else "n/a"
        mean_image = f"{np.mean(self.image_ms):.1f} ms" if self.image_ms else "n/a"
        print(f"lipseg: {self.images} images, {self.faces} faces, {self.no_face} images without a face, "
              f"{self.videos} videos ({self.frames} frames), {len(self.failed)} failed; "
              f"mean {mean_face} per face (mouth + crop + TCNN), {mean_image} per image end to end", file=stream)
        for name, reason in self.failed:
            print(f"lipseg: failed: {name}: {reason}", file=stream)


def project_folder() -> Path | None:
    """The lipseg project (the folder with dvc.yaml) the current directory is in, if any."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return None


def project_model_folder() -> Path | None:
    project = project_folder()
    return project / DEFAULT_MODEL if project else None


def resolve_model(spec: str | None, cache_dir: Path | None = None) -> Path:
    """--model: a model folder, an MLflow model URI (models:/name@alias, runs:/...), or the project's
    latest trained model (models/tcnn) when omitted."""
    if spec is None:
        folder = project_model_folder()
        if folder is None or not folder.is_dir():
            raise CliError("no trained model found (models/tcnn); run `dvc repro` in the project or pass --model")
        return folder
    if spec.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        from lipseg.tracking import download_model_folder

        try:
            return download_model_folder(spec, cache_dir)
        except RuntimeError as error:
            raise CliError(str(error)) from error
    folder = Path(spec)
    if not folder.is_dir():
        raise CliError(f"--model {spec}: no such folder (or use an MLflow URI such as models:/lipseg-tcnn@champion)")
    return folder


def collect_inputs(paths: Sequence[str]) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Images and videos from files and folders (recursive, by extension), with unique output stems."""
    found: list[InputFile] = []
    problems: list[tuple[str, str]] = []
    used: set[Path] = set()

    def add(path: Path, stem: Path, kind: str) -> None:
        candidate, number = stem, 1
        while candidate in used:
            candidate = stem.with_name(f"{stem.name}_{number}")
            number += 1
        used.add(candidate)
        found.append(InputFile(path, kind, candidate))

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                suffix = child.suffix.lower()
                if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
                    relative = child.relative_to(path).with_suffix("")
                    add(child, relative, "video" if suffix in VIDEO_SUFFIXES else "image")
        elif path.is_file():
            add(path, Path(path.stem), "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image")
        else:
            problems.append((raw, "no such file or folder"))
    return found, problems


def safe_output(out_dir: Path, stem: Path, suffix: str) -> Path:
    """Output path under out_dir; refuses anything that would land outside it."""
    target = (out_dir / stem).with_name(stem.name + suffix)
    resolved_out = out_dir.resolve()
    if not target.resolve().is_relative_to(resolved_out):
        raise OutsideOutError(f"refusing to write outside --out: {target} resolves to {target.resolve()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def resolve_segmenter(mask_source: str, spec: str | None, flip_average: bool, threads: int):
    """--mask-source/--segmenter -> a SegmenterRunner, or None for the landmark polygons.

    `auto` takes the segmenter that evaluate_segmenters found best (models/segmenters/best.json) when it
    beat the landmark polygons on the validation photos and its folder is here; otherwise the polygons."""
    if mask_source == "landmarks":
        return None
    from lipseg.segment import SegmenterFolderError, SegmenterRunner

    folder = Path(spec) if spec else None
    if folder is None:
        project = project_folder()
        best_file = project / BEST_SEGMENTER if project else None
        if best_file is not None and best_file.is_file():
            best = json.loads(best_file.read_text(encoding="utf-8"))
            if best.get("beats_landmarks") or mask_source == "segmenter":
                folder = project / best["folder"]
    if spec and not folder.is_dir():
        raise CliError(f"--segmenter {spec}: no such folder")
    if folder is None or not folder.is_dir():
        if mask_source == "auto":
            return None
        raise CliError("--mask-source segmenter: no segmenter found (run `dvc repro evaluate_segmenters` or pass --segmenter DIR)")
    try:
        return SegmenterRunner(folder, flip_average=flip_average, threads=threads or None)
    except SegmenterFolderError as error:
        raise CliError(str(error)) from error


def face_mask(result, image: np.ndarray, segmenter=None) -> np.ndarray:
    """The label mask of all faces of one predicted image or frame: the landmark polygons, or the
    segmenter's labels on each face's TCNN-located crop."""
    if segmenter is not None:
        return segmenter.label_mask(image, [face.lips for face in result.faces])
    from lipseg.masks import label_mask_from_faces

    return label_mask_from_faces([face.lips for face in result.faces], result.height, result.width)


def mask_source_name(segmenter) -> str:
    return "landmarks" if segmenter is None else f"segmenter:{segmenter.meta['config']['arch']}"


def annotate(image: np.ndarray, result, mask: np.ndarray) -> np.ndarray:
    """What a person looks at: the mask blended in, every face's contours and points drawn."""
    from lipseg.masks import overlay

    return overlay(image, mask, [face.lips for face in result.faces])


def predict_image_file(item: InputFile, predictor, out_dir: Path, overlay: bool, summary: Summary, segmenter=None,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    from lipseg.io import read_image, write_png_atomic, write_text_atomic

    started = time.perf_counter()
    image = read_image(item.path, max_pixels)  # ImageError (a ValueError) names what is wrong with the file
    result = predictor.predict(image)
    mask_started = time.perf_counter()
    mask = face_mask(result, image, segmenter)
    result.timings_ms["mask"] = (time.perf_counter() - mask_started) * 1000
    payload = {"image": str(item.path), **result.to_json(), "model": predictor.meta.get("kind"), "mask_source": mask_source_name(segmenter)}
    write_text_atomic(safe_output(out_dir, item.out_stem, ".json"), json.dumps(payload) + "\n")
    write_png_atomic(safe_output(out_dir, item.out_stem, ".png"), mask)
    if overlay:
        import cv2

        ok, encoded = cv2.imencode(".jpg", annotate(image, result, mask), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            from lipseg.io import write_bytes_atomic

            write_bytes_atomic(safe_output(out_dir, item.out_stem, "_overlay.jpg"), encoded.tobytes())
    summary.images += 1
    summary.faces += len(result.faces)
    summary.no_face += not result.faces
    if result.faces:
        landmark = sum(result.timings_ms.get(key, 0.0) for key in ("mouth", "crop", "tcnn"))
        summary.landmark_ms.extend([landmark / len(result.faces)] * len(result.faces))
    summary.image_ms.append((time.perf_counter() - started) * 1000)


def predict_video_file(item: InputFile, predictor, out_dir: Path, args: argparse.Namespace, summary: Summary, segmenter=None) -> None:
    import cv2

    from lipseg.video import VideoTracker, read_frames, video_info

    fps, count, width, height = video_info(item.path)
    tracker = VideoTracker(predictor, redetect_every=args.redetect_every, smooth=not args.no_smooth,
                           min_cutoff=args.smooth_min_cutoff, beta=args.smooth_beta)
    video_path = safe_output(out_dir, item.out_stem, "_annotated.mp4")
    lines_path = safe_output(out_dir, item.out_stem, ".jsonl")
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    from tqdm import tqdm

    started, frames, detections = time.perf_counter(), 0, 0
    with lines_path.open("w", encoding="utf-8") as lines:
        for index, frame in tqdm(read_frames(item.path), total=count or None, desc=item.path.name, unit="frame",
                                 disable=args.quiet, leave=False):
            result, track_ids, detected = tracker.step(frame, index, 1.0 / fps)
            detections += detected
            writer.write(annotate(frame, result, face_mask(result, frame, segmenter)))
            record = {"frame": index, "time_s": round(index / fps, 4), "detected": bool(detected), **result.to_json()}
            for face_json, ident in zip(record["faces"], track_ids):
                face_json["track"] = ident
            lines.write(json.dumps(record) + "\n")
            frames += 1
            summary.faces += len(result.faces)
    writer.release()
    if frames == 0:
        raise OSError("no frames could be decoded")
    seconds = time.perf_counter() - started
    summary.videos += 1
    summary.frames += frames
    print(f"lipseg: {item.path}: {frames} frames at {frames / seconds:.1f} fps, dlib ran on {detections} "
          f"(re-detection every {args.redetect_every} frames) -> {video_path.name}, {lines_path.name}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    from lipseg.model_folder import ModelFolderError
    from lipseg.predictor import LipPredictor

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    inputs, problems = collect_inputs(args.paths)
    summary = Summary(failed=list(problems))
    if not inputs and not problems:
        raise CliError("no images or videos found in the given paths")
    try:
        predictor = LipPredictor(resolve_model(args.model), args.detector, args.upsample, args.mouth, args.engine,
                                 max(args.threads, 1), flip_average=args.flip_tta,
                                 cascade_passes=args.cascade_passes)
    except ModelFolderError as error:
        raise CliError(str(error)) from error
    segmenter = resolve_segmenter(args.mask_source, args.segmenter, args.segmenter_flip_tta, args.threads)
    if not args.quiet:
        print(f"lipseg: masks from {mask_source_name(segmenter)}" + (f" ({segmenter.folder})" if segmenter else ""), file=sys.stderr)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    for item in tqdm(inputs, desc="lipseg predict", unit="file", disable=args.quiet or len(inputs) < 2):
        try:
            if item.kind == "video":
                predict_video_file(item, predictor, out_dir, args, summary, segmenter)
            else:
                predict_image_file(item, predictor, out_dir, not args.no_overlay, summary, segmenter, args.max_pixels)
        except (OSError, ValueError) as error:
            summary.failed.append((str(item.path), str(error)))
            print(f"lipseg: error: {item.path}: {error}", file=sys.stderr)
    summary.print()
    return 1 if summary.failed else 0


def run_export(args: argparse.Namespace) -> int:
    from lipseg.export import ExportError, export_onnx
    from lipseg.model_folder import ModelFolderError

    try:
        summary = export_onnx(resolve_model(args.model), Path(args.out), opset=args.opset)
    except (ExportError, ModelFolderError) as error:
        raise CliError(str(error)) from error
    for name, size in summary["bytes"].items():
        print(f"lipseg: wrote {Path(args.out) / name} ({size / 1024:.0f} KiB)")
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipseg", description="Lip landmarks and lip masks with a Tweaked CNN.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", help="landmarks, label masks and overlays for photos, folders and videos",
        description="For each image: DIR/<stem>.json (faces with boxes, 56 lip points in image pixels in Helen "
                    "order, GMM cluster/head, timings), DIR/<stem>.png (labels 0 background, 1 upper lip, "
                    "2 inner mouth, 3 lower lip) and DIR/<stem>_overlay.jpg. For each video: an annotated "
                    "DIR/<stem>_annotated.mp4 and DIR/<stem>.jsonl with one line per frame. Exit status 1 "
                    "when any file failed (the others are still processed).")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (searched recursively) or videos")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder (nothing is written outside it)")
    predict.add_argument("--model", metavar="MODEL", help="model folder or MLflow URI such as models:/lipseg-tcnn@champion "
                         "(default: the project's latest trained model, models/tcnn)")
    predict.add_argument("--detector", choices=("hog", "cnn", "hog+cnn"), default="hog",
                         help="dlib face detector; hog+cnn runs the CNN only where HOG finds no face (default: hog)")
    predict.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling, finds smaller faces (default: 1)")
    predict.add_argument("--mouth", choices=("dlib68", "cascade"), default="dlib68",
                         help="mouth locator: dlib's 68-point predictor, or our TCNN cascade from the face box (default: dlib68)")
    predict.add_argument("--cascade-passes", type=int, default=3, metavar="N",
                         help="with --mouth cascade: TCNN passes per face, each re-cropping on the previous lips; "
                              "the last one gives the output (default: 3; 2, 3 and 4 passes gave lips F1 0.72, 0.74 and 0.75 on the validation split)")
    predict.add_argument("--engine", choices=("torch", "onnx"), default="onnx",
                         help="run the TCNN in onnxruntime (exported once per model, cached under ~/.cache/lipseg; "
                              "several times faster on a CPU) or torch (default: onnx)")
    predict.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                         help="average each face's final landmarks with those of its mirror image: more accurate on the "
                              "validation split, twice the final TCNN pass (default: on)")
    predict.add_argument("--mask-source", choices=("auto", "landmarks", "segmenter"), default="auto",
                         help="label masks from the TCNN landmark polygons, or from a pixel-wise segmenter on each face's "
                              "TCNN-located crop; auto = the segmenter when evaluate_segmenters measured it more accurate "
                              "and it is here, else the polygons. The JSON always carries the TCNN landmarks (default: auto)")
    predict.add_argument("--segmenter", metavar="DIR", help="segmenter model folder (default: the best one of models/segmenters)")
    predict.add_argument("--segmenter-flip-tta", action=argparse.BooleanOptionalAction, default=False,
                         help="average the segmenter's probabilities with those of the mirrored crop: +0.001 lips F1 on the "
                              "validation photos for twice the segmenter time (default: off)")
    predict.add_argument("--no-overlay", action="store_true", help="skip the *_overlay.jpg files")
    predict.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    predict.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                         help="refuse an image whose header declares more than N pixels (width x height), before "
                              f"decoding it: a guard against decompression bombs (default: {DEFAULT_MAX_PIXELS})")
    video = predict.add_argument_group("video")
    video.add_argument("--redetect-every", type=int, default=10, metavar="N",
                       help="run dlib every N frames; between, re-crop on the previous lips (default: 10)")
    video.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of the landmarks")
    video.add_argument("--smooth-min-cutoff", type=float, default=1.0, help="One Euro filter min cutoff, Hz (lower = smoother)")
    video.add_argument("--smooth-beta", type=float, default=0.05, help="One Euro filter speed coefficient (higher = less lag)")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=run_predict)

    export = commands.add_parser(
        "export", help="export the model to ONNX (base and tweaked graphs, checked against torch)",
        description="Writes DIR/base.onnx, DIR/tweaked.onnx (lips and the chosen cluster) and DIR/lipseg_onnx.json "
                    "(inputs, outputs, crop geometry). Each graph is run in onnxruntime and compared with torch.")
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    export.add_argument("--model", metavar="MODEL", help="model folder or MLflow URI (default: the project's models/tcnn)")
    export.add_argument("--out", required=True, metavar="DIR", help="output folder")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.set_defaults(handler=run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"lipseg: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
