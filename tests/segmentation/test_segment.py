"""Segmenter crops, loss, training with the one fit loop, pretrained weights and paste-back
(lipseg.segmentation), on generated images and the synthetic set."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lipseg.core.fit import FitConfig, fit
from lipseg.data.crops import Jitter, LocatorSpread, SegmentCrops, channel_normalisation, images_to_tensor
from lipseg.data.geometry import CropGeometry, apply_affine, crop_pixel_transform, image_to_crop_transform
from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.masks import label_mask_from_lips
from lipseg.evaluation.pixels import PixelCounts
from lipseg.segmentation.crops import make_parts_crops, make_segment_crops
from lipseg.segmentation.loss import LossWeights, segmentation_loss
from lipseg.segmentation.model import SegmenterNet, load_pretrained, load_segmenter
from lipseg.segmentation.nets import SegmenterConfig
from lipseg.segmentation.runner import SegmenterRunner, paste_probabilities
from lipseg.segmentation.training import SegmentationTask


def segment_jitter(
    copies: int, rotate_deg: float = 10.0, brightness: float = 0.2, min_shift: float = 0.02, min_scale: float = 0.03
) -> Jitter:
    """The segment_crops stage's jitter: box shift and scale from the measured spread, floored."""
    return Jitter(
        copies=copies, shift=min_shift, scale=min_scale, rotate_deg=rotate_deg, brightness=brightness, flip=False
    )


def one_hot(mask: np.ndarray) -> np.ndarray:
    return np.eye(4, dtype=np.float32)[mask].transpose(2, 0, 1)  # (4, S, S)


@pytest.fixture(scope="module")
def records(synthetic_dir: Path) -> list:
    return load_split(synthetic_dir, "train")[0]


def test_plain_crop_masks_paste_back_onto_the_image_mask_without_a_pixel_shift(records: list) -> None:
    """Crop labels drawn in crop pixels, pasted into the photo, land on the photo's own labels; at scale 1
    exactly, pixel for pixel (a half-pixel slip in the convention would break that)."""
    record = records[0]
    image = cv2.imread(str(record.image_path))
    zoom = 4  # a mouth some 50 px wide, so class centroids are not dominated by edge pixels
    height, width = image.shape[0] * zoom, image.shape[1] * zoom
    lips = (record.points[HELEN_LIPS] + 0.5) * zoom - 0.5  # integer coordinates are pixel centres
    truth = label_mask_from_lips(lips, height, width)
    for size in (64, 96, 160):
        geometry = CropGeometry(size, 0.5)
        transform = image_to_crop_transform(*geometry.box(lips))
        crop_mask = label_mask_from_lips(apply_affine(crop_pixel_transform(transform, size), lips), size, size)
        pasted = paste_probabilities(one_hot(crop_mask)[None], transform[None], height, width)
        counts = PixelCounts()
        counts.add(pasted, truth)
        assert counts.pooled()["lips"]["f1"] > 0.9, size
    assert pasted[truth == 0].mean() < 0.05  # nothing outside the mouth

    # At scale 1 with the crop's pixel centres on the photo's, paste-back must be exact: a crop pixel u
    # is photo pixel x0 + u when the box centre is x0 + (S - 1) / 2.
    size, x0, y0 = 96, int(lips[:, 0].min()) - 20, int(lips[:, 1].min()) - 30
    transform = image_to_crop_transform(np.array([x0 + (size - 1) / 2, y0 + (size - 1) / 2]), float(size))
    window = truth[y0 : y0 + size, x0 : x0 + size]
    pasted = paste_probabilities(one_hot(window)[None], transform[None], height, width)
    assert np.array_equal(pasted[y0 : y0 + size, x0 : x0 + size], window) and (pasted > 0).sum() == (window > 0).sum()


def test_paste_back_keeps_background_outside_the_crop_and_lets_the_surer_face_win() -> None:
    probabilities = np.zeros((2, 4, 8, 8), np.float32)
    probabilities[0, 1] = 0.6  # face 0: upper lip everywhere, fairly sure
    probabilities[0, 0] = 0.4
    probabilities[1, 3] = 0.9  # face 1 (same place): lower lip, surer
    probabilities[1, 0] = 0.1
    transform = image_to_crop_transform(np.array([20.0, 20.0]), 8.0)
    mask = paste_probabilities(probabilities, np.stack([transform, transform]), 40, 40)
    assert (mask[17:23, 17:23] == 3).all()
    assert (mask[:10] == 0).all() and (mask[:, 30:] == 0).all()
    only_first = paste_probabilities(probabilities[:1], transform[None], 40, 40)
    assert (only_first[17:23, 17:23] == 1).all()


def test_segment_crops_jitter_follows_the_locator_spread(records: list) -> None:
    geometry = CropGeometry(48, 0.5)
    plain = make_segment_crops(records[:4], geometry, LocatorSpread(), None, progress=False)
    assert len(plain) == 4 and plain.masks.shape == (4, 48, 48) and set(np.unique(plain.masks)) <= {0, 1, 2, 3}
    lip_pixels = (plain.masks == 1) | (plain.masks == 3)
    assert lip_pixels.mean() > 0.05
    # Plain crops are centred on the mouth; a spread with a mean shift moves the mouth off centre.
    shifted = make_segment_crops(
        records[:4],
        geometry,
        LocatorSpread(shift_x_mean=0.2),
        segment_jitter(1, rotate_deg=0, brightness=0, min_shift=1e-6, min_scale=1e-6),
        progress=False,
    )
    assert len(shifted) == 8 and list(shifted.copy_index) == [0, 1] * 4
    centre_x = [np.argwhere(mask > 0)[:, 1].mean() for mask in shifted.masks]
    assert all(
        centre_x[index + 1] < centre_x[index] - 0.1 * 48 for index in range(0, 8, 2)
    )  # box moved right: mouth moves left


def test_loss_is_small_for_right_logits_and_ignores_ignore_pixels() -> None:
    labels = torch.randint(0, 4, (2, 16, 16))
    right = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 20
    wrong = right.roll(1, dims=1)
    weights = LossWeights(1.0, 1.0, 1.0)
    assert segmentation_loss(right, labels, weights) < 0.05 < segmentation_loss(wrong, labels, weights)
    ignored = labels.clone()
    ignored[:, :4] = 255
    logits = torch.randn(2, 4, 16, 16)
    logits_changed = logits.clone()
    logits_changed[:, :, :4] = torch.randn(2, 4, 4, 16)  # predictions on ignored pixels do not matter
    assert torch.isclose(
        segmentation_loss(logits, ignored, weights), segmentation_loss(logits_changed, ignored, weights)
    )
    assert not torch.isclose(
        segmentation_loss(logits, labels, weights), segmentation_loss(logits_changed, labels, weights)
    )


def test_training_learns_resumes_and_the_folder_round_trips(records: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    geometry = CropGeometry(32, 0.5)
    jitter = segment_jitter(2, min_shift=0.02, min_scale=0.03)
    train = make_segment_crops(records[:20], geometry, LocatorSpread(), jitter, progress=False)
    val = make_segment_crops(records[20:26], geometry, LocatorSpread(), None, progress=False)
    model = SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3))
    model.set_normalisation(*channel_normalisation(train.images))
    config = FitConfig(
        optimizer="adamw",
        lr=5e-3,
        weight_decay=1e-4,
        batch_size=16,
        max_epochs=6,
        patience=6,
        lr_patience=3,
        device="cpu",
    )
    checkpoint = tmp_path / "last.safetensors"

    def fit_segmenter(module: SegmenterNet, crops: SegmentCrops):
        task = SegmentationTask(LossWeights(1.0, 1.0, 0.0), val)
        return fit(
            module,
            images_to_tensor(crops.images),
            torch.from_numpy(crops.masks),
            task,
            config,
            checkpoint,
            progress=False,
        )

    result = fit_segmenter(model, train)
    assert len(result.history) == 6 and result.best_value == max(r["val_f1_lips"] for r in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    torch.manual_seed(0)  # the same starting weights: the finished checkpoint is taken as it is
    same_start = SegmenterNet(model.config)
    same_start.set_normalisation(*channel_normalisation(train.images))
    again = fit_segmenter(same_start, train)
    assert again.resumed_from_epoch == 6 and len(again.history) == 6  # finished: nothing retrained
    # Other crops of the same shape must not resume that checkpoint (the digest covers the contents).
    torch.manual_seed(0)
    other_start = SegmenterNet(model.config)
    other_start.set_normalisation(*channel_normalisation(train.images))
    flipped = SegmentCrops(
        train.images[:, :, ::-1].copy(), train.masks[:, :, ::-1].copy(), train.names, train.copy_index
    )
    fresh_fit = fit_segmenter(other_start, flipped)
    assert fresh_fit.resumed_from_epoch == 0 and len(fresh_fit.history) == 6

    folder = tmp_path / "unet"
    model.save(folder, geometry.to_dict(), extra={"train_minutes": 0.1})
    loaded, loaded_geometry, meta = load_segmenter(folder)
    assert loaded_geometry == geometry and meta["parameters"] > 0 and meta["config"]["arch"] == "unet"
    batch = torch.from_numpy(val.images[:2]).permute(0, 3, 1, 2).float()
    model.eval()
    assert torch.equal(model(batch), loaded(batch))
    fresh = SegmenterNet(model.config)
    loaded_count, skipped = load_pretrained(fresh, folder / "model.safetensors")
    assert skipped == [] and loaded_count == len(fresh.network.state_dict())
    fresh.eval()
    assert torch.equal(fresh.network(batch), model.network(batch))
    other_head = SegmenterNet(SegmenterConfig(arch="unet", input_size=32, width=8, depth=3, num_classes=3))
    loaded_count, skipped = load_pretrained(other_head, folder / "model.safetensors")
    assert skipped and loaded_count == len(other_head.network.state_dict()) - len(
        skipped
    )  # only the class head differs


def test_runner_labels_each_face_crop_and_nothing_without_faces(records: list, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SegmenterNet(SegmenterConfig(arch="pspnet", input_size=32, width=8, depth=3))
    model.save(tmp_path / "m", CropGeometry(32, 0.5).to_dict())
    runner = SegmenterRunner(tmp_path / "m", flip_average=True)
    image = cv2.imread(str(records[0].image_path))
    assert not runner.label_mask(image, []).any()
    mask = runner.label_mask(image, [records[0].points[HELEN_LIPS]])
    assert mask.shape == image.shape[:2] and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3}


def test_parts_crops_take_the_box_from_the_labelled_mouth(tmp_path: Path) -> None:
    from lipseg.data.faceparts import DEFAULT_CLASS_TABLES, list_records

    root = tmp_path / "lapa"
    for sub in ("images", "labels", "landmarks"):
        (root / "train" / sub).mkdir(parents=True)
    image = np.full((120, 100, 3), 90, np.uint8)
    labels = np.ones((120, 100), np.uint8)  # skin
    labels[60:66, 30:70], labels[66:70, 34:66], labels[70:78, 30:70] = 7, 8, 9  # upper lip, inner mouth, lower lip
    cv2.imwrite(str(root / "train/images/a.jpg"), image)
    cv2.imwrite(str(root / "train/labels/a.png"), labels)
    (root / "train/landmarks/a.txt").write_text("106\n" + "".join(f"{i} {i}\n" for i in range(106)))
    parts, rejects = list_records("lapa", root, "train")
    crops = make_parts_crops(
        parts, DEFAULT_CLASS_TABLES["lapa"], CropGeometry(40, 0.5), LocatorSpread(), None, progress=False
    )
    assert not rejects and len(crops) == 1
    mask = crops.masks[0]
    assert set(np.unique(mask)) == {0, 1, 2, 3}  # skin maps to background
    rows = np.argwhere(mask > 0)[:, 0]
    assert abs(rows.mean() - 19.5) < 2  # the mouth is centred in the crop
    assert (
        np.argwhere(mask == 1)[:, 0].mean() < np.argwhere(mask == 2)[:, 0].mean() < np.argwhere(mask == 3)[:, 0].mean()
    )


def test_crops_of_the_same_records_are_reproducible(records: list) -> None:
    geometry, jitter = CropGeometry(32, 0.5), segment_jitter(2)
    first = make_segment_crops(records[:3], geometry, LocatorSpread(), jitter, seed=3, progress=False)
    second = make_segment_crops(records[:3], geometry, LocatorSpread(), jitter, seed=3, progress=False)
    for key, value in first.arrays().items():
        assert np.array_equal(value, second.arrays()[key]), key
    assert isinstance(SegmentCrops.from_arrays(first.arrays()), SegmentCrops)
