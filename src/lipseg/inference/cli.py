"""`lipseg` command line: predict on photos, folders and videos; export to ONNX; time the steps."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lipseg.core.images import DEFAULT_MAX_PIXELS
from lipseg.inference.models import ModelNotFoundError, resolve_model, segmenter_folder, training_data_warning
from lipseg.inference.outputs import (
    Summary,
    collect_inputs,
    mask_source_name,
    predict_image_file,
    predict_video_file,
)


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def run_predict(args: argparse.Namespace) -> int:
    from lipseg.core.model_folder import ModelFolderError
    from lipseg.core.runtime import set_threads
    from lipseg.inference.predictor import LipPredictor

    set_threads(args.threads)
    inputs, problems = collect_inputs(args.paths)
    summary = Summary(failed=list(problems))
    if not inputs and not problems:
        raise CliError("no images or videos found in the given paths")
    try:
        model = resolve_model(args.model)
        predictor = LipPredictor(
            model,
            args.detector,
            args.upsample,
            args.mouth,
            args.engine,
            max(args.threads, 1),
            flip_average=args.flip_tta,
            cascade_passes=args.cascade_passes,
        )
        segmenter = None
        if (folder := segmenter_folder(args.mask_source, args.segmenter, model)) is not None:
            from lipseg.segmentation.runner import SegmenterRunner

            segmenter = SegmenterRunner(folder, flip_average=args.segmenter_flip_tta, threads=args.threads or None)
    except (ModelNotFoundError, ModelFolderError) as error:
        raise CliError(str(error)) from error
    for folder, meta in [(model, predictor.meta), *([(segmenter.folder, segmenter.meta)] if segmenter else [])]:
        if (warning := training_data_warning(folder, meta)) is not None:
            print(f"lipseg: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(
            f"lipseg: masks from {mask_source_name(segmenter)}" + (f" ({segmenter.folder})" if segmenter else ""),
            file=sys.stderr,
        )
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
    from lipseg.core.model_folder import ModelFolderError
    from lipseg.tcnn.export import ExportError, export_onnx

    try:
        summary = export_onnx(resolve_model(args.model), Path(args.out), opset=args.opset)
    except (ExportError, ModelFolderError, ModelNotFoundError) as error:
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
        "predict",
        help="landmarks, label masks and overlays for photos, folders and videos",
        description="For each image: DIR/<stem>.json (faces with boxes, 56 lip points in image pixels in Helen "
        "order, GMM cluster/head, timings), DIR/<stem>.png (labels 0 background, 1 upper lip, "
        "2 inner mouth, 3 lower lip) and DIR/<stem>_overlay.jpg. For each video: an annotated "
        "DIR/<stem>_annotated.mp4 and DIR/<stem>.jsonl with one line per frame. Exit status 1 "
        "when any file failed (the others are still processed).",
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (searched recursively) or videos")
    predict.add_argument("--out", required=True, metavar="DIR", help="output folder (nothing is written outside it)")
    predict.add_argument(
        "--model",
        metavar="MODEL",
        help="model folder or MLflow URI such as models:/lipseg-tcnn@champion "
        "(default: the release model that ships with lipseg, trained on Helen)",
    )
    predict.add_argument(
        "--detector",
        choices=("hog", "cnn", "hog+cnn"),
        default="hog",
        help="dlib face detector; hog+cnn runs the CNN only where HOG finds no face (default: hog)",
    )
    predict.add_argument(
        "--upsample",
        type=int,
        default=1,
        help="the most dlib's detector upsamples a photo to find smaller faces; a photo is upsampled only while "
        "no face is found at the smaller sizes (default: 1)",
    )
    predict.add_argument(
        "--mouth",
        choices=("dlib68", "cascade"),
        default="dlib68",
        help="mouth locator: dlib's 68-point predictor, or our TCNN cascade from the face box (default: dlib68)",
    )
    predict.add_argument(
        "--cascade-passes",
        type=int,
        default=3,
        metavar="N",
        help="with --mouth cascade: TCNN passes per face, each re-cropping on the previous lips; "
        "the last one gives the output (default: 3; 2, 3 and 4 passes gave lips F1 0.72, 0.74 and 0.75 "
        "on the validation split)",
    )
    predict.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        default="onnx",
        help="run the TCNN in onnxruntime (exported once per model, cached under ~/.cache/lipseg; "
        "several times faster on a CPU) or torch (default: onnx)",
    )
    predict.add_argument(
        "--flip-tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average each face's final landmarks with those of its mirror image: more accurate on the "
        "validation split, twice the final TCNN pass (default: on)",
    )
    predict.add_argument(
        "--mask-source",
        choices=("auto", "landmarks", "segmenter"),
        default="auto",
        help="label masks from the TCNN landmark polygons, or from a pixel-wise segmenter on each face's "
        "TCNN-located crop; auto = the segmenter when evaluate_segmenters measured it more accurate "
        "and it is here, else the polygons. The JSON always carries the TCNN landmarks (default: auto)",
    )
    predict.add_argument(
        "--segmenter", metavar="DIR", help="segmenter model folder (default: the best one of models/segmenters)"
    )
    predict.add_argument(
        "--segmenter-flip-tta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="average the segmenter's probabilities with those of the mirrored crop: +0.001 lips F1 on the "
        "validation photos for twice the segmenter time (default: off)",
    )
    predict.add_argument("--no-overlay", action="store_true", help="skip the *_overlay.jpg files")
    predict.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    predict.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="refuse an image whose header declares more than N pixels (width x height), before "
        f"decoding it: a guard against decompression bombs (default: {DEFAULT_MAX_PIXELS})",
    )
    video = predict.add_argument_group("video")
    video.add_argument(
        "--redetect-every",
        type=int,
        default=10,
        metavar="N",
        help="run dlib every N frames; between, re-crop on the previous lips (default: 10)",
    )
    video.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of the landmarks")
    video.add_argument(
        "--smooth-min-cutoff", type=float, default=1.0, help="One Euro filter min cutoff, Hz (lower = smoother)"
    )
    video.add_argument(
        "--smooth-beta", type=float, default=0.05, help="One Euro filter speed coefficient (higher = less lag)"
    )
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    predict.set_defaults(handler=run_predict)

    export = commands.add_parser(
        "export",
        help="export the model to ONNX (base and tweaked graphs, checked against torch)",
        description="Writes DIR/base.onnx, DIR/tweaked.onnx (lips and the chosen cluster) and DIR/lipseg_onnx.json "
        "(inputs, outputs, crop geometry). Each graph is run in onnxruntime and compared with torch.",
    )
    export.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    export.add_argument("--model", metavar="MODEL", help="model folder or MLflow URI (default: the release model)")
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
