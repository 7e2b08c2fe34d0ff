from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.helen import load_split
from lipseg.inference.cli import main
from lipseg.inference.video import OneEuroFilter, VideoTracker


def test_one_euro_filter_removes_jitter_but_follows_motion() -> None:
    rng = np.random.default_rng(0)
    still = np.full((200, 56, 2), 100.0) + rng.normal(0, 1.0, (200, 56, 2))
    smoother = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    smoothed = np.stack([smoother(frame, 1 / 30) for frame in still])
    assert smoothed[50:].std() < 0.35 * still[50:].std()
    moving = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    step = [moving(np.full((56, 2), 0.0 if i < 10 else 50.0), 1 / 30) for i in range(40)]
    assert abs(step[-1].mean() - 50.0) < 1.0  # no lasting lag after a jump


@pytest.fixture
def face_video(tmp_path: Path, synthetic_dir: Path) -> Path:
    """A 24-frame video of a synthetic face drifting to the right."""
    record = load_split(synthetic_dir, "test")[0][0]
    face = cv2.resize(cv2.imread(str(record.image_path)), (256, 256), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (320, 256))
    for index in range(24):
        frame = np.full((256, 320, 3), 90, np.uint8)
        frame[:, 20 + index : 276 + index] = face
        writer.write(frame)
    writer.release()
    return path


def test_video_gives_annotated_video_and_one_json_line_per_frame(
    face_video: Path, tmp_path: Path, tiny_model_folder: Path
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            str(face_video),
            "--out",
            str(out),
            "--model",
            str(tiny_model_folder),
            "--redetect-every",
            "10",
            "--quiet",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(24))
    assert lines[0]["detected"] and lines[10]["detected"] and lines[20]["detected"]
    assert sum(line["detected"] for line in lines) < 24  # the schedule skips dlib on most frames
    assert all(len(line["faces"]) == 1 for line in lines)
    assert {face["track"] for line in lines for face in line["faces"]} == {0}  # one face, one track
    capture = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    capture.release()


def test_unreadable_video_is_a_named_failure(
    tmp_path: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    assert (
        main(["predict", str(broken), "--out", str(tmp_path / "o"), "--model", str(tiny_model_folder), "--quiet"]) == 1
    )
    assert "broken.mp4" in capsys.readouterr().err


def mjpg_video(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """An MJPG AVI: OpenCV writes any frame size in it, including ones mp4v cannot encode."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (width, height))
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(np.full((height, width, 3), 90, np.uint8))
    writer.release()
    return path


def video_args(video: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["predict", str(video), "--out", str(out), "--model", str(model), "--quiet", *extra]


def test_an_interrupted_video_leaves_no_output_under_its_final_names(
    face_video: Path, tmp_path: Path, tiny_model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = VideoTracker.step

    def interrupted_at_frame_12(self, frame, index, dt):
        if index == 12:
            raise KeyboardInterrupt
        return step(self, frame, index, dt)

    monkeypatch.setattr(VideoTracker, "step", interrupted_at_frame_12)
    out = tmp_path / "out"
    assert main(video_args(face_video, out, tiny_model_folder)) == 130
    assert sorted(out.iterdir()) == []  # no 12-line .jsonl, no 12-frame .mp4, no temporary files


def test_non_finite_landmarks_fail_the_video_and_leave_nothing(
    face_video: Path, tmp_path: Path, tiny_model_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    step = VideoTracker.step

    def nan_at_frame_5(self, frame, index, dt):
        result, tracks, detected = step(self, frame, index, dt)
        if index == 5:
            result.faces[0].lips[:] = np.nan
        return result, tracks, detected

    monkeypatch.setattr(VideoTracker, "step", nan_at_frame_5)
    out = tmp_path / "out"
    assert main(video_args(face_video, out, tiny_model_folder)) == 1
    assert "clip.mp4: frame 5: the landmarks are not finite numbers" in capsys.readouterr().err
    assert sorted(out.iterdir()) == []


def test_a_video_over_the_pixel_limit_is_refused_before_a_frame_is_decoded(
    tmp_path: Path, tiny_model_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import lipseg.inference.video as video

    def no_decoding(path):
        raise AssertionError("a frame was decoded")

    monkeypatch.setattr(video, "read_frames", no_decoding)
    large = mjpg_video(tmp_path / "large.avi", 1200, 1000, frames=1)
    out = tmp_path / "out"
    assert main(video_args(large, out, tiny_model_folder, "--max-pixels", "1000000")) == 1
    assert "video frames of 1200 x 1000 = 1200000 pixels, over the limit of 1000000" in capsys.readouterr().err
    assert sorted(out.iterdir()) == []


def test_a_frame_size_the_writer_cannot_encode_fails_that_video(
    tmp_path: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    wide = mjpg_video(tmp_path / "wide9000.avi", 9000, 400, frames=2)
    out = tmp_path / "out"
    assert main(video_args(wide, out, tiny_model_folder)) == 1
    stderr = capsys.readouterr().err
    assert "wide9000.avi: no video writer (H.264 or mp4v) can encode 9000 x 400 frames" in stderr
    assert "-> wide9000_annotated.mp4" not in stderr and sorted(out.iterdir()) == []


def test_video_outputs_follow_the_umask(face_video: Path, tmp_path: Path, tiny_model_folder: Path) -> None:
    import os
    import stat

    previous = os.umask(0o007)
    try:
        assert main(video_args(face_video, tmp_path / "out", tiny_model_folder, "--redetect-every", "30")) == 0
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "out").iterdir()}
    assert modes == {"clip.jsonl": 0o660, "clip_annotated.mp4": 0o660}


def test_container_frame_rates_that_would_break_the_smoothing_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import math

    import lipseg.inference.video as video

    class Capture:
        """A container that claims `fps`; 64 x 64 frames, frame count unknown (-1)."""

        fps = 0.0

        def __init__(self, path: str) -> None:
            pass

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_FPS: Capture.fps, cv2.CAP_PROP_FRAME_COUNT: -1.0}.get(prop, 64.0)

        def release(self) -> None:
            pass

    monkeypatch.setattr(video.cv2, "VideoCapture", Capture)
    for claimed, used in ((0.0, 25.0), (math.nan, 25.0), (math.inf, 25.0), (1e9, 25.0), (29.97, 29.97)):
        Capture.fps = claimed
        assert video.video_info(Path("x.mp4")) == (used, 0, 64, 64)


def written_fourcc(path: Path) -> str:
    """The sample entry of the MP4's video track (its stsd box): avc1 for H.264, mp4v for MPEG-4 Part 2.
    OpenCV's CAP_PROP_FOURCC names the decoder instead (FMP4 for mp4v)."""
    data = path.read_bytes()
    stsd = data.index(b"stsd")
    return data[stsd + 16 : stsd + 20].decode("ascii", "replace")  # after size, version/flags, count, size


def build_has_h264(tmp_path: Path) -> bool:
    from lipseg.inference.video import _quiet_stderr

    with _quiet_stderr():
        writer = cv2.VideoWriter(str(tmp_path / "probe.mp4"), cv2.VideoWriter_fourcc(*"avc1"), 25.0, (64, 48))
    opened = writer.isOpened()
    writer.release()
    return opened


def test_video_is_h264_where_the_build_has_it_else_mp4v_with_one_warning(
    face_video: Path, tmp_path: Path, tiny_model_folder: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    from lipseg.inference import video

    monkeypatch.setattr(video, "_warned_no_h264", False)
    h264 = build_has_h264(tmp_path)
    second = tmp_path / "second.mp4"
    second.write_bytes(face_video.read_bytes())
    out = tmp_path / "out"
    assert main(video_args(face_video, out, tiny_model_folder, "--redetect-every", "5")) == 0
    assert main(video_args(second, out, tiny_model_folder, "--redetect-every", "5")) == 0
    stderr = capsys.readouterr().err
    assert stderr.count(video.NO_H264_WARNING) == (0 if h264 else 1)  # once per run, not per video
    assert "cap_ffmpeg" not in stderr and "avc1" not in stderr  # the failed tries are silenced
    for name in ("clip_annotated.mp4", "second_annotated.mp4"):
        assert written_fourcc(out / name) == ("avc1" if h264 else "mp4v")
        capture = cv2.VideoCapture(str(out / name))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
        capture.release()


@pytest.mark.parametrize("accepted", ["avc1", "H264"])
def test_an_h264_build_gets_h264_and_no_warning(
    accepted: str, face_video: Path, tmp_path: Path, tiny_model_folder: Path, monkeypatch, capsys
) -> None:
    """A build whose encoder opens for `accepted` (simulated: that fourcc is written with mp4v here)."""
    from lipseg.inference import video

    asked = []
    real_writer, mp4v = cv2.VideoWriter, cv2.VideoWriter_fourcc(*"mp4v")

    def writer(path: str, fourcc: int, fps: float, size: tuple[int, int]):
        name = fourcc.to_bytes(4, "little").decode()
        asked.append(name)
        if name == accepted:
            return real_writer(path, mp4v, fps, size)
        return real_writer(path, fourcc, fps, size) if name == "mp4v" else real_writer()

    monkeypatch.setattr(video, "_warned_no_h264", False)
    monkeypatch.setattr(video.cv2, "VideoWriter", writer)
    opened, fourcc = video.open_video_writer(tmp_path / "direct.mp4", 25.0, (64, 48))
    opened.release()
    assert fourcc == accepted and asked == ["avc1", "H264"][: 1 + (accepted == "H264")]
    out = tmp_path / "out"
    assert main(video_args(face_video, out, tiny_model_folder)) == 0
    assert video.NO_H264_WARNING not in capsys.readouterr().err
    assert (out / "clip_annotated.mp4").is_file() and "mp4v" not in asked
