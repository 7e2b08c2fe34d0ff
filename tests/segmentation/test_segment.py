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
from lipseg.data.geometry import (
    CropGeometry,
    apply_affine,
    crop_pixel_transform,
    image_to_crop_transform,
    warp_crop,
)
from lipseg.data.helen import load_split
from lipseg.data.labels import IGNORE
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.masks import label_mask_from_lips
from lipseg.evaluation.pixels import PixelCounts
from lipseg.segmentation.crops import draw_crops, make_face_sources, make_parts_sources, make_segment_crops
from lipseg.segmentation.loss import LossWeights, segmentation_loss
from lipseg.segmentation.model import SegmenterNet, load_pretrained, load_segmenter
from lipseg.segmentation.nets import SegmenterConfig
from lipseg.segmentation.runner import SegmenterRunner, crop_probabilities, paste_probabilities
from lipseg.segmentation.training import OnlineSegmentationTask, SegmentationTask


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
    sources = make_parts_sources(parts, DEFAULT_CLASS_TABLES["lapa"], CropGeometry(40, 0.5), progress=False)
    assert not rejects and len(sources) == 1 and np.isnan(sources.lips).all()
    still = Jitter(copies=0, shift=0.0, scale=0.0, rotate_deg=0.0, brightness=0.0, flip=False)
    _, masks = draw_crops(
        sources, np.array([0]), 40, LocatorSpread(), still, np.array([[0, 0, 0, 0.5, 0.9, 0.5, 0.5, 0.5]])
    )
    mask = masks[0]
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


def test_online_crops_are_cut_anew_and_their_masks_follow_them(records: list) -> None:
    """Each draw cuts a fresh crop from the face's patch, with the label mask drawn from the transformed points;
    the same draws give the same crops, and a plain draw gives the plain crop."""
    geometry = CropGeometry(48, 0.5)
    sources = make_face_sources(records[:4], geometry, context=1.8, progress=False)
    assert sources.images.shape == (4, 86, 86, 3) and not np.isnan(sources.lips).any()
    plain = make_segment_crops(records[:4], geometry, LocatorSpread(), None, progress=False)
    still = Jitter(copies=0, shift=0.0, scale=0.0, rotate_deg=0.0, brightness=0.0, flip=False)
    draws = np.tile([0, 0, 0, 0.5, 0.9, 0.5, 0.5, 0.5], (4, 1))
    crops, masks = draw_crops(sources, np.arange(4), 48, LocatorSpread(), still, draws)
    assert np.abs(crops.astype(int) - plain.images.astype(int)).mean() < 3  # the patch holds the plain crop
    assert (masks == plain.masks).mean() > 0.99
    jitter = Jitter(copies=0, shift=0.05, scale=0.05, rotate_deg=10.0, brightness=0.2, flip=True)
    rng = np.random.default_rng(0)
    draws = np.concatenate([rng.normal(size=(4, 3)), rng.uniform(size=(4, 5))], axis=1)
    first, second = (
        draw_crops(sources, np.arange(4), 48, LocatorSpread(), jitter, draws),
        draw_crops(sources, np.arange(4), 48, LocatorSpread(), jitter, draws),
    )
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert not np.array_equal(first[0], crops)


def test_mirrored_online_masks_keep_the_annotations_frame(records: list) -> None:
    """With annotations `offset` mouth widths right of the content, a mirrored crop's mask lies 2 offsets right
    of the plain crop's mask mirrored (an annotator on the mirror image clicks right of its content too)."""
    geometry = CropGeometry(96, 0.5)
    sources = make_face_sources(records[:1], geometry, context=1.8, progress=False)
    mirror = Jitter(copies=0, shift=0.0, scale=0.0, rotate_deg=0.0, brightness=0.0, flip=True)
    draws = {flip: np.array([[0, 0, 0, 0.5, flip, 0.5, 0.5, 0.5]]) for flip in (0.9, 0.1)}  # not mirrored, mirrored
    offset = 0.05
    _, plain = draw_crops(sources, np.array([0]), 96, LocatorSpread(), mirror, draws[0.9], offset)
    _, mirrored = draw_crops(sources, np.array([0]), 96, LocatorSpread(), mirror, draws[0.1], offset)
    columns = np.arange(96)
    centre_of = lambda mask: float((columns * (mask > 0).sum(axis=0)).sum() / (mask > 0).sum())  # noqa: E731
    mouth_width_px = float((plain[0] > 0).any(axis=0).sum())
    moved = centre_of(mirrored[0]) - (95 - centre_of(plain[0]))
    assert abs(moved - 2 * offset * mouth_width_px) < 1.0


def test_online_training_resumes_to_the_same_weights(records: list, tmp_path: Path) -> None:
    """The loop's seeded generator draws every online crop, so a run killed after epoch 2 and resumed ends
    with the weights of the uninterrupted run."""
    geometry = CropGeometry(32, 0.5)
    sources = make_face_sources(records[:12], geometry, context=1.6, progress=False)
    val = make_segment_crops(records[12:16], geometry, LocatorSpread(), None, progress=False)
    jitter = Jitter(copies=0, shift=0.03, scale=0.05, rotate_deg=8.0, brightness=0.2, flip=True)
    config = FitConfig(optimizer="adamw", lr=5e-3, batch_size=4, max_epochs=4, patience=4, device="cpu")

    def run(checkpoint: Path, on_epoch=None) -> SegmenterNet:
        torch.manual_seed(0)
        model = SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=32, width=4, depth=3))
        model.set_normalisation(*channel_normalisation(sources.images))
        task = OnlineSegmentationTask(LossWeights(1.0, 1.0, 0.0), val, sources, 32, LocatorSpread(), jitter, 0.01)
        fit(model, torch.arange(12), torch.arange(12), task, config, checkpoint, on_epoch=on_epoch, progress=False)
        return model

    reference = run(tmp_path / "reference.safetensors")

    class Killed(Exception):
        pass

    def kill(record: dict) -> None:
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "resumed.safetensors", kill)
    resumed = run(tmp_path / "resumed.safetensors")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_the_boundary_weight_counts_errors_on_class_borders_more() -> None:
    from lipseg.segmentation.loss import class_borders

    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 6:10, 4:12] = 1  # an "upper lip" bar
    borders = class_borders(labels)[0]
    assert borders[6, 8] and borders[5, 8] and not borders[8, 8] and not borders[0, 0]
    right = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 5
    on_border, inside = right.clone(), right.clone()
    background = torch.tensor([5.0, 0.0, 0.0, 0.0])[:, None]
    on_border[0, :, 6, 4:12] = background  # wrong on the bar's top row (a border)
    inside[0, :, 8, 4:12] = background  # wrong on an inner row
    plain, weighted = LossWeights(1.0, 0.0, 0.0, 0.0), LossWeights(1.0, 0.0, 0.0, 4.0)
    assert torch.isclose(segmentation_loss(on_border, labels, plain), segmentation_loss(inside, labels, plain))
    assert segmentation_loss(on_border, labels, weighted) > 1.5 * segmentation_loss(inside, labels, weighted)


def test_distillation_pulls_the_student_toward_the_teachers_probabilities(records: list) -> None:
    from lipseg.segmentation.loss import distillation_loss

    labels = torch.zeros(2, 8, 8, dtype=torch.uint8)
    labels[1, :, :2] = IGNORE
    teacher = torch.softmax(torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float(distillation_loss(teacher.log(), teacher, labels)) == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, 4, 8, 8)
    assert float(distillation_loss(uniform, teacher, labels)) > 0.01
    changed = teacher.clone()
    changed[1, :, :, :2] = torch.tensor([1.0, 0.0, 0.0, 0.0])[:, None, None]  # differs only on IGNORE pixels
    assert float(distillation_loss(teacher.log(), changed, labels)) == pytest.approx(0.0, abs=1e-6)

    geometry = CropGeometry(32, 0.5)
    sources = make_face_sources(records[:6], geometry, context=1.6, progress=False)
    val = make_segment_crops(records[6:8], geometry, LocatorSpread(), None, progress=False)
    jitter = Jitter(copies=0, shift=0.03, scale=0.05, rotate_deg=8.0, brightness=0.2, flip=True)
    teacher_net = SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=32, width=4, depth=3))
    with pytest.raises(ValueError, match="needs a teacher"):
        OnlineSegmentationTask(LossWeights(1.0, 1.0, 0.0, 0.0, 1.0), val, sources, 32, LocatorSpread(), jitter)
    with pytest.raises(ValueError, match="distill > 0"):
        OnlineSegmentationTask(LossWeights(), val, sources, 32, LocatorSpread(), jitter, teacher=teacher_net)
    task = OnlineSegmentationTask(
        LossWeights(1.0, 1.0, 0.0, 0.0, 2.0), val, sources, 32, LocatorSpread(), jitter, teacher=teacher_net
    )
    inputs, targets = task.augment(torch.arange(4), torch.arange(4), torch.Generator().manual_seed(1))
    assert targets.shape == (4, 5, 32, 32)  # labels, then the teacher's 4 class probabilities
    with torch.no_grad():
        expected = teacher_net(inputs).softmax(dim=1)
    torch.testing.assert_close(targets[:, 1:], expected)
    hard_only = segmentation_loss(expected.log(), targets[:, 0].to(torch.uint8), task.weights)
    assert float(task.loss(expected.log(), targets)) == pytest.approx(float(hard_only), abs=1e-5)  # KL 0 at the teacher


def test_an_ensemble_averages_its_members_probabilities(records: list, tmp_path: Path) -> None:
    geometry = CropGeometry(32, 0.5).to_dict()
    for seed in (0, 1):
        torch.manual_seed(seed)
        SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=32, width=4, depth=3)).save(
            tmp_path / f"m{seed}", geometry
        )
    image = cv2.imread(str(records[0].image_path))
    lips = [records[0].points[HELEN_LIPS]]
    single = [SegmenterRunner(tmp_path / f"m{seed}") for seed in (0, 1)]
    pair = SegmenterRunner(tmp_path / "m0", ensemble=(tmp_path / "m1",))
    transforms = pair.transforms(lips)
    crops = np.stack([warp_crop(image, transform, 32) for transform in transforms])
    averaged = (crop_probabilities(single[0].model, crops) + crop_probabilities(single[1].model, crops)) / 2
    np.testing.assert_array_equal(
        pair.label_mask(image, lips), paste_probabilities(averaged, transforms, *image.shape[:2])
    )
    SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=48, width=4, depth=3)).save(
        tmp_path / "m48", CropGeometry(48, 0.5).to_dict()
    )
    with pytest.raises(ValueError, match="one crop geometry"):
        SegmenterRunner(tmp_path / "m0", ensemble=(tmp_path / "m48",))


def test_an_ensemble_teacher_gives_its_members_mean_probabilities() -> None:
    from lipseg.segmentation.model import MeanProbabilities

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(SegmenterNet(SegmenterConfig(arch="plain_unet", input_size=32, width=4, depth=3)).eval())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 255
    with torch.no_grad():
        expected = (members[0](images).softmax(dim=1) + members[1](images).softmax(dim=1)) / 2
        torch.testing.assert_close(MeanProbabilities(members).eval()(images).softmax(dim=1), expected)
