"""What `lipseg predict` does with each input: find the files, predict, and write the JSON, the label
PNG and the overlay (photos) or the annotated video and its JSON lines, never outside --out."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from lipseg.core.files import write_bytes_atomic, write_png_atomic, write_text_atomic
from lipseg.core.images import DEFAULT_MAX_PIXELS, read_image
from lipseg.evaluation.masks import label_mask_from_faces
from lipseg.evaluation.overlays import overlay

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


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

    def merge(self, other: Summary) -> None:
        """Add a worker process's counts and timings (its failures are added too)."""
        self.images += other.images
        self.faces += other.faces
        self.no_face += other.no_face
        self.failed += other.failed
        self.landmark_ms += other.landmark_ms
        self.image_ms += other.image_ms

    def print(self, stream=None) -> None:
        stream = stream or sys.stderr
        mean_face = f"{np.mean(self.landmark_ms):.2f} ms" if self.landmark_ms else "n/a"
        mean_image = f"{np.mean(self.image_ms):.1f} ms" if self.image_ms else "n/a"
        print(
            f"lipseg: {self.images} images, {self.faces} faces, {self.no_face} images without a face, "
            f"{self.videos} videos ({self.frames} frames), {len(self.failed)} failed; "
            f"mean {mean_face} per face (mouth + crop + TCNN), {mean_image} per image end to end",
            file=stream,
        )
        for name, reason in self.failed:
            print(f"lipseg: failed: {name}: {reason}", file=stream)


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


def face_mask(result, image: np.ndarray, segmenter=None) -> np.ndarray:
    """The label mask of all faces of one predicted image or frame: the landmark polygons, or the
    segmenter's labels on each face's TCNN-located crop."""
    if segmenter is not None:
        return segmenter.label_mask(image, [face.lips for face in result.faces])
    return label_mask_from_faces([face.lips for face in result.faces], result.height, result.width)


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
) -> None:
    started = time.perf_counter()
    image = read_image(item.path, max_pixels)  # ImageError (a ValueError) names what is wrong with the file
    result = predictor.predict(image)
    mask_started = time.perf_counter()
    mask = face_mask(result, image, segmenter)
    result.timings_ms["mask"] = (time.perf_counter() - mask_started) * 1000
    payload = {
        "image": str(item.path),
        **result.to_json(),
        "model": predictor.meta.get("kind"),
        "mask_source": mask_source_name(segmenter),
    }
    write_text_atomic(safe_output(out_dir, item.out_stem, ".json"), json.dumps(payload) + "\n")
    write_png_atomic(safe_output(out_dir, item.out_stem, ".png"), mask)
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
    from lipseg.inference.video import VideoTracker, read_frames, video_info

    fps, count, width, height = video_info(item.path)
    tracker = VideoTracker(
        predictor,
        redetect_every=args.redetect_every,
        smooth=not args.no_smooth,
        min_cutoff=args.smooth_min_cutoff,
        beta=args.smooth_beta,
    )
    video_path = safe_output(out_dir, item.out_stem, "_annotated.mp4")
    lines_path = safe_output(out_dir, item.out_stem, ".jsonl")
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    started, frames, detections = time.perf_counter(), 0, 0
    with lines_path.open("w", encoding="utf-8") as lines:
        for index, frame in tqdm(
            read_frames(item.path),
            total=count or None,
            desc=item.path.name,
            unit="frame",
            disable=args.quiet,
            leave=False,
        ):
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
    print(
        f"lipseg: {item.path}: {frames} frames at {frames / seconds:.1f} fps, dlib ran on {detections} "
        f"(re-detection every {args.redetect_every} frames) -> {video_path.name}, {lines_path.name}",
        file=sys.stderr,
    )
