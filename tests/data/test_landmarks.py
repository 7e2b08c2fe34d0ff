from __future__ import annotations

import numpy as np
import pytest

from lipseg.data.landmarks import BLOCK, flip_lips, flip_permutation, mouth_width, mouth_widths, respace_lips


def ellipse_lips(width: float = 40.0, upper: float = 8.0, lower: float = 10.0, gap: float = 3.0) -> np.ndarray:
    """56 Helen-ordered lip points of an elliptical mouth centred at the origin (Helen spacing)."""
    top = np.linspace(np.pi, 0, 15)[:14]  # left corner -> just before the right corner
    bottom = np.linspace(0, np.pi, 15)[:14]  # right corner -> just before the left corner
    half = width / 2
    outer = np.vstack(
        [np.c_[half * np.cos(top), -upper * np.sin(top)], np.c_[half * np.cos(bottom), lower * np.sin(bottom)]]
    )
    inner = np.vstack(
        [np.c_[0.7 * half * np.cos(top), -gap * np.sin(top)], np.c_[0.7 * half * np.cos(bottom), gap * np.sin(bottom)]]
    )
    return np.vstack([outer, inner]).astype(np.float32)


def test_respace_keeps_corners_and_even_spacing() -> None:
    lips = ellipse_lips()
    canonical = respace_lips(lips)
    assert canonical.shape == (56, 2)
    np.testing.assert_allclose(canonical[0], lips[0], atol=1e-5)  # left corner kept
    np.testing.assert_allclose(canonical[13], [20.0, 0.0], atol=1e-4)  # right corner is the farthest point
    steps = np.linalg.norm(np.diff(canonical[:BLOCK], axis=0), axis=1)
    assert steps.std() / steps.mean() < 0.1  # evenly spaced along the upper contour


def test_flip_is_an_involution_and_maps_a_symmetric_mouth_onto_itself() -> None:
    canonical = respace_lips(ellipse_lips())
    np.testing.assert_allclose(flip_lips(flip_lips(canonical)), canonical, atol=1e-6)
    # A left-right symmetric mouth is its own mirror image once the indices are remapped.
    np.testing.assert_allclose(flip_lips(canonical), canonical, atol=0.3)
    # ... and the remapping matters: negating x without it is wrong.
    mirrored_only = canonical * np.array([-1, 1], np.float32)
    assert np.abs(mirrored_only - canonical).max() > 10


def test_flip_permutation_reverses_each_block() -> None:
    permutation = flip_permutation()
    assert sorted(permutation.tolist()) == list(range(56))
    assert permutation[0] == 13 and permutation[14] == 27 and permutation[28] == 41 and permutation[42] == 55


def test_mouth_width_matches_batch_version() -> None:
    lips = ellipse_lips(width=50)
    assert mouth_width(lips) == pytest.approx(mouth_widths(lips[None])[0])
    assert mouth_width(lips) == pytest.approx(np.linalg.norm(lips[:28] - lips[0], axis=1).max())


def test_respace_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="56"):
        respace_lips(np.zeros((20, 2)))
