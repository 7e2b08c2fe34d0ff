"""Benchmark: milliseconds per step on one CPU thread, side by side in one run, and the two speed targets.

    python bench/speed.py [--helen ../shared/data/helen_sample] [--model models/tcnn] [--base-model models/base]
                          [--images 100] [--repeats 5] [--tcnn-repeats 200] [--frames 100] [--cnn]
                          [--device cpu|cuda] [--out bench/results/speed.json]

Photos: the first --images Helen test photos, letterboxed to 640x480. Every step runs on the same photos
and faces (dlib's HOG boxes): detection per image; 68 points, crop, TCNN, cascade mouth and mask per face.
Per item the median over --repeats runs (after a warm-up), then the median over items.

Target 1: landmark step (crop + tweaked TCNN incl. GMM gating, batch 1) / dlib 68 points, per face, <= 0.5.
Target 2: end-to-end images/s (LipPredictor.predict + mask) / images/s of dlib detection + 68 points, >= 0.9.
Video: frames/s of VideoTracker(redetect_every=10) on a window panned across a padded photo, versus full
detection on every frame.
"""

from __future__ import annotations

import os

# One CPU thread for everything, set before numpy/torch/onnxruntime/OpenCV load their thread pools.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["NUMEXPR_NUM_THREADS"] = "1"

import argparse
import contextlib
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from lipseg.core.images import read_image
from lipseg.data.geometry import image_to_crop_transform, warp_crop
from lipseg.data.helen import find_image
from lipseg.evaluation.masks import label_mask_from_faces
from lipseg.inference.detect import FaceDetector, cached_detector, cached_shape_predictor, mouth_points, to_rgb
from lipseg.inference.predictor import LipPredictor
from lipseg.inference.video import VideoTracker
from lipseg.tcnn.export import BASE_FILE, TWEAKED_FILE, export_onnx, time_onnx
from lipseg.tcnn.model import load_tcnn
from lipseg.tcnn.predict import predict_crops

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 640, 480


# ----------------------------------------------------------------------------------------------------
# Helpers
def set_single_thread() -> None:
    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set (only allowed once, before any parallel work)
        torch.set_num_interop_threads(1)
    cv2.setNumThreads(1)


def timed_ms(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `function` in ms over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        function()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000.0


def stats(values: list[float], unit: str, note: str = "") -> dict:
    """Median over items (each already a median over repeats), plus mean and spread, in ms."""
    if not values:
        return {"ms": None, "unit": unit, "n": 0, "note": note or "nothing to time"}
    array = np.asarray(values, np.float64)
    entry = {
        "ms": float(np.median(array)),
        "mean_ms": float(array.mean()),
        "p10_ms": float(np.percentile(array, 10)),
        "p90_ms": float(np.percentile(array, 90)),
        "unit": unit,
        "n": len(values),
    }
    if note:
        entry["note"] = note
    return entry


def single(value_ms: float | None, unit: str, note: str = "", **extra) -> dict:
    entry = {"ms": value_ms, "unit": unit, "n": 1, **extra}
    if note:
        entry["note"] = note
    return entry


def letterbox_placement(h: int, w: int, width: int = WIDTH, height: int = HEIGHT) -> tuple[float, int, int, int, int]:
    """(scale, new width, new height, x0, y0) of an h x w photo fitted into width x height, centred."""
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    return scale, new_w, new_h, (width - new_w) // 2, (height - new_h) // 2


def letterbox(image: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """Resize to fit width x height keeping the aspect ratio, centred on black."""
    scale, new_w, new_h, x0, y0 = letterbox_placement(*image.shape[:2], width, height)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return canvas


def load_photos(helen: Path, count: int) -> list[tuple[str, np.ndarray]]:
    names = [line.strip() for line in (helen / "testnames.txt").read_text().splitlines() if line.strip()]
    photos = []
    for name in names[:count]:
        path = find_image(helen, name)
        if path is not None:  # the Helen sample's photos all decode: a bad one is an error worth seeing
            photos.append((name, letterbox(read_image(path))))
    return photos


def pan_frames(
    photo: np.ndarray, centre: np.ndarray, count: int, amplitude: tuple[float, float] = (140.0, 60.0)
) -> list[np.ndarray]:
    """`count` 640x480 frames from a window panned (Lissajous path) around `centre` of a padded photo."""
    pad = 400
    padded = cv2.copyMakeBorder(photo, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    cx, cy = centre + pad
    frames = []
    for index in range(count):
        phase = 2 * math.pi * index / max(count, 1)
        x = int(round(cx + amplitude[0] * math.sin(phase) - WIDTH / 2))
        y = int(round(cy + amplitude[1] * math.sin(2 * phase) - HEIGHT / 2))
        x = min(max(x, 0), padded.shape[1] - WIDTH)
        y = min(max(y, 0), padded.shape[0] - HEIGHT)
        frames.append(np.ascontiguousarray(padded[y : y + HEIGHT, x : x + WIDTH]))
    return frames


def time_torch_batch(model, crops: np.ndarray, repeats: int, device: str = "cpu") -> float:
    """ms per crop for predict_crops on the whole batch `crops` (uint8 (B, S, S, 3)), incl. uint8 -> tensor."""

    def run():
        predict_crops(model, crops, batch_size=len(crops))  # .cpu() at the end synchronises CUDA

    return timed_ms(run, repeats, warmup=3) / len(crops)


def tile_batch(crops: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(crops, (size, *crops.shape[1:])))


def fmt(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and value is not None else "-"


# ----------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--helen", type=Path, default=ROOT.parent / "shared" / "data" / "helen_sample")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "tcnn", help="tweaked model folder")
    parser.add_argument(
        "--base-model", type=Path, default=None, help="vanilla model folder (default: sibling 'base' of --model)"
    )
    parser.add_argument("--images", type=int, default=100, help="test photos, letterboxed to 640x480 (default 100)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per image/face step and per full pass (default 5)"
    )
    parser.add_argument("--tcnn-repeats", type=int, default=200, help="timed runs per TCNN batch (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="the large TCNN batch (default 64)")
    parser.add_argument("--frames", type=int, default=100, help="video frames (default 100)")
    parser.add_argument("--video-repeats", type=int, default=3, help="timed passes over the video frames (default 3)")
    parser.add_argument("--cnn", action="store_true", help="also time dlib's CNN (mmod) face detector (slow)")
    parser.add_argument("--cnn-images", type=int, default=10, help="photos for the CNN detector timing (default 10)")
    parser.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        default="onnx",
        help="TCNN runtime inside LipPredictor for the end-to-end and video rows (default: onnx, as lipseg predict)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda: also time the TCNN on the GPU (default: cuda when available)",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime timings")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "speed.json")
    args = parser.parse_args()
    base_folder = args.base_model or args.model.parent / "base"
    set_single_thread()

    photos = load_photos(args.helen, args.images)
    print(
        f"{len(photos)} photos letterboxed to {WIDTH}x{HEIGHT}; torch threads {torch.get_num_threads()}, "
        f"repeats {args.repeats}, TCNN repeats {args.tcnn_repeats}",
        flush=True,
    )
    steps: dict[str, dict] = {}
    notes: list[str] = []

    # --- dlib: detection per image, 68 points per face ---------------------------------------------
    detector, shapes = cached_detector("hog", 1), cached_shape_predictor()
    detect_ms, shape_ms, faces_per_photo = [], [], []
    for _, image in photos:
        detect_ms.append(timed_ms(lambda: detector(image), args.repeats))
        faces = detector(image)
        rgb = to_rgb(image)
        faces_per_photo.append(faces)
        for face in faces:
            shape_ms.append(timed_ms(lambda: shapes(image, face, rgb), args.repeats))
    face_count = sum(map(len, faces_per_photo))
    steps["dlib_detect_hog"] = stats(detect_ms, "ms/image", "HOG, upsample 1, 640x480, incl. BGR->RGB")
    steps["dlib_shape68"] = stats(shape_ms, "ms/face", "68-point shape predictor, RGB given")
    print(
        f"dlib: {face_count} faces in {len(photos)} photos ({sum(not f for f in faces_per_photo)} without a face)",
        flush=True,
    )
    if args.cnn:
        cnn = FaceDetector("cnn", 1)
        cnn_ms = [timed_ms(lambda: cnn(image), max(1, args.repeats // 2)) for _, image in photos[: args.cnn_images]]
        steps["dlib_detect_cnn"] = stats(cnn_ms, "ms/image", f"mmod CNN, upsample 1, first {args.cnn_images} photos")

    # --- crops on dlib's mouths, the way LipPredictor makes them -------------------------------------
    model, geometry, meta = load_tcnn(args.model)
    crop_ms, crops, face_refs = [], [], []
    for (_, image), faces in zip(photos, faces_per_photo):
        rgb = to_rgb(image)
        for face in faces:
            centre, side = geometry.box(mouth_points(shapes(image, face, rgb)))

            def make_crop():
                return warp_crop(image, image_to_crop_transform(centre, side), geometry.size)

            crop_ms.append(timed_ms(make_crop, args.repeats))
            crops.append(make_crop())
            face_refs.append((image, face))
    steps["crop"] = stats(crop_ms, "ms/face", f"warp_crop to {geometry.size}x{geometry.size}")
    if not crops:
        raise SystemExit("no face found in any photo: nothing to time (use more --images)")
    crops_array = np.stack(crops)

    # --- TCNN, torch CPU: per crop at batch 1 and batch B --------------------------------------------
    base_model = None
    if base_folder.is_dir():
        base_model, _, base_meta = load_tcnn(base_folder)
        if base_meta["kind"] != "vanilla":
            notes.append(f"--base-model {base_folder} is {base_meta['kind']}, not vanilla")
    else:
        notes.append(f"no base model folder at {base_folder}: base TCNN rows skipped")
    sample = crops_array[: min(len(crops_array), 16)]
    big = tile_batch(crops_array, args.batch)
    for label, net in (("base", base_model), ("tweaked", model)):
        if net is None:
            continue
        net = net.cpu().eval()
        one = [time_torch_batch(net, crop[None], args.tcnn_repeats) for crop in sample]
        gating = " and GMM gating" if label == "tweaked" else ""
        steps[f"tcnn_{label}_torch_b1"] = stats(
            one, "ms/crop", f"torch CPU, batch 1, {len(sample)} crops, incl. uint8->tensor{gating}"
        )
        steps[f"tcnn_{label}_torch_b{args.batch}"] = single(
            time_torch_batch(net, big, max(3, args.tcnn_repeats // 10)), "ms/crop", f"torch CPU, batch {args.batch}"
        )
    print("torch TCNN timed", flush=True)

    # --- TCNN, onnxruntime CPU -------------------------------------------------------------------------
    if not args.no_onnx:
        try:
            with tempfile.TemporaryDirectory(prefix="lipseg-speed-") as scratch:
                graphs = []
                if base_model is not None:
                    export_onnx(base_folder, Path(scratch) / "base")
                    graphs.append(("base", Path(scratch) / "base" / BASE_FILE))
                export_onnx(args.model, Path(scratch) / "tweaked")
                tweaked_file = TWEAKED_FILE if meta["kind"] == "tweaked" else BASE_FILE
                graphs.append(("tweaked", Path(scratch) / "tweaked" / tweaked_file))
                floats = sample.transpose(0, 3, 1, 2).astype(np.float32)
                floats_big = big.transpose(0, 3, 1, 2).astype(np.float32)
                for label, path in graphs:
                    one = [time_onnx(path, crop[None], args.tcnn_repeats, threads=1) for crop in floats]
                    steps[f"tcnn_{label}_onnx_b1"] = stats(
                        one, "ms/crop", "onnxruntime CPU 1 thread, batch 1 (float input; uint8->float not timed)"
                    )
                    big_ms = time_onnx(path, floats_big, max(3, args.tcnn_repeats // 10), threads=1)
                    steps[f"tcnn_{label}_onnx_b{args.batch}"] = single(
                        big_ms, "ms/crop", f"onnxruntime CPU 1 thread, batch {args.batch}"
                    )
            print("onnxruntime TCNN timed", flush=True)
        except Exception as error:
            notes.append(f"onnxruntime timings skipped: {type(error).__name__}: {error}")

    # --- TCNN on the GPU -------------------------------------------------------------------------------
    if args.device == "cuda":
        if torch.cuda.is_available():
            for label, net in (("base", base_model), ("tweaked", model)):
                if net is None:
                    continue
                gpu = net.to("cuda").eval()
                steps[f"tcnn_{label}_cuda_b1"] = single(
                    time_torch_batch(gpu, sample[:1], args.tcnn_repeats),
                    "ms/crop",
                    f"torch {torch.cuda.get_device_name()}, batch 1, incl. host<->device copies",
                )
                steps[f"tcnn_{label}_cuda_b{args.batch}"] = single(
                    time_torch_batch(gpu, big, max(3, args.tcnn_repeats // 10)),
                    "ms/crop",
                    f"torch CUDA, batch {args.batch}",
                )
                net.cpu()
        else:
            notes.append("--device cuda asked but CUDA is not available: GPU rows skipped")

    # --- our predictor: cascade mouth, mask, full pipeline ---------------------------------------------
    predictor = LipPredictor(args.model, "hog", 1, "dlib68", engine=args.engine)
    cascade = None
    if meta.get("face_to_mouth"):
        cascade = LipPredictor(args.model, "hog", 1, "cascade", engine=args.engine)
    else:
        notes.append(f"{args.model} has no face_to_mouth in its meta: cascade mouth localisation not timed")
    mouth_dlib_ms, mouth_cascade_ms, mask_ms, predictions = [], [], [], []
    for (_, image), faces in zip(photos, faces_per_photo):
        if not faces:
            continue
        runs = []
        for _ in range(args.repeats + 1):
            runs.append(predictor.predict(image, faces=faces))
        mouth_dlib_ms.append(statistics.median(r.timings_ms["mouth"] for r in runs[1:]) / len(faces))
        result = runs[-1]
        predictions.append(result)
        if cascade is not None:
            runs = [cascade.predict(image, faces=faces) for _ in range(args.repeats + 1)]
            mouth_cascade_ms.append(statistics.median(r.timings_ms["mouth"] for r in runs[1:]) / len(faces))
        for face in result.faces:
            mask_ms.append(
                timed_ms(lambda: label_mask_from_faces([face.lips], result.height, result.width), args.repeats)
            )
    steps["mouth_dlib68"] = stats(
        mouth_dlib_ms, "ms/face", "LipPredictor timings_ms['mouth'] (dlib 68 points, incl. BGR->RGB per image)"
    )
    steps["mouth_cascade"] = stats(
        mouth_cascade_ms,
        "ms/face",
        "LipPredictor(mouth_source='cascade') timings_ms['mouth']: first TCNN pass from the face box"
        if cascade is not None
        else "skipped: the model has no face_to_mouth",
    )
    steps["mask"] = stats(mask_ms, "ms/face", "label_mask_from_faces, one face, 4x supersampling")

    # --- target 1: landmark step vs dlib 68 points, per face -------------------------------------------
    dlib68 = steps["dlib_shape68"]["ms"]
    crop = steps["crop"]["ms"]
    target1 = {"dlib_shape68_ms": dlib68, "crop_ms": crop, "threshold": 0.5}
    for runtime in ("torch", "onnx"):
        tcnn = steps.get(f"tcnn_tweaked_{runtime}_b1", {}).get("ms")
        if tcnn is not None:
            landmark = crop + tcnn
            target1[runtime] = {
                "landmark_ms": landmark,
                "tcnn_ms": tcnn,
                "ratio": landmark / dlib68,
                "met": landmark / dlib68 <= 0.5,
            }

    # --- target 2: end-to-end images/s, ours (predict + mask) vs dlib detection + 68 points ------------
    images_only = [image for _, image in photos]

    def ours_pass(which: LipPredictor) -> Callable[[], None]:
        def run() -> None:
            for image in images_only:
                result = which.predict(image)
                label_mask_from_faces([face.lips for face in result.faces], result.height, result.width)

        return run

    def dlib_pass() -> None:
        for image in images_only:
            rgb = to_rgb(image)
            for face in detector(image):
                shapes(image, face, rgb)

    # Passes alternate (dlib, ours, cascade, dlib, ours, ...) so that load drifts hit all of them alike.
    passes = max(1, min(args.repeats, 3))
    contenders = {"dlib": dlib_pass, "ours": ours_pass(predictor)}
    if cascade is not None:
        contenders["ours_cascade"] = ours_pass(cascade)
    for run in contenders.values():  # warm-up
        run()
    pass_runs: dict[str, list[float]] = {key: [] for key in contenders}
    for _ in range(passes):
        for key, run in contenders.items():
            started = time.perf_counter()
            run()
            pass_runs[key].append(time.perf_counter() - started)
    rate = {key: len(images_only) / statistics.median(runs) for key, runs in pass_runs.items()}
    target2 = {
        "images": len(images_only),
        "passes": passes,
        "threshold": 0.9,
        "dlib_images_per_s": rate["dlib"],
        "ours_images_per_s": rate["ours"],
    }
    target2["ratio"] = target2["ours_images_per_s"] / target2["dlib_images_per_s"]
    target2["met"] = target2["ratio"] >= 0.9
    if cascade is not None:
        target2["ours_cascade_images_per_s"] = rate["ours_cascade"]
        target2["ratio_cascade"] = rate["ours_cascade"] / rate["dlib"]
    print("end-to-end timed", flush=True)

    # --- video: tracker vs detection every frame -------------------------------------------------------
    video = {"frames": args.frames, "redetect_every": 10}
    with_faces = [photo for photo, faces in zip(photos, faces_per_photo) if faces]  # `predictions` has one each
    source = next(
        ((name, image, result) for (name, image), result in zip(with_faces, predictions) if result.faces), None
    )
    if source is None or args.frames < 1:
        notes.append("video skipped: no photo with a face")
    else:
        name, image, result = source
        frames = pan_frames(image, result.faces[0].lips.mean(axis=0), args.frames)
        detections = []

        def tracked() -> None:
            tracker = VideoTracker(predictor, redetect_every=10)
            count = 0
            for index, frame in enumerate(frames):
                out, _, detected = tracker.step(frame, index, 1 / 25)
                count += detected
                label_mask_from_faces([face.lips for face in out.faces], out.height, out.width)
            detections.append(count)

        def every_frame() -> None:
            for frame in frames:
                out = predictor.predict(frame)
                label_mask_from_faces([face.lips for face in out.faces], out.height, out.width)

        tracked_ms = timed_ms(tracked, args.video_repeats)
        full_ms = timed_ms(every_frame, args.video_repeats)
        video |= {
            "photo": name,
            "tracker_fps": 1000 * len(frames) / tracked_ms,
            "detect_every_frame_fps": 1000 * len(frames) / full_ms,
            "detections_per_pass": detections[-1],
            "note": "640x480 window panned around the face of a padded test photo; mask included",
        }
        video["speedup"] = video["tracker_fps"] / video["detect_every_frame_fps"]

    # --- report ----------------------------------------------------------------------------------------
    print(
        f"\nms per step, 1 CPU thread (median over {'faces' if face_count else 'items'}; "
        f"{len(photos)} photos 640x480, {face_count} faces)"
    )
    print(f"{'step':28s} {'unit':9s} {'median':>8s} {'mean':>8s} {'n':>5s}  note")
    for key, entry in steps.items():
        print(
            f"{key:28s} {entry['unit']:9s} {fmt(entry['ms'], 3):>8s} {fmt(entry.get('mean_ms'), 3):>8s} "
            f"{entry['n']:5d}  {entry.get('note', '')}"
        )
    print(
        f"\nTarget 1: landmark step (crop + tweaked TCNN b1 incl. gating) / dlib 68 points per face <= 0.5 "
        f"(dlib 68: {fmt(dlib68, 3)} ms)"
    )
    for runtime in ("torch", "onnx"):
        if runtime in target1:
            t = target1[runtime]
            print(
                f"  {runtime:6s} {fmt(crop, 3)} + {fmt(t['tcnn_ms'], 3)} = {fmt(t['landmark_ms'], 3)} ms  "
                f"ratio {t['ratio']:.3f}  "
                f"{'MET' if t['met'] else 'NOT met'}"
            )
    print(
        f"Target 2: end to end on {len(images_only)} photos 640x480, ours (LipPredictor.predict + mask) "
        f"{target2['ours_images_per_s']:.1f} img/s vs dlib detection + 68 points "
        f"{target2['dlib_images_per_s']:.1f} img/s: "
        f"ratio {target2['ratio']:.3f} (>= 0.9) {'MET' if target2['met'] else 'NOT met'}"
    )
    if "ratio_cascade" in target2:
        print(
            f"  with the cascade mouth: {target2['ours_cascade_images_per_s']:.1f} img/s, "
            f"ratio {target2['ratio_cascade']:.3f}"
        )
    if "tracker_fps" in video:
        print(
            f"Video ({args.frames} frames, {name}): VideoTracker(redetect_every=10) {video['tracker_fps']:.1f} fps "
            f"({video['detections_per_pass']} detections) vs detection every frame "
            f"{video['detect_every_frame_fps']:.1f} fps "
            f"(x{video['speedup']:.2f})"
        )
    for note in notes:
        print(f"note: {note}")

    report = {
        "settings": {
            "images": len(photos),
            "faces": face_count,
            "size": [WIDTH, HEIGHT],
            "repeats": args.repeats,
            "tcnn_repeats": args.tcnn_repeats,
            "batch": args.batch,
            "torch_threads": torch.get_num_threads(),
            "model": str(args.model),
            "base_model": str(base_folder),
            "device": args.device,
            "engine": args.engine,
            "helen": str(args.helen),
        },
        "steps": steps,
        "target1_landmark_vs_dlib68": target1,
        "target2_end_to_end": target2,
        "video": video,
        "notes": notes,
        "platform": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "opencv": cv2.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
