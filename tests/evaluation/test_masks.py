"""Tests for lipseg.masks: polygons, rasterisation (incl. parity with the official scorer), overlays."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from lipseg.data.labels import INNER_MOUTH, LOWER_LIP, UPPER_LIP
from lipseg.data.landmarks import LIP_COUNT
from lipseg.evaluation.masks import label_mask_from_faces, label_mask_from_lips, lip_polygons, rasterise_polygons
from lipseg.evaluation.overlays import crop_around, overlay, overlay_grid


def synthetic_lips(
    centre_x: float = 50.0,
    centre_y: float = 40.0,
    half_width: float = 20.0,
    opening: float = 4.0,
    jitter: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """56 Helen-ordered lip points of an elliptical mouth; opening=0 gives a closed mouth."""
    angles = np.linspace(0.0, np.pi, 15)[:14]  # 14 points per block, the right corner left out
    reverse = np.pi - angles

    def arc(half_w: float, half_h: float, t: np.ndarray) -> np.ndarray:
        return np.stack([centre_x - half_w * np.cos(t), centre_y + half_h * np.sin(t)], axis=1)

    upper_outer = arc(half_width, -0.35 * half_width, angles)
    lower_outer = arc(half_width, 0.45 * half_width, reverse)
    upper_inner = arc(0.8 * half_width, -opening, angles)
    lower_inner = arc(0.8 * half_width, opening, reverse)
    lips = np.vstack([upper_outer, lower_outer, upper_inner, lower_inner])
    if jitter:
        lips = lips + np.random.default_rng(seed).normal(0.0, jitter, lips.shape)
    return lips


def polygon_area(polygon: np.ndarray) -> float:
    """Unsigned shoelace area."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ----------------------------------------------------------------------------------------------------
# Polygons
def test_polygons_tile_the_outer_contour_without_overlap() -> None:
    lips = synthetic_lips(opening=5.0)
    upper, inner, lower = lip_polygons(lips)
    outer_area = polygon_area(lips[:28])
    parts = polygon_area(upper) + polygon_area(inner) + polygon_area(lower)
    assert parts == pytest.approx(outer_area, rel=1e-9)  # no gap and no overlap
    assert len(upper) == 14 + 2 + 14 and len(lower) == 2 + 14 + 2 + 14 and len(inner) == 28

    # On pixels: the three classes together are exactly the fill of the outer contour (no gap inside),
    # and the area is the geometric one up to boundary pixels.
    height, width = 80, 100
    whole = label_mask_from_lips(lips, height, width)
    outer_only = rasterise_polygons([lips[:28]], height, width) > 0
    np.testing.assert_array_equal(whole > 0, outer_only)
    assert np.count_nonzero(whole) == pytest.approx(outer_area, rel=0.1)
    assert {UPPER_LIP, INNER_MOUTH, LOWER_LIP} <= set(np.unique(whole).tolist())


def test_polygon_order_follows_evaluation_md() -> None:
    lips = synthetic_lips(jitter=0.3)
    upper, inner, lower = lip_polygons(lips)
    right_outer = (lips[13] + lips[14]) / 2
    right_inner = (lips[41] + lips[42]) / 2
    np.testing.assert_array_equal(upper[:14], lips[0:14])
    np.testing.assert_array_equal(upper[14], right_outer)
    np.testing.assert_array_equal(upper[15], right_inner)
    np.testing.assert_array_equal(upper[16:], lips[41:27:-1])
    np.testing.assert_array_equal(lower[0], right_outer)
    np.testing.assert_array_equal(lower[1:15], lips[14:28])
    np.testing.assert_array_equal(lower[15], lips[0])
    np.testing.assert_array_equal(lower[16], lips[28])
    np.testing.assert_array_equal(lower[17:31], lips[55:41:-1])
    np.testing.assert_array_equal(lower[31], right_inner)
    np.testing.assert_array_equal(inner, lips[28:56])
    with pytest.raises(ValueError):
        lip_polygons(lips[:50])


def test_closed_mouth_has_empty_inner_mouth() -> None:
    lips = synthetic_lips(opening=0.0)
    mask = label_mask_from_lips(lips, 80, 100)
    assert polygon_area(lip_polygons(lips)[1]) == pytest.approx(0.0, abs=1e-9)
    assert not np.any(mask == INNER_MOUTH)
    assert np.any(mask == UPPER_LIP) and np.any(mask == LOWER_LIP)


# ----------------------------------------------------------------------------------------------------
# Rasterisation, independent of lipeval
def rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


@pytest.mark.parametrize("supersample", [4, 8])
def test_axis_aligned_rectangles_give_exact_pixel_counts(supersample: int) -> None:
    # Pixel j covers [j - 0.5, j + 0.5): x in [10.5, 20.5] is exactly the 10 pixels 11..20.
    # (cv2.fillPoly keeps boundary samples on the right/bottom edge, so with supersample=2 such a
    # rectangle gains a column and a row; lipeval has the same bias, so we keep it.)
    upper = rectangle(10.5, 5.5, 20.5, 8.5)  # rows 6..8
    inner = rectangle(10.5, 8.5, 20.5, 9.5)  # row 9
    lower = rectangle(10.5, 9.5, 20.5, 12.5)  # rows 10..12
    mask = rasterise_polygons([upper, inner, lower], 30, 40, supersample)
    assert mask.dtype == np.uint8 and mask.shape == (30, 40)
    assert np.count_nonzero(mask == UPPER_LIP) == 30
    assert np.count_nonzero(mask == INNER_MOUTH) == 10
    assert np.count_nonzero(mask == LOWER_LIP) == 30
    assert np.all(mask[6:9, 11:21] == UPPER_LIP)
    assert np.all(mask[9, 11:21] == INNER_MOUTH)
    assert np.all(mask[10:13, 11:21] == LOWER_LIP)


def test_half_coverage_rule_on_fractional_edges() -> None:
    # Left edge 10.3 covers 20% of pixel 10 (out); right edge 20.3 covers 80% of pixel 20 (in).
    mask = rasterise_polygons([rectangle(10.3, 4.5, 20.3, 6.5)], 12, 30)
    assert np.count_nonzero(mask) == 20
    assert np.all(mask[5:7, 11:21] == UPPER_LIP)


def test_overlapping_polygons_take_the_class_covering_most() -> None:
    # Upper covers rows 3..4, lower rows 4..7 in part: row 4 is covered fully by both -> tie -> upper.
    upper = rectangle(2.5, 2.5, 8.5, 4.5)
    lower = rectangle(2.5, 3.5, 8.5, 7.5)
    mask = rasterise_polygons([upper, np.zeros((0, 2)), lower], 12, 12)
    assert np.all(mask[3:5, 3:9] == UPPER_LIP)
    assert np.all(mask[5:8, 3:9] == LOWER_LIP)


def test_rasterise_clips_to_image_and_rejects_bad_coordinates() -> None:
    partly_outside = rasterise_polygons([rectangle(-5.5, -3.5, 4.5, 2.5)], 10, 10)
    assert np.count_nonzero(partly_outside) == 5 * 3  # columns 0..4, rows 0..2
    assert not np.any(rasterise_polygons([rectangle(50.5, 50.5, 60.5, 60.5)], 10, 10))
    bad = synthetic_lips()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError):
        label_mask_from_lips(bad, 80, 100)
    bad[3, 0] = np.inf
    with pytest.raises(ValueError):
        label_mask_from_lips(bad, 80, 100)


def test_several_faces_in_one_mask() -> None:
    left = synthetic_lips(centre_x=30.0, half_width=12.0)
    right = synthetic_lips(centre_x=90.0, half_width=12.0)
    combined = label_mask_from_faces([left, right], 70, 120)
    single_left = label_mask_from_lips(left, 70, 120)
    single_right = label_mask_from_lips(right, 70, 120)
    np.testing.assert_array_equal(combined, np.maximum(single_left, single_right))
    assert not np.any(label_mask_from_faces([], 70, 120))


# ----------------------------------------------------------------------------------------------------
# Rasterisation parity with the official scorer
def random_mouths(count: int, seed: int) -> list[np.ndarray]:
    """Varied mouths: open, closed, tiny, at or beyond the image border, and pure noise."""
    rng = np.random.default_rng(seed)
    mouths = []
    for index in range(count):
        if index % 5 == 4:
            mouths.append(rng.uniform(-5, 70, (LIP_COUNT, 2)))  # self-intersecting garbage
            continue
        mouths.append(
            synthetic_lips(
                centre_x=float(rng.uniform(-10, 80)),
                centre_y=float(rng.uniform(-10, 70)),
                half_width=float(rng.uniform(1.5, 30)),
                opening=float(rng.uniform(0, 6)) if index % 2 else 0.0,
                jitter=float(rng.uniform(0, 1.0)),
                seed=index,
            )
        )
    return mouths


@pytest.mark.helen
@pytest.mark.parametrize("supersample", [1, 2, 4])
def test_rasterisation_equals_lipeval(supersample: int, lipeval: ModuleType) -> None:
    height, width = 64, 72
    for lips in random_mouths(60, seed=supersample):
        ours = label_mask_from_lips(lips, height, width, supersample)
        reference = lipeval.rasterise(lipeval.helen_lip_polygons(lips), height, width, supersample)
        np.testing.assert_array_equal(ours, reference)
        for our_polygon, their_polygon in zip(lip_polygons(lips), lipeval.helen_lip_polygons(lips)):
            np.testing.assert_array_equal(our_polygon, their_polygon)


# ----------------------------------------------------------------------------------------------------
# Overlays
def test_overlay_changes_only_pixels_near_the_mouth() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    lips = synthetic_lips(centre_x=60, centre_y=45, half_width=18, opening=4)
    mask = label_mask_from_lips(lips, 90, 120)
    drawn = overlay(image, mask, lips)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.shares_memory(drawn, image)
    changed = np.any(drawn != image, axis=2)
    assert changed.sum() > 0.5 * np.count_nonzero(mask)
    ys, xs = np.nonzero(changed)
    margin = 3
    assert xs.min() >= lips[:, 0].min() - margin and xs.max() <= lips[:, 0].max() + margin
    assert ys.min() >= lips[:, 1].min() - margin and ys.max() <= lips[:, 1].max() + margin
    # Without points and with alpha 0 nothing changes.
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.0), image)
    # Grey input comes back as BGR of the same height and width.
    assert overlay(image[:, :, 0], mask).shape == image.shape


def test_overlay_draws_every_face_given() -> None:
    image = np.zeros((90, 200, 3), np.uint8)
    left = synthetic_lips(centre_x=50, centre_y=45, half_width=18, opening=4)
    right = synthetic_lips(centre_x=150, centre_y=45, half_width=18, opening=4)
    empty = np.zeros((90, 200), np.uint8)
    both = np.any(overlay(image, empty, [left, right]) != 0, axis=2)
    assert both[:, :100].any() and both[:, 100:].any()
    # One face as (56, 2) draws exactly what the same face in a list of one draws.
    np.testing.assert_array_equal(overlay(image, empty, left), overlay(image, empty, [left]))
    assert not np.any(overlay(image, empty, np.zeros((20, 2))))  # not lip points: nothing drawn


def test_crop_around_zooms_on_the_points() -> None:
    image = np.arange(100 * 150, dtype=np.uint32).reshape(100, 150).astype(np.uint8)
    points = np.array([[60.0, 40.0], [80.0, 50.0]])
    crop, (x0, y0) = crop_around(image, points, margin=0.5)
    assert crop.shape[0] == crop.shape[1]  # square away from the border
    assert x0 <= 60 and y0 <= 40 and x0 + crop.shape[1] > 80 and y0 + crop.shape[0] > 50
    np.testing.assert_array_equal(crop, image[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]])
    corner_crop, (cx0, cy0) = crop_around(image, np.array([[1.0, 1.0], [5.0, 4.0]]), margin=1.0)
    assert (cx0, cy0) == (0, 0) and corner_crop.size > 0


def test_overlay_grid_shape_and_captions() -> None:
    tiles = [np.full((40 + 10 * k, 60, 3), 30 * k, np.uint8) for k in range(5)]
    tiles[1] = tiles[1][:, :, 0]  # a grey tile is accepted
    grid = overlay_grid(tiles, columns=3, tile_size=64, captions=None)
    assert grid.shape == (2 * 64, 3 * 64, 3) and grid.dtype == np.uint8
    assert not np.any(grid[64:, 128:])  # the sixth cell stays empty
    captioned = overlay_grid(tiles, columns=3, tile_size=64, captions=[f"img {k}" for k in range(5)])
    assert captioned.shape == grid.shape and np.any(captioned != grid)
    assert overlay_grid([], columns=4, tile_size=32, captions=None).shape == (32, 128, 3)
    with pytest.raises(ValueError):
        overlay_grid(tiles, columns=3, tile_size=64, captions=["only one"])
