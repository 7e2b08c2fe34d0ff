from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipseg.data.helen import AnnotationError, format_helen_annotation, load_split, parse_helen_annotation
from lipseg.data.rejects import DatasetError


def write_dataset(root: Path, names: list[str], *, points: np.ndarray | None = None) -> None:
    (root / "images").mkdir(parents=True)
    (root / "annotation").mkdir()
    base = np.tile(np.array([[50.0, 60.0]], np.float32), (194, 1)) if points is None else points
    for number, name in enumerate(names, start=1):
        (root / "images" / f"{name}.jpg").write_bytes(b"\xff\xd8fake")
        (root / "annotation" / f"{number}.txt").write_text(format_helen_annotation(name, base), newline="")
    (root / "trainnames.txt").write_text("\n".join(names) + "\n")
    (root / "testnames.txt").write_text("")


def test_parse_round_trip_with_crlf() -> None:
    points = np.random.default_rng(0).uniform(0, 300, (194, 2)).astype(np.float32)
    text = format_helen_annotation("100032540_1", points)
    assert "\r\n" in text
    name, parsed = parse_helen_annotation(text)
    assert name == "100032540_1"
    np.testing.assert_allclose(parsed, points, atol=0.006)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a\r\n1 , 2\r\n", "expected 194 points"),
        ("a\r\n" + "x , 2\r\n" * 194, "non-numeric"),
        ("a\r\n" + "nan , 2\r\n" * 194, "non-finite"),
        ("", "empty"),
        ("a\r\n" + "1 2\r\n" * 194, "expected 'x , y'"),
    ],
)
def test_parse_rejects_bad_annotations(body: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        parse_helen_annotation(body)


def test_load_split_reports_every_reject_with_reason(tmp_path: Path) -> None:
    write_dataset(tmp_path, ["good", "noimage", "empty", "badann"])
    (tmp_path / "images" / "noimage.jpg").unlink()
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "annotation" / "4.txt").write_text("badann\r\n1 , 2\r\n")
    (tmp_path / "annotation" / "9.txt").write_text(format_helen_annotation("../../x", np.zeros((194, 2))))
    (tmp_path / "trainnames.txt").write_text("good\nnoimage\nempty\nbadann\nunlisted_missing\ngood\n../../x\n")
    records, rejects = load_split(tmp_path, "train")
    assert [record.name for record in records] == ["good"]
    reasons = {reject.name: reject.reason for reject in rejects}
    assert reasons["noimage"] == "image file missing"
    assert "empty" in reasons["empty"]
    assert "expected 194 points" in reasons["badann"]
    assert reasons["unlisted_missing"] == "no annotation file names this image"
    assert reasons["good"] == "duplicate name in list"
    assert "outside the dataset" in reasons["../../x"]


def test_missing_folder_and_lists_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_split(tmp_path / "nope", "train")
    tmp_path.joinpath("annotation").mkdir()
    with pytest.raises(DatasetError, match="trainnames.txt"):
        load_split(tmp_path, "train")


@pytest.mark.helen
def test_reads_the_real_helen_sample(helen_dir: Path) -> None:
    records, rejects = load_split(helen_dir, "test")
    assert len(records) == 330 and rejects == []
    assert all(record.points.shape == (194, 2) for record in records)
    train, _ = load_split(helen_dir, "train")
    assert len(train) == 552
