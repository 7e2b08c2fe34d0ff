"""What `lipseg predict` does with each input: find the files, predict, and write the JSON, the label
PNG (or its COCO entry) and the overlay (photos) or the annotated video and its JSON lines, never outside --out."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lipseg.core.files import staged_files, write_bytes_atomic, write_text_atomic
from lipseg.core.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    apply_orientation,
    check_pixel_count,
    image_metadata,
    read_image,
)
from lipseg.evaluation.masks import label_mask_from_faces
from lipseg.evaluation.overlays import CLASS_COLOURS, overlay
from lipseg.inference.coco import CocoPhoto, photo_annotations

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
# What each input writes under --out, beside its stem: checked against the inputs before any work.
IMAGE_OUTPUTS = (".json", ".png", "_overlay.jpg")
VIDEO_OUTPUTS = (".jsonl", "_annotated.mp4")
# --format: how the label masks are written. png: with a palette, so a viewer shows the classes in the
# overlay colours; png-grey: single-channel, what OpenCV's IMREAD_UNCHANGED and ../shared/tools/lipeval.py
# read (OpenCV expands a palette PNG to three colour channels); coco: no PNG, one annotations.json per run.
MASK_FORMATS = ("png", "png-grey", "coco")
# The same outputs as one row of strings per photo: what the photo-level MLflow model answers
# (lipseg.inference.photo_pyfunc) and what `lipseg spark-predict` writes. Here, where the base install and the
# CLI can read them without importing MLflow.
PHOTO_MODEL_COLUMNS = (
    "name",
    "image_size",
    "faces",
    "mask_png",
    "face_masks",
    "mask_source",
    "notes",
    "timings",
    "error",
)


class OutsideOutError(ValueError):
    """An output path that would leave --out (a `..` stem, or a symlink inside --out pointing away).
    A ValueError, so it fails that one input and the others are still processed."""


@dataclass
class InputFile:
    path: Path
    kind: str  # "image" or "video"
    out_stem: Path  # relative to --out, without suffix
    order: int = 0  # place among the inputs found


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    no_face: int = 0
    videos: int = 0
    frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # processed, with something to know (EXIF turn)
    landmark_ms: list[float] = field(default_factory=list)  # per face: mouth + crop + TCNN
    image_ms: list[float] = field(default_factory=list)
    coco: list[CocoPhoto] = field(default_factory=list)  # with --format coco: each photo's entry

    def merge(self, other: Summary) -> None:
        """Add a worker process's counts and timings (its failures are added too)."""
        self.images += other.images
        self.faces += other.faces
        self.no_face += other.no_face
        self.failed += other.failed
        self.notes += other.notes
        self.landmark_ms += other.landmark_ms
        self.image_ms += other.image_ms
        self.coco += other.coco

    def print(self, stream=None, interrupted: bool = False) -> None:
        stream = stream or sys.stderr
        mean_face = f"{np.mean(self.landmark_ms):.2f} ms" if self.landmark_ms else "n/a"
        mean_image = f"{np.mean(self.image_ms):.1f} ms" if self.image_ms else "n/a"
        print(
            ("lipseg: interrupted; done before that: " if interrupted else "lipseg: ")
            + f"{self.images} images, {self.faces} faces, {self.no_face} images without a face, "
            f"{self.videos} videos ({self.frames} frames), {len(self.failed)} failed; "
            f"mean {mean_face} per face (mouth + crop + TCNN), {mean_image} per image end to end",
            file=stream,
        )
        for name, note in self.notes:
            print(f"lipseg: note: {printable(name)}: {note}", file=stream)
        for name, reason in self.failed:
            print(f"lipseg: failed: {printable(name)}: {printable(reason)}", file=stream)


def printable(text: object) -> str:
    """`text` for a log line: control characters escaped (a file name holding a newline must not print
    a line of its own) and undecodable bytes of a file name shown as escapes instead of crashing."""
    return str(text).translate(_CONTROL_ESCAPES).encode("utf-8", "backslashreplace").decode("utf-8")


_CONTROL_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]} | {
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
}


def _file_kind(status: os.stat_result) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISSOCK, "a socket")):
        if test(status.st_mode):
            return name
    return "a block device" if stat.S_ISBLK(status.st_mode) else "not a plain file"


def _input_problem(path: Path) -> tuple[str, os.stat_result | None]:
    """('', status) for a path that exists (links followed), else (the reason, None)."""
    try:
        return "", path.stat()
    except FileNotFoundError:
        return ("a broken symbolic link" if path.is_symlink() else "no such file or folder"), None
    except OSError as error:
        return error.strerror or str(error), None


def _out_stem(relative: Path) -> Path:
    """The output stem of an input at `relative`: its name without the suffix, or the whole name when that
    leaves only dots (`..jpg` would otherwise name the output folder itself)."""
    stem = relative.name[: -len(relative.suffix)] if relative.suffix else relative.name
    return relative.with_name(relative.name if not stem.strip(".") else stem)


def collect_inputs(
    paths: Sequence[str], out_dir: Path | None = None, reserved: Sequence[Path] = ()
) -> tuple[list[InputFile], list[tuple[str, str]]]:
    """Images and videos from files and folders (recursive, by extension), with unique output stems that
    avoid the `reserved` ones (a run-wide output such as the COCO file), and the (path, reason) of every
    given or found path that cannot be read. A folder search skips `out_dir` when it lies inside, so a
    rerun does not take its own outputs for inputs."""
    found: list[InputFile] = []
    problems: list[tuple[str, str]] = []
    used: set[Path] = set(reserved)
    skip = out_dir.resolve() if out_dir is not None else None

    def add(path: Path, relative: Path, status: os.stat_result) -> None:
        suffix = path.suffix.lower()
        if not stat.S_ISREG(status.st_mode):
            problems.append((str(path), f"not a regular file ({_file_kind(status)})"))
            return
        stem = _out_stem(relative)
        candidate, number = stem, 1
        while candidate in used:
            candidate = stem.with_name(f"{stem.name}_{number}")
            number += 1
        used.add(candidate)
        found.append(InputFile(path, "video" if suffix in VIDEO_SUFFIXES else "image", candidate, len(found)))

    for raw in paths:
        path = Path(raw)
        problem, status = _input_problem(path)
        if status is None:
            problems.append((raw, problem))
        elif stat.S_ISDIR(status.st_mode):
            for folder, subfolders, files in os.walk(path):
                subfolders[:] = sorted(name for name in subfolders if Path(folder, name).resolve() != skip)
                for name in sorted(files):
                    child = Path(folder, name)
                    if child.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES):
                        problem, status = _input_problem(child)
                        if status is None:
                            problems.append((str(child), problem))
                        else:
                            add(child, child.relative_to(path), status)
        else:
            add(path, Path(path.name), status)
    return found, problems


class OutputClashError(ValueError):
    """--out would overwrite an input: the run is refused before anything is read or written."""


def check_outputs_clear(
    inputs: list[InputFile], paths: Sequence[str], out_dir: Path, run_outputs: Sequence[str] = ()
) -> None:
    """Refuse an --out that is an input folder, or any output (per input, or `run_outputs` directly under
    --out) that would land on an input file."""
    resolved_out = out_dir.resolve()
    for raw in paths:
        if Path(raw).is_dir() and Path(raw).resolve() == resolved_out:
            raise OutputClashError(
                f"--out {printable(out_dir)} is the input folder {printable(raw)}: its photos would be "
                "overwritten by their masks; choose another output folder"
            )
    originals = {item.path.resolve(): item.path for item in inputs}
    for name in run_outputs:
        if (clash := originals.get((out_dir / name).resolve())) is not None:
            raise OutputClashError(
                f"the output {printable(out_dir / name)} would overwrite the input {printable(clash)}; "
                "choose another output folder"
            )
    for item in inputs:
        for suffix in IMAGE_OUTPUTS if item.kind == "image" else VIDEO_OUTPUTS:
            target = (out_dir / item.out_stem).with_name(item.out_stem.name + suffix)
            if (clash := originals.get(target.resolve())) is not None:
                raise OutputClashError(
                    f"the output {printable(target)} of {printable(item.path)} would overwrite the input "
                    f"{printable(clash)}; choose another output folder"
                )


def safe_output(out_dir: Path, stem: Path, suffix: str) -> Path:
    """Output path under out_dir; refuses anything that would land outside it."""
    target = (out_dir / stem).with_name(stem.name + suffix)
    resolved_out = out_dir.resolve()
    if not target.resolve().is_relative_to(resolved_out):
        raise OutsideOutError(f"refusing to write outside --out: {target} resolves to {target.resolve()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def face_mask(result, image: np.ndarray, segmenter=None) -> np.ndarray:
    """The label mask of all faces of one predicted image or frame: the landmark polygons, or the
    segmenter's labels on each face's TCNN-located crop."""
    if segmenter is not None:
        return segmenter.label_mask(image, [face.lips for face in result.faces])
    return label_mask_from_faces([face.lips for face in result.faces], result.height, result.width)


def label_png(mask: np.ndarray, palette: bool = True) -> bytes:
    """A label mask as PNG bytes; the values stay the labels (0..3). With `palette`, an indexed PNG whose
    palette paints the lip classes in the overlay colours on black, so a viewer shows the mouth instead of
    an all but black picture; without it, a single-channel grey PNG."""
    if not palette:
        ok, encoded = cv2.imencode(".png", mask)
        if not ok:
            raise OSError("could not encode the label mask as PNG")
        return encoded.tobytes()
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(mask, np.uint8))
    image.putpalette(MASK_PALETTE)  # an "L" image becomes "P" with the same values as indices
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# RGB entries for labels 0..3: black background, then the overlay colours (BGR there) of each class.
MASK_PALETTE = [0, 0, 0] + [channel for label in sorted(CLASS_COLOURS) for channel in reversed(CLASS_COLOURS[label])]


def mask_source_name(segmenter) -> str:
    return "landmarks" if segmenter is None else f"segmenter:{segmenter.meta['config']['arch']}"


def annotate(image: np.ndarray, result, mask: np.ndarray) -> np.ndarray:
    """What a person looks at: the mask blended in, every face's contours and points drawn."""
    return overlay(image, mask, [face.lips for face in result.faces])


def predict_image_file(
    item: InputFile,
    predictor,
    out_dir: Path,
    overlay: bool,
    summary: Summary,
    segmenter=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    mask_format: str = "png",
) -> None:
    """The outputs of one photo (`mask_format` one of MASK_FORMATS); with coco, its COCO entry goes to
    `summary.coco` instead of a PNG beside the JSON."""
    started = time.perf_counter()
    image = read_image(item.path, max_pixels)  # ImageError (a ValueError) names what is wrong with the file
    metadata = image_metadata(item.path)
    # Points, masks and overlays are given in the photo as a viewer shows it, as other face tools read it.
    image = apply_orientation(image, metadata.orientation)
    result = predictor.predict(image)
    mask_started = time.perf_counter()
    mask = face_mask(result, image, segmenter)
    result.timings_ms["mask"] = (time.perf_counter() - mask_started) * 1000
    payload = {
        "image": str(item.path),
        **result.to_json(),
        "model": predictor.meta.get("kind"),
        "mask_source": mask_source_name(segmenter),
        "exif_orientation": metadata.orientation,
        "notes": metadata.notes(),
    }
    summary.notes += [(str(item.path), note) for note in payload["notes"]]
    write_text_atomic(safe_output(out_dir, item.out_stem, ".json"), json.dumps(payload) + "\n")
    if mask_format == "coco":
        lips = [face.lips for face in result.faces]
        summary.coco.append(
            CocoPhoto(item.order, str(item.path), result.width, result.height, photo_annotations(mask, lips))
        )
    else:
        write_bytes_atomic(safe_output(out_dir, item.out_stem, ".png"), label_png(mask, mask_format == "png"))
    if overlay:
        ok, encoded = cv2.imencode(".jpg", annotate(image, result, mask), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if ok:
            write_bytes_atomic(safe_output(out_dir, item.out_stem, "_overlay.jpg"), encoded.tobytes())
    summary.images += 1
    summary.faces += len(result.faces)
    summary.no_face += not result.faces
    if result.faces:
        landmark = sum(result.timings_ms.get(key, 0.0) for key in ("mouth", "crop", "tcnn"))
        summary.landmark_ms.extend([landmark / len(result.faces)] * len(result.faces))
    summary.image_ms.append((time.perf_counter() - started) * 1000)


def predict_video_file(
    item: InputFile, predictor, out_dir: Path, args: argparse.Namespace, summary: Summary, segmenter=None
) -> None:
    """The annotated video and its JSON lines, renamed into place only after the last frame: an interrupted
    or failed video leaves neither, never a shorter one under the final names."""
    from lipseg.inference.video import VideoTracker, open_video_writer, read_frames, video_info

    fps, count, width, height = video_info(item.path)
    # from the container, before a frame is decoded
    check_pixel_count(width, height, args.max_pixels, "video frames of ", "lipseg predict --max-pixels")
    tracker = VideoTracker(
        predictor,
        redetect_every=args.redetect_every,
        smooth=not args.no_smooth,
        min_cutoff=args.smooth_min_cutoff,
        beta=args.smooth_beta,
    )
    video_path = safe_output(out_dir, item.out_stem, "_annotated.mp4")
    lines_path = safe_output(out_dir, item.out_stem, ".jsonl")
    started, frames, detections, faces = time.perf_counter(), 0, 0, 0
    with staged_files(video_path, lines_path) as (video_tmp, lines_tmp):
        writer, _ = open_video_writer(video_tmp, fps, (width, height))
        try:
            with lines_tmp.open("w", encoding="utf-8") as lines:
                for index, frame in tqdm(
                    read_frames(item.path),
                    total=count or None,
                    desc=printable(item.path.name),
                    unit="frame",
                    disable=args.quiet,
                    leave=False,
                ):
                    result, track_ids, detected = tracker.step(frame, index, 1.0 / fps)
                    if not all(np.isfinite(face.lips).all() for face in result.faces):
                        raise ValueError(f"frame {index}: the landmarks are not finite numbers")
                    detections += detected
                    writer.write(annotate(frame, result, face_mask(result, frame, segmenter)))
                    record = {
                        "frame": index,
                        "time_s": round(index / fps, 4),
                        "detected": bool(detected),
                        **result.to_json(),
                    }
                    for face_json, ident in zip(record["faces"], track_ids):
                        face_json["track"] = ident
                    lines.write(json.dumps(record, allow_nan=False) + "\n")
                    frames += 1
                    faces += len(result.faces)
        finally:
            writer.release()
        if frames == 0:
            raise OSError("no frames could be decoded")
    seconds = time.perf_counter() - started
    summary.videos += 1
    summary.frames += frames
    summary.faces += faces
    print(
        f"lipseg: {printable(item.path)}: {frames} frames at {frames / seconds:.1f} fps, dlib ran on {detections} "
        f"(re-detection every {args.redetect_every} frames) -> {printable(video_path.name)}, "
        f"{printable(lines_path.name)}",
        file=sys.stderr,
    )
