from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.helen import load_split
from lipseg.inference.cli import main
from lipseg.inference.video import OneEuroFilter


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
