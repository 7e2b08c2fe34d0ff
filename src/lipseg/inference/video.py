"""Video: track mouths across frames with a cheap re-detection schedule, and smooth the landmarks.

Between detections each face is re-cropped around its previous lips (no dlib at all), which is what
makes video fast; every `redetect_every` frames, or when a face is lost, dlib detects again. Landmark
jitter is the top complaint against lip trackers, so points can be smoothed with a One Euro filter
(Casiez et al., CHI 2012): strong smoothing when the mouth is still, little lag when it moves.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lipseg.inference.predictor import FaceLips, ImageLips, LipPredictor


class OneEuroFilter:
    """Adaptive low-pass filter for a fixed-shape array of values sampled at a known rate."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, derivative_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.derivative_cutoff = min_cutoff, beta, derivative_cutoff
        self._value: np.ndarray | None = None
        self._derivative: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, value: np.ndarray, dt: float) -> np.ndarray:
        value = np.asarray(value, np.float64)
        if self._value is None:
            self._value, self._derivative = value.copy(), np.zeros_like(value)
            return value.copy()
        derivative = (value - self._value) / dt
        a_d = self._alpha(self.derivative_cutoff, dt)
        self._derivative = a_d * derivative + (1 - a_d) * self._derivative
        # Scale-aware speed: points move in pixels, so use the mean speed of the shape.
        cutoff = self.min_cutoff + self.beta * float(np.abs(self._derivative).mean())
        a = self._alpha(cutoff, dt)
        self._value = a * value + (1 - a) * self._value
        return self._value.copy()


@dataclass
class Track:
    lips_filter: OneEuroFilter | None
    last: FaceLips
    ident: int


@dataclass
class VideoTracker:
    predictor: LipPredictor
    redetect_every: int = 10
    smooth: bool = True
    min_cutoff: float = 1.0
    beta: float = 0.05
    tracks: list[Track] = field(default_factory=list)
    _next_id: int = 0

    def _new_track(self, face: FaceLips) -> Track:
        track = Track(OneEuroFilter(self.min_cutoff, self.beta) if self.smooth else None, face, self._next_id)
        self._next_id += 1
        return track

    def _match(self, faces: list[FaceLips]) -> list[Track]:
        """Keep each old track whose mouth is nearest a new detection (within one mouth box)."""
        matched, unused = [], list(self.tracks)
        for face in faces:
            centre = face.lips.mean(axis=0)
            best = min(unused, key=lambda t: np.linalg.norm(t.last.lips.mean(axis=0) - centre), default=None)
            if (
                best is not None
                and np.linalg.norm(best.last.lips.mean(axis=0) - centre) < (face.crop_box[2] - face.crop_box[0]) / 2
            ):
                unused.remove(best)
                best.last = face
                matched.append(best)
            else:
                matched.append(self._new_track(face))
        return matched

    def step(self, frame: np.ndarray, index: int, dt: float) -> tuple[ImageLips, list[int], bool]:
        """(result, track ids, whether dlib ran) for one frame."""
        detect = index % self.redetect_every == 0 or not self.tracks
        if detect:
            result = self.predictor.predict(frame)
            self.tracks = self._match(result.faces)
        else:
            result = self.predictor.track(frame, [track.last for track in self.tracks])
            lost = [face for face in result.faces if not _plausible(face, frame.shape)]
            if lost:  # a mouth left its box: detect again on this very frame
                result = self.predictor.predict(frame)
                self.tracks = self._match(result.faces)
                detect = True
        for track, face in zip(self.tracks, result.faces):
            if track.lips_filter is not None:
                face.lips = track.lips_filter(face.lips, dt).astype(np.float32)
            track.last = face
        return result, [track.ident for track in self.tracks], detect


def _plausible(face: FaceLips, shape: tuple[int, ...]) -> bool:
    """A tracked mouth is lost when its points leave the frame or collapse/explode relative to the crop."""
    height, width = shape[:2]
    lips = face.lips
    if (
        not np.all(np.isfinite(lips))
        or lips[:, 0].min() < -5
        or lips[:, 1].min() < -5
        or lips[:, 0].max() > width + 5
        or lips[:, 1].max() > height + 5
    ):
        return False
    side = float(face.crop_box[2] - face.crop_box[0])
    extent = float(np.ptp(lips[:, 0]))
    return 0.25 * side < extent < 0.95 * side


def read_frames(path: Path) -> Iterator[tuple[int, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"cannot open video {path}")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield index, frame
            index += 1
    finally:
        capture.release()


def video_info(path: Path) -> tuple[float, int, int, int]:
    """(fps, frame count, width, height) from the container, before any frame is decoded; fps falls back
    to 25 when the container does not say or says something unusable (0, NaN, infinite or absurd), which
    would otherwise give the smoothing a zero or non-finite time step."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise OSError(f"cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS)
    info = (
        fps if math.isfinite(fps) and 0 < fps <= MAX_FPS else 25.0,
        max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0),
        int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
        int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    capture.release()
    return info


MAX_FPS = 1000.0  # high-speed cameras reach this; a container claiming more is wrong


H264_FOURCCS = ("avc1", "H264")  # what browsers and phones play; FFmpeg builds name the encoder either way
FALLBACK_FOURCC = "mp4v"  # MPEG-4 Part 2: in every OpenCV build with FFmpeg, but many players refuse it
NO_H264_WARNING = "lipseg: warning: this OpenCV build has no H.264 encoder; writing MPEG-4 Part 2 (mp4v)"
_warned_no_h264 = False  # one warning per run, not one per video


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null: a build without an H.264 encoder makes FFmpeg and OpenCV print
    half a dozen error lines per failed try, from C, past Python's sys.stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> tuple[cv2.VideoWriter, str]:
    """(an opened writer, its fourcc): H.264 where this OpenCV build encodes it, else mp4v with a warning.
    OSError when no writer opens (e.g. a frame size the encoder refuses), before any frame is written."""
    global _warned_no_h264
    for fourcc in H264_FOURCCS:
        with _quiet_stderr():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if writer.isOpened():
            return writer, fourcc
        writer.release()
    if not _warned_no_h264:
        print(NO_H264_WARNING, file=sys.stderr)
        _warned_no_h264 = True
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FALLBACK_FOURCC), fps, size)
    if not writer.isOpened():
        writer.release()
        raise OSError(
            f"no video writer (H.264 or {FALLBACK_FOURCC}) can encode {size[0]} x {size[1]} frames at {fps:g} fps"
        )
    return writer, FALLBACK_FOURCC
