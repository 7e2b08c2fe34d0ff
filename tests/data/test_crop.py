from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.crops import Jitter, normalisation_images, split_train_val
from lipseg.data.geometry import CropGeometry, apply_affine, crop_to_image, image_to_crop_transform, warp_crop
from lipseg.data.helen import Record, load_split
from lipseg.data.landmarks import HELEN_LIPS, flip_lips, mouth_width, respace_lips
from lipseg.tcnn.crops import make_crops


def test_box_scales_with_mouth_size() -> None:
    geometry = CropGeometry(size=40, margin=0.25)
    lips = np.zeros((56, 2), np.float32)
    lips[:28, 0] = np.linspace(100, 140, 28)
    lips[:28, 1] = 50 + 5 * np.sin(np.linspace(0, 2 * np.pi, 28))
    centre, side = geometry.box(lips)
    np.testing.assert_allclose(centre, [120, 50], atol=0.2)
    assert side == pytest.approx(40 * 1.5)
    _, doubled = geometry.box(lips * 2)
    assert doubled == pytest.approx(2 * side)


@pytest.mark.parametrize("angle", [0.0, 0.3])
@pytest.mark.parametrize("flip", [False, True])
def test_transform_round_trip(angle: float, flip: bool) -> None:
    transform = image_to_crop_transform(np.array([80.0, 60.0]), 50.0, angle, flip)
    points = np.random.default_rng(1).uniform(40, 120, (20, 2)).astype(np.float32)
    np.testing.assert_allclose(crop_to_image(apply_affine(transform, points), transform), points, atol=1e-3)
    np.testing.assert_allclose(apply_affine(transform, np.array([[80.0, 60.0]])), [[0.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("side", [30.0, 200.0])  # upscaling and area-averaged downscaling paths
def test_warp_puts_an_image_point_where_the_transform_says(side: float) -> None:
    image = np.zeros((400, 400, 3), np.uint8)
    marker = np.array([205.0, 196.0])
    cv2.circle(image, (205, 196), 3, (255, 255, 255), -1)
    transform = image_to_crop_transform(np.array([200.0, 200.0]), side, 0.2)
    crop = warp_crop(image, transform, 40)
    expected = apply_affine(transform, marker[None])[0] * 40 + 19.5
    weights = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:40, :40]
    found = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
    np.testing.assert_allclose(found, expected, atol=0.6)


def test_flipped_crop_points_follow_the_pixels(synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "train")
    record = records[0]
    augmentation = Jitter(copies=12, shift=0.0, scale=0.0, rotate_deg=0.0, brightness=0.0, flip=True)
    crops = make_crops([record], CropGeometry(), augmentation, seed=3, progress=False)
    assert crops.flipped.any() and (~crops.flipped).any()
    plain = crops.images[0]
    flipped_index = int(np.flatnonzero(crops.flipped)[0])
    # With no other jitter, a flipped crop is the plain crop mirrored, and so are its points.
    np.testing.assert_array_equal(crops.images[flipped_index], plain[:, ::-1])
    np.testing.assert_allclose(crops.lips[flipped_index], flip_lips(crops.lips[0]), atol=1e-4)
    # The left corner (index 0) is still the leftmost outer point after the flip.
    assert crops.lips[flipped_index][0, 0] == crops.lips[flipped_index][:28, 0].min()


def test_crop_points_map_back_to_the_annotation(synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "test")
    crops = make_crops(records, CropGeometry(), None, progress=False)
    assert len(crops) == len(records)
    for index, record in enumerate(records):
        back = crop_to_image(crops.lips[index], crops.image_to_crop[index])
        np.testing.assert_allclose(back, respace_lips(record.points[HELEN_LIPS]), atol=1e-3)
        width = mouth_width(crops.lips[index])
        assert 1 / 1.8 < width < 1 / 1.6  # margin 0.35 each side: the mouth spans ~1/1.7 of the crop


def test_unreadable_image_is_rejected_not_dropped(tmp_path: Path, synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "train")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    bad = Record("broken", broken, records[0].annotation_path, records[0].points)
    far = Record("far", records[1].image_path, records[1].annotation_path, records[1].points + 5000)
    crops = make_crops([records[0], bad, far], CropGeometry(), None, progress=False)
    assert len(crops) == 1
    assert {(r.name, r.reason) for r in crops.rejects} == {
        ("broken", "image cannot be decoded: unrecognised format (expected JPEG, PNG, BMP, GIF, TIFF, WebP or PNM)"),
        ("far", "lip points lie outside the image"),
    }


def test_split_is_deterministic_and_disjoint(synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "train")
    train, val = split_train_val(records, 0.2, seed=5)
    again_train, again_val = split_train_val(records, 0.2, seed=5)
    assert [r.name for r in val] == [r.name for r in again_val] and len(val) == 6
    assert not {r.name for r in train} & {r.name for r in val}
    assert len(train) + len(val) == len(records)


def test_normalisation_images() -> None:
    images = np.stack([np.full((4, 4, 3), value, np.uint8) for value in (10, 20, 30)])
    mean, std = normalisation_images(images)
    np.testing.assert_allclose(mean, 20.0)
    np.testing.assert_allclose(std, np.std([10, 20, 30]), rtol=1e-5)
    _, flat_std = normalisation_images(images[:1])
    assert flat_std.min() == 1.0  # a constant pixel does not divide by zero


def test_the_validation_split_keeps_the_faces_of_one_photo_together() -> None:
    from types import SimpleNamespace

    names = [f"{photo}_{face}" for photo in range(40) for face in range(1, 1 + photo % 3 + 1)] + [
        "synth_00001",
        "synth_00002",
    ]
    records = [SimpleNamespace(name=name) for name in names]
    train, val = split_train_val(records, 0.25, seed=1)
    train_photos = {record.name.rsplit("_", 1)[0] for record in train if not record.name.startswith("synth")}
    val_photos = {record.name.rsplit("_", 1)[0] for record in val if not record.name.startswith("synth")}
    assert train_photos and val_photos and not train_photos & val_photos
    assert len(train) + len(val) == len(records) and abs(len(val) - 0.25 * len(records)) <= 3
    # A name the pattern does not read (the synthetic faces' five digits) is a photo of its own.
    assert {record.name for record in train + val} >= {"synth_00001", "synth_00002"}
    multi = [name for name in names if name.endswith("_2")]
    assert multi and all(
        (name in {r.name for r in val}) == (name.replace("_2", "_1") in {r.name for r in val}) for name in multi
    )


def test_mirrored_copies_keep_the_annotations_frame(synthetic_dir: Path) -> None:
    """Annotations that sit `offset` mouth widths right of the content (Helen's do, by about 1 %) must label a
    mirrored copy as an annotator would label the mirrored photo: content + offset, to the right again.
    Mirroring the labels about the content's axis puts them offset to the left instead; a network trained on
    both learns the middle, and on unseen faces predicts ~offset left of the truth (the one-pixel leftward
    bias of the masks)."""
    from lipseg.data.crops import Jitter
    from lipseg.data.landmarks import HELEN_LIPS, flip_permutation, mouth_width, respace_lips

    record = load_split(synthetic_dir, "train")[0][0]
    content = respace_lips(record.points[HELEN_LIPS])  # the synthetic faces are drawn exactly on their points
    offset = 0.02
    shift = np.float32([offset * mouth_width(content), 0.0])
    shifted = Record(record.name, record.image_path, record.annotation_path, record.points.copy())
    shifted.points[HELEN_LIPS] += shift  # as a Helen annotator would have clicked them
    mirrors = Jitter(copies=12, shift=0.0, scale=0.0, rotate_deg=0.0, brightness=0.0, flip=True)
    for annotation_offset, right in ((offset, True), (0.0, False)):
        crops = make_crops(
            [shifted], CropGeometry(), mirrors, seed=3, progress=False, annotation_offset=annotation_offset
        )
        index = int(np.flatnonzero(crops.flipped)[0])
        transform = crops.image_to_crop[index]
        side = 1.0 / np.linalg.norm(transform[0, :2])
        # The mirrored view's annotation: its content (the mirrored drawing) plus the offset in its own frame.
        expected = (apply_affine(transform, content) + shift / side)[flip_permutation()]
        error = crops.lips[index] - expected
        if right:
            np.testing.assert_allclose(error, 0.0, atol=1e-5)
        else:  # about the content's axis: 2 offsets to the left
            np.testing.assert_allclose(error[:, 0], -2 * shift[0] / side, atol=1e-5)
    plain = crops.lips[int(np.flatnonzero(~crops.flipped)[0])]
    np.testing.assert_allclose(
        plain, apply_affine(crops.image_to_crop[0], content + shift), atol=1e-5
    )  # not mirrored: as annotated
