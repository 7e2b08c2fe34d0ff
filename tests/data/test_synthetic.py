"""Tests for the synthetic Helen-layout face generator (`lipseg.datasets.synthetic`)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.synthetic import STATES, generate_synthetic_dataset, render_face, state_of

N_TRAIN, N_TEST, SIZE = 12, 6, 128


def _read_annotation(path: Path) -> tuple[str, np.ndarray]:
    text = path.read_bytes().decode("ascii")
    lines = text.split("\r\n")
    assert lines[-1] == "", "file must end with CRLF"
    pts = np.array([[float(v) for v in ln.split(" , ")] for ln in lines[1:-1]], np.float64)
    return lines[0], pts


def _aligned(pts: np.ndarray) -> np.ndarray:
    """Rotate the points so the eye line (outer corners 144 -> 124) is horizontal."""
    d = pts[124] - pts[144]
    a = -np.arctan2(d[1], d[0])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (pts - pts[58]) @ rot.T


def _poly_mask(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "helen"
    summary = generate_synthetic_dataset(out, N_TRAIN, N_TEST, image_size=SIZE, seed=3, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def records(dataset) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    out, _ = dataset
    states = {r["name"]: r["state"] for r in csv.DictReader((out / "states.csv").read_text().splitlines())}
    recs = []
    for n in range(1, N_TRAIN + N_TEST + 1):
        name, pts = _read_annotation(out / "annotation" / f"{n}.txt")
        img = cv2.imread(str(out / "images" / f"{name}.jpg"), cv2.IMREAD_COLOR)
        recs.append((name, pts, img, states[name]))
    return recs


def test_layout_and_name_lists(dataset):
    out, summary = dataset
    total = N_TRAIN + N_TEST
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["images", "annotation", "trainnames.txt", "testnames.txt", "states.csv"]
    )
    names = [f"synth_{i:05d}" for i in range(total)]
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{n}.jpg" for n in names]
    assert sorted(p.name for p in (out / "annotation").iterdir()) == sorted(f"{i}.txt" for i in range(1, total + 1))
    train = (out / "trainnames.txt").read_bytes().decode()
    test = (out / "testnames.txt").read_bytes().decode()
    assert "\r" not in train + test
    assert train.splitlines() == names[:N_TRAIN] and train.endswith("\n")
    assert test.splitlines() == names[N_TRAIN:]
    assert summary["n_train"] == N_TRAIN and summary["n_test"] == N_TEST
    assert sum(summary["states"].values()) == total
    assert sum(summary["states_by_split"]["train"].values()) == N_TRAIN


def test_annotation_format(dataset):
    out, _ = dataset
    for n in range(1, N_TRAIN + N_TEST + 1):
        raw = (out / "annotation" / f"{n}.txt").read_bytes()
        assert raw.count(b"\r\n") == 195 and raw.count(b"\n") == 195  # name + 194 points, CRLF only
        lines = raw.decode("ascii").split("\r\n")[:-1]
        assert lines[0] == f"synth_{n - 1:05d}"
        assert len(lines) == 195
        for ln in lines[1:]:
            x, y = ln.split(" , ")
            assert len(x.split(".")[1]) == 2 and len(y.split(".")[1]) == 2


def test_images_decode_at_size(records):
    for _, _, img, _ in records:
        assert img is not None and img.shape == (SIZE, SIZE, 3)
        assert img.std() > 10  # a picture, not a flat colour


def test_states_csv_matches_lists_and_truth(dataset, records):
    out, summary = dataset
    rows = list(csv.DictReader((out / "states.csv").read_text().splitlines()))
    assert (out / "states.csv").read_text().splitlines()[0] == "name,state,split"
    train = (out / "trainnames.txt").read_text().split()
    test = (out / "testnames.txt").read_text().split()
    assert [r["name"] for r in rows if r["split"] == "train"] == train
    assert [r["name"] for r in rows if r["split"] == "test"] == test
    assert {r["state"] for r in rows} == set(STATES)  # every state occurs in 18 images
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES}
    assert counts == summary["states"]
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced per block of five
    for i, r in enumerate(rows):
        assert r["state"] == state_of(3, i)


def test_points_inside_image(records):
    for _, pts, _, _ in records:
        assert pts.shape == (194, 2)
        assert (pts >= 0).all() and (pts <= SIZE - 1).all()


def test_mouth_width_fraction(records):
    widths = [np.linalg.norm(p[58:86] - p[58], axis=1).max() / SIZE for _, p, _, _ in records]
    assert min(widths) > 0.08 and max(widths) < 0.40
    assert np.median(widths) > 0.14


def test_lip_and_eye_contour_order(records):
    for name, pts, _, _ in records:
        a = _aligned(pts)
        outer = a[58:86]
        tol = 0.02 * np.linalg.norm(pts[58:86] - pts[58], axis=1).max()
        assert a[58, 0] <= outer[:, 0].min() + tol, name  # 58 is the left corner
        assert (np.diff(a[58:72, 0]) > 0).all(), name  # upper outer: left -> right
        assert (np.diff(a[72:86, 0]) < 0).all(), name  # lower outer: right -> left
        assert a[72, 0] >= outer[:, 0].max() - tol, name  # 72 at the right corner
        assert (np.diff(a[86:100, 0]) > 0).all() and (np.diff(a[100:114, 0]) < 0).all(), name
        assert a[65, 1] < a[79, 1], name  # upper lip above lower lip in the middle
        assert a[93, 1] <= a[107, 1] + 0.02, name  # inner upper not below inner lower (same x)
        # eyes: image-right eye (114 inner, 124 outer) right of the image-left eye (134 inner, 144 outer)
        assert a[144, 0] < a[134, 0] < a[114, 0] < a[124, 0], name
        assert a[119, 1] < a[129, 1] and a[139, 1] < a[149, 1], name  # upper lid above lower lid
        assert a[114:134, 1].mean() < a[58:86, 1].mean(), name  # eyes above the mouth
        assert a[20, 1] > a[58:86, 1].max(), name  # chin below the mouth


def test_mouth_pixels_are_lip_coloured(records):
    """The outer lip polygon (58..85, without the inner mouth: teeth and a dark cavity could average
    out to anything) is clearly unlike the skin just outside it."""
    for name, pts, img, _ in records:
        outer = pts[58:86]
        inside = _poly_mask(img.shape[:2], outer) & ~_poly_mask(img.shape[:2], pts[86:114])
        width = np.linalg.norm(outer - outer[0], axis=1).max()
        k = max(3, int(round(0.12 * width)))
        grown = cv2.dilate(inside.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
        gap = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        ring = grown & ~gap  # skin just outside the lips, skipping the anti-aliased edge
        diff = img[inside].astype(float).mean(0) - img[ring].astype(float).mean(0)
        assert np.linalg.norm(diff) > 12, (name, diff)


def test_inner_mouth_matches_state(records):
    seen = set()
    for name, pts, img, state in records:
        outer_area = _area(pts[58:86])
        inner = pts[86:114]
        inner_area = _area(inner)
        if state == "closed":
            assert inner_area < 0.01 * outer_area, name  # inner contours coincide
        if state in ("open", "laugh"):
            assert inner_area > 0.15 * outer_area, name
            mouth = _poly_mask(img.shape[:2], inner)
            lips = _poly_mask(img.shape[:2], pts[58:86]) & ~mouth
            if state == "open":  # a dark inner mouth
                assert img[mouth].mean() < img[lips].mean(), name
            seen.add(state)
        if state == "pursed":  # narrow and round: tall relative to the width
            a = _aligned(pts)[58:86]
            assert np.ptp(a[:, 1]) > 0.45 * np.ptp(a[:, 0]), name
    assert seen == {"open", "laugh"}


def test_deterministic_and_seed_dependent(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    generate_synthetic_dataset(again, N_TRAIN, N_TEST, image_size=SIZE, seed=3, progress=False)
    for n in range(1, N_TRAIN + N_TEST + 1):
        assert (again / "annotation" / f"{n}.txt").read_bytes() == (out / "annotation" / f"{n}.txt").read_bytes()
    for p in (out / "images").iterdir():
        assert np.array_equal(cv2.imread(str(p)), cv2.imread(str(again / "images" / p.name)))
    assert (again / "states.csv").read_bytes() == (out / "states.csv").read_bytes()

    # image i does not depend on how many images are generated
    small = tmp_path / "small"
    generate_synthetic_dataset(small, 2, 1, image_size=SIZE, seed=3, progress=False)
    for n in range(1, 4):
        assert (small / "annotation" / f"{n}.txt").read_bytes() == (out / "annotation" / f"{n}.txt").read_bytes()

    other = tmp_path / "other"
    generate_synthetic_dataset(other, 2, 1, image_size=SIZE, seed=4, progress=False)
    for n in range(1, 4):
        assert (other / "annotation" / f"{n}.txt").read_bytes() != (out / "annotation" / f"{n}.txt").read_bytes()
    assert not np.array_equal(
        cv2.imread(str(other / "images" / "synth_00000.jpg")), cv2.imread(str(out / "images" / "synth_00000.jpg"))
    )


def test_render_face_matches_files(records):
    name, pts, _, state = records[4]
    img, p, st = render_face(3, 4, SIZE)
    assert st == state and p.dtype == np.float32 and img.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(p, pts, atol=0.006)


def test_rotation_varies(records):
    angles = []
    for _, pts, _, _ in records:
        d = pts[124] - pts[144]
        angles.append(np.degrees(np.arctan2(d[1], d[0])))
    assert max(np.abs(angles)) <= 15.5 and np.ptp(angles) > 5


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "x", 0, 0, progress=False)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path / "y", 1, 1, image_size=16, progress=False)
