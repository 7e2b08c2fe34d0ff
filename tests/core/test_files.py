"""Atomic writes: whole files under their final names only, with the modes the user's umask gives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lipseg.core.files import atomic_directory, staged_files, umask, write_text_atomic


@pytest.fixture
def user_umask() -> int:
    previous = os.umask(0o027)
    yield 0o027
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(user_umask: int) -> None:
    assert umask() == user_umask
    assert os.umask(user_umask) == user_umask  # still what the fixture set


def test_files_and_folders_get_the_modes_of_the_umask(tmp_path: Path, user_umask: int) -> None:
    write_text_atomic(tmp_path / "report.json", "{}\n")
    with atomic_directory(tmp_path / "model") as staging:
        (staging / "weights").write_bytes(b"\0")
    assert mode(tmp_path / "report.json") == 0o640  # mkstemp alone would leave 0600
    assert mode(tmp_path / "model") == 0o750  # mkdtemp alone would leave 0700


def test_staged_files_appear_together_at_the_end_or_not_at_all(tmp_path: Path, user_umask: int) -> None:
    video, lines = tmp_path / "clip_annotated.mp4", tmp_path / "clip.jsonl"
    with staged_files(video, lines) as (video_tmp, lines_tmp):
        assert video_tmp.suffix == ".mp4" and video_tmp.parent == tmp_path  # writers choose containers by suffix
        video_tmp.write_bytes(b"frames")
        lines_tmp.write_text("{}\n")
        assert not video.exists() and not lines.exists()
    assert video.read_bytes() == b"frames" and mode(video) == mode(lines) == 0o640
    with pytest.raises(KeyboardInterrupt), staged_files(tmp_path / "cut.mp4") as (cut_tmp,):
        cut_tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.jsonl", "clip_annotated.mp4"]
