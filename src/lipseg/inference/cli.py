"""`lipseg` command line: predict on photos, folders and videos; export to ONNX; time the steps."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lipseg import __version__
from lipseg.core.images import PREDICT_MAX_PIXELS
from lipseg.core.params import in_range, range_text
from lipseg.inference.coco import COCO_FILE, write_coco
from lipseg.inference.models import ModelNotFoundError, resolve_model, segmenter_folder, training_data_warning
from lipseg.inference.outputs import (
    MASK_FORMATS,
    OutputClashError,
    Summary,
    check_outputs_clear,
    collect_inputs,
    mask_source_name,
    predict_image_file,
    predict_video_file,
    printable,
)
from lipseg.inference.spark import add_spark_predict


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def load_models(args: argparse.Namespace, threads: int):
    """The LipPredictor and the segmenter runner (or None: landmark polygons) that `args` asks for."""
    from lipseg.inference.predictor import LipPredictor

    model = resolve_model(args.model)
    predictor = LipPredictor(
        model,
        args.detector,
        args.upsample,
        args.mouth,
        args.engine,
        max(threads, 1),
        flip_average=args.flip_tta,
        cascade_passes=args.cascade_passes,
        max_pixels=args.max_pixels,
    )
    segmenter = None
    if (folder := segmenter_folder(args.mask_source, args.segmenter, model)) is not None:
        from lipseg.segmentation.runner import SegmenterRunner

        segmenter = SegmenterRunner(
            folder, flip_average=args.segmenter_flip_tta, threads=threads or None, engine=args.engine
        )
    return model, predictor, segmenter


def job_count(requested: int, images: int) -> int:
    """--jobs 0: one process per CPU core the process may use, when there are enough photos to repay a
    worker's start-up (about 1 s: imports and models)."""
    if requested > 0:
        return min(requested, max(images, 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, images // PHOTOS_PER_WORKER))


PHOTOS_PER_WORKER = 16
_WORKER: dict = {}  # a pool worker's own models, loaded once by _start_worker


def _start_worker(args: argparse.Namespace) -> None:
    import signal

    # Ctrl-C reaches the whole process group: the parent stops the run and prints what was done; a worker
    # only finishes its current photos (their outputs are atomic) instead of printing a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.engine == "torch":  # one process per core: more threads would only contend
        from lipseg.core.runtime import set_threads

        set_threads(1)
    _WORKER["models"] = load_models(args, 1)[1:]
    _WORKER["args"] = args


def _predict_in_worker(items: list) -> Summary:
    predictor, segmenter = _WORKER["models"]
    args = _WORKER["args"]
    summary = Summary()
    for item in items:
        try:
            predict_image_file(
                item, predictor, Path(args.out), not args.no_overlay, summary, segmenter, args.max_pixels, args.format
            )
        except (OSError, ValueError) as error:
            summary.failed.append((str(item.path), str(error)))
    return summary


def run_predict(args: argparse.Namespace) -> int:
    from lipseg.core.model_meta import ModelFolderError
    from lipseg.core.onnx_runtime import OnnxError

    if args.engine == "torch":  # onnxruntime takes its threads per session; torch is not loaded at all
        from lipseg.core.runtime import set_threads

        set_threads(args.threads)
    out_dir = Path(args.out)
    coco = args.format == "coco"
    # A photo named like the COCO file gets another output stem, as two photos of one name do.
    inputs, problems = collect_inputs(args.paths, out_dir, [Path(COCO_FILE).with_suffix("")] if coco else [])
    if not inputs and not problems:
        raise CliError("no images or videos found in the given paths")
    try:
        check_outputs_clear(inputs, args.paths, out_dir, [COCO_FILE] if coco else [])
    except OutputClashError as error:
        raise CliError(str(error)) from error
    summary = Summary(failed=list(problems))
    for name, reason in problems:
        print(f"lipseg: error: {printable(name)}: {reason}", file=sys.stderr)
    images = [item for item in inputs if item.kind == "image"]
    videos = [item for item in inputs if item.kind == "video"]
    jobs = job_count(args.jobs, len(images))
    try:
        model, predictor, segmenter = load_models(args, args.threads)
    except (ModelNotFoundError, ModelFolderError, OnnxError) as error:
        raise CliError(str(error)) from error
    # Worker processes load exactly what was resolved here: no second look-up, no warning printed again.
    args.model = str(model)
    args.mask_source, args.segmenter = ("segmenter", str(segmenter.folder)) if segmenter else ("landmarks", None)
    for folder, meta in [(model, predictor.meta), *([(segmenter.folder, segmenter.meta)] if segmenter else [])]:
        if (warning := training_data_warning(folder, meta)) is not None:
            print(f"lipseg: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(
            f"lipseg: masks from {mask_source_name(segmenter)}"
            + (f" ({segmenter.folder})" if segmenter else "")
            + (f", {jobs} worker processes" if jobs > 1 else ""),
            file=sys.stderr,
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"--out {printable(out_dir)}: {error.strerror or error}") from error
    from tqdm import tqdm

    progress = tqdm(total=len(inputs), desc="lipseg predict", unit="file", disable=args.quiet or len(inputs) < 2)
    try:
        if jobs > 1:
            _predict_in_pool(images, jobs, args, summary, progress)
            images = []
        for item in [*images, *videos]:
            try:
                if item.kind == "video":
                    predict_video_file(item, predictor, out_dir, args, summary, segmenter)
                else:
                    predict_image_file(
                        item,
                        predictor,
                        out_dir,
                        not args.no_overlay,
                        summary,
                        segmenter,
                        args.max_pixels,
                        args.format,
                    )
            except (OSError, ValueError) as error:
                summary.failed.append((str(item.path), str(error)))
                print(f"lipseg: error: {printable(item.path)}: {printable(error)}", file=sys.stderr)
            progress.update()
    except KeyboardInterrupt:
        progress.close()
        if args.format == "coco":  # the photos done have their JSON and overlays: list them too
            write_coco(out_dir / COCO_FILE, summary.coco, __version__)
        summary.print(interrupted=True)
        return INTERRUPTED
    progress.close()
    if args.format == "coco":
        write_coco(out_dir / COCO_FILE, summary.coco, __version__)
    summary.print()
    return 1 if summary.failed else 0


INTERRUPTED = 130  # the shell's status for a command stopped by SIGINT


def _predict_in_pool(images: list, jobs: int, args: argparse.Namespace, summary: Summary, progress) -> None:
    """Photos in chunks of four over `jobs` worker processes; on Ctrl-C the chunks not started are
    cancelled and the ones running finish (each photo's outputs are atomic)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked copy of a process that has run torch can deadlock in its thread pool.
    chunks = [images[start : start + 4] for start in range(0, len(images), 4)]
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(args,))
    futures = [pool.submit(_predict_in_worker, chunk) for chunk in chunks]
    merged = set()

    def merge(future) -> None:
        part = future.result()
        merged.add(future)
        summary.merge(part)
        for name, reason in part.failed:
            print(f"lipseg: error: {printable(name)}: {printable(reason)}", file=sys.stderr)
        progress.update(part.images + len(part.failed))

    try:
        for done in as_completed(futures):
            merge(done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:  # after Ctrl-C: the chunks that finished while the pool wound down
            if future not in merged and future.done() and not future.cancelled() and future.exception() is None:
                merge(future)


def run_export(args: argparse.Namespace) -> int:
    from lipseg.core.model_meta import ModelFolderError
    from lipseg.tcnn.export import ExportError, export_onnx

    try:
        summary = export_onnx(resolve_model(args.model), Path(args.out), opset=args.opset)
    except (ExportError, ModelFolderError, ModelNotFoundError) as error:
        raise CliError(str(error)) from error
    for name, size in summary["bytes"].items():
        print(f"lipseg: wrote {Path(args.out) / name} ({size / 1024:.0f} KiB)")
    return 0


def bounded(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse type: `kind` (int or float, finite) with `low <= value <= high` (`low < value` with
    `low_open`); argparse names the option in its error and exits with status 2."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if not math.isfinite(value) or not in_range(value, low, high, low_open):
            raise argparse.ArgumentTypeError(f"must be {range_text(low, high, low_open) or 'finite'}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid <type> value" wording
    return parse


positive_int = bounded(int, low=1)
MAX_UPSAMPLE = 3  # each level doubles both sides: 3 is 64x the pixels, and smaller faces are beyond the TCNN


def output_folder(text: str) -> str:
    """--out: a folder, existing or to be made; checked before any model is loaded."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string")
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{printable(text)} exists and is not a folder")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipseg", description="Lip landmarks and lip masks with a Tweaked CNN.")
    parser.add_argument("--version", action="version", version=f"lipseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict",
        help="landmarks, label masks and overlays for photos, folders and videos",
        description="For each image: DIR/<stem>.json (faces with boxes, 56 lip points in image pixels in Helen "
        "order, GMM cluster/head, timings), DIR/<stem>.png (labels 0 background, 1 upper lip, "
        "2 inner mouth, 3 lower lip; see --format) and DIR/<stem>_overlay.jpg. For each video: an annotated "
        "DIR/<stem>_annotated.mp4 and DIR/<stem>.jsonl with one line per frame. Exit status 1 "
        "when any file failed (the others are still processed).",
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (searched recursively) or videos")
    predict.add_argument(
        "--out",
        required=True,
        type=output_folder,
        metavar="DIR",
        help="output folder (nothing is written outside it; it must not be an input folder, and a folder "
        "search skips it when it lies inside one)",
    )
    predict.add_argument(
        "--model",
        metavar="MODEL",
        help="model folder or MLflow URI such as models:/lipseg@champion or models:/lipseg-tcnn@champion "
        "(default: the release model that ships with lipseg, trained on Helen)",
    )
    predict.add_argument(
        "--detector",
        choices=("hog", "cnn", "hog+cnn"),
        default="hog",
        help="dlib face detector; hog+cnn runs the CNN only where HOG finds no face: no photo of the Helen "
        "sample left without a face and +0.01 lips F1 on its validation photos, at 0.6x the throughput (default: hog)",
    )
    predict.add_argument(
        "--upsample",
        type=bounded(int, 0, MAX_UPSAMPLE),
        default=1,
        metavar=f"{{0..{MAX_UPSAMPLE}}}",
        help="the most dlib's detector upsamples a photo to find smaller faces; a photo is upsampled only while "
        "no face is found at the smaller sizes, and never past --max-pixels (default: 1)",
    )
    predict.add_argument(
        "--mouth",
        choices=("dlib68", "cascade"),
        default="dlib68",
        help="mouth locator: dlib's 68-point predictor, or our TCNN cascade from the face box (default: dlib68)",
    )
    predict.add_argument(
        "--cascade-passes",
        type=bounded(int, 2, 10),
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
        help="run the TCNN and the segmenter in onnxruntime (the release model ships its export; others are "
        "exported once per model, cached under ~/.cache/lipseg): faster on a CPU, and no torch to load; "
        "or in torch (default: onnx)",
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
        help="average the segmenter's probabilities with those of the mirrored crop: +0.003 lips F1 on the "
        "validation photos (release model) for twice the mask step's time, over its 8 ms budget (default: off)",
    )
    predict.add_argument(
        "--format",
        choices=MASK_FORMATS,
        default="png",
        help="how photos' label masks are written: png = DIR/<stem>.png with a colour palette (values 0..3, "
        "a viewer shows the lip classes in colour); png-grey = the same values as a single-channel grey PNG, "
        "what OpenCV's IMREAD_UNCHANGED and ../shared/tools/lipeval.py read; coco = no PNGs, one "
        f"DIR/{COCO_FILE} (COCO instances: per face and lip class, polygons in `segmentation` and the exact "
        "mask as compressed RLE in `rle`; category ids = label values) (default: png)",
    )
    predict.add_argument("--no-overlay", action="store_true", help="skip the *_overlay.jpg files")
    predict.add_argument(
        "--threads", type=bounded(int, 0, 1024), default=0, help="CPU threads (default 0: the engine's choice)"
    )
    predict.add_argument(
        "--jobs",
        type=bounded(int, 0, 1024),
        default=0,
        metavar="N",
        help="photos are shared among N worker processes of one thread each (default 0: one per CPU core, "
        f"when there are at least {PHOTOS_PER_WORKER} photos per worker; 1: all in this process)",
    )
    predict.add_argument(
        "--max-pixels",
        type=positive_int,
        default=PREDICT_MAX_PIXELS,
        metavar="N",
        help="refuse an image or video whose header declares frames of more than N pixels (width x height), "
        "before decoding it, and never upsample a photo past N for detection: memory peaks near 16 bytes a "
        f"pixel, about 1 GB at the default (default: {PREDICT_MAX_PIXELS})",
    )
    video = predict.add_argument_group("video")
    video.add_argument(
        "--redetect-every",
        type=positive_int,
        default=10,
        metavar="N",
        help="run dlib every N frames; between, re-crop on the previous lips (default: 10)",
    )
    video.add_argument("--no-smooth", action="store_true", help="no temporal smoothing of the landmarks")
    video.add_argument(
        "--smooth-min-cutoff",
        type=bounded(float, 0, low_open=True),
        default=1.0,
        help="One Euro filter min cutoff, Hz (lower = smoother)",
    )
    video.add_argument(
        "--smooth-beta",
        type=bounded(float, 0),
        default=0.05,
        help="One Euro filter speed coefficient (higher = less lag)",
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
    export.add_argument("--out", required=True, type=output_folder, metavar="DIR", help="output folder")
    export.add_argument("--opset", type=bounded(int, 13, 21), default=17, help="ONNX opset, 13-21 (default: 17)")
    export.set_defaults(handler=run_export)
    add_spark_predict(commands)  # pyspark itself is imported only when that command runs
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
