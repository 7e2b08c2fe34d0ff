"""Tests for lipseg.metrics: pooled pixel scores, NME, CED/AUC/failure rate, and parity with lipeval."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest

from lipseg.data.landmarks import HELEN_LIPS
from lipseg.evaluation.masks import label_mask_from_lips
from lipseg.evaluation.pixels import CLASSES, PixelCounts, f1_iou
from lipseg.evaluation.points import (
    auc_at,
    ced_curve,
    failure_rate,
    inter_ocular_distances,
    mouth_width_norms,
    nme,
    point_errors,
)
from lipseg.evaluation.report import GroundTruthFace, headline_metrics, pick_face, summarise


def synthetic_face(
    centre_x: float = 60.0,
    centre_y: float = 70.0,
    half_width: float = 18.0,
    opening: float = 4.0,
    eye_distance: float = 100.0,
) -> np.ndarray:
    """194 Helen points: an elliptical mouth (58..113) and outer eye corners 124/144; the rest at 0."""
    angles = np.linspace(0.0, np.pi, 15)[:14]

    def arc(half_w: float, half_h: float, t: np.ndarray) -> np.ndarray:
        return np.stack([centre_x - half_w * np.cos(t), centre_y + half_h * np.sin(t)], axis=1)

    points = np.zeros((194, 2))
    points[58:72] = arc(half_width, -0.35 * half_width, angles)
    points[72:86] = arc(half_width, 0.45 * half_width, np.pi - angles)
    points[86:100] = arc(0.8 * half_width, -opening, angles)
    points[100:114] = arc(0.8 * half_width, opening, np.pi - angles)
    points[124] = (centre_x + eye_distance / 2, centre_y - 40)
    points[144] = (centre_x - eye_distance / 2, centre_y - 40)
    return points


# ----------------------------------------------------------------------------------------------------
# Pixel metrics
def test_pooled_scores_on_hand_made_masks() -> None:
    gt = np.zeros((4, 6), np.uint8)
    gt[0, :4] = 1  # 4 upper-lip pixels
    gt[1, :2] = 2  # 2 inner-mouth pixels
    gt[2, :4] = 3  # 4 lower-lip pixels
    pred = np.zeros_like(gt)
    pred[0, :3] = 1  # upper: TP 3, FN 1
    pred[0, 5] = 1  # upper: FP 1
    pred[1, :2] = 3  # inner: FN 2; lower: FP 2; lips: FP 2, mouth: TP 2
    pred[2, 1:4] = 3  # lower: TP 3, FN 1
    counts = PixelCounts()
    image_f1 = counts.add(pred, gt)
    pooled = counts.pooled()
    expected = {  # tp, fp, fn
        "upper_lip": (3, 1, 1),
        "inner_mouth": (0, 0, 2),
        "lower_lip": (3, 2, 1),
        "lips": (6, 3, 2),
        "mouth": (8, 1, 2),
    }
    for name, (tp, fp, fn) in expected.items():
        scores = pooled[name]
        assert (scores["tp"], scores["fp"], scores["fn"]) == (tp, fp, fn), name
        assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert scores["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert scores["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 1.0)
        assert scores["recall"] == pytest.approx(tp / (tp + fn))
        assert image_f1[name] == pytest.approx(scores["f1"])

    # A second image is pooled (counts summed), not averaged.
    counts.add(gt, gt)
    lips = counts.pooled()["lips"]
    assert (lips["tp"], lips["fp"], lips["fn"]) == (6 + 8, 3, 2)
    assert lips["f1"] == pytest.approx(2 * 14 / (2 * 14 + 3 + 2))
    assert counts.mean_image_f1("lips") == pytest.approx((round(12 / 17, 5) + 1.0) / 2)


def test_empty_class_and_missing_prediction_conventions() -> None:
    assert f1_iou(0, 0, 0) == (1.0, 1.0)  # absent from prediction and GT: perfect, as in lipeval
    assert f1_iou(0, 3, 0) == (0.0, 0.0)
    counts = PixelCounts()
    gt = np.zeros((5, 5), np.uint8)
    gt[1:3, 1:4] = 1
    scores = counts.add(None, gt)  # no prediction = empty mask
    assert scores["lips"] == 0.0 and scores["inner_mouth"] == 1.0
    counts.add(None, np.zeros((5, 5), np.uint8))  # empty GT and no prediction: F1 = 1.0
    assert counts.mean_image_f1("lips") == pytest.approx(0.5)
    assert counts.n_images == 2
    assert PixelCounts().mean_image_f1() is None
    with pytest.raises(ValueError):
        counts.add(np.zeros((4, 4), np.uint8), gt)


def test_class_table_matches_evaluation_md() -> None:
    assert CLASSES == (
        ("upper_lip", (1,)),
        ("inner_mouth", (2,)),
        ("lower_lip", (3,)),
        ("lips", (1, 3)),
        ("mouth", (1, 2, 3)),
    )


# ----------------------------------------------------------------------------------------------------
# Point metrics
def test_nme_on_known_shifts() -> None:
    faces = np.stack([synthetic_face(eye_distance=100.0), synthetic_face(eye_distance=50.0)])
    gt_lips = faces[:, HELEN_LIPS]
    pred = gt_lips + (3.0, 0.0)
    np.testing.assert_allclose(point_errors(pred, gt_lips), [3.0, 3.0])
    np.testing.assert_allclose(point_errors(gt_lips + (3.0, 4.0), gt_lips), [5.0, 5.0])
    iod = inter_ocular_distances(faces)
    np.testing.assert_allclose(iod, [100.0, 50.0])
    np.testing.assert_allclose(nme(pred, gt_lips, iod), [0.03, 0.06])
    widths = mouth_width_norms(gt_lips)
    np.testing.assert_allclose(widths, [36.0, 36.0], rtol=1e-3)  # corner to corner, 2 x half width
    np.testing.assert_allclose(nme(pred, gt_lips, widths), 3.0 / widths)
    # A single face (56, 2) works as a batch of one; a zero normaliser gives NaN.
    assert point_errors(pred[0], gt_lips[0]).shape == (1,)
    assert np.isnan(nme(pred[0], gt_lips[0], 0.0)[0])


def test_failure_rate_ced_and_auc() -> None:
    values = np.array([0.0, 0.02, 0.05, 0.10, 0.12, 0.3, np.inf])  # inf = no usable prediction
    assert failure_rate(values, 0.10) == pytest.approx(3 / 7)  # 0.10 itself is not a failure
    assert failure_rate([], 0.10) == 0.0
    assert failure_rate([0.05, np.nan], 0.10) == 0.0  # NaN: no normaliser, not a failure (lipeval)

    thresholds, below = ced_curve(values, max_threshold=0.10, steps=101)
    assert thresholds.shape == below.shape == (101,)
    assert thresholds[0] == 0.0 and thresholds[-1] == pytest.approx(0.10)
    assert np.all(np.diff(below) >= 0)
    assert below[0] == pytest.approx(1 / 7)
    assert below[-1] == pytest.approx(4 / 7) == pytest.approx(1 - failure_rate(values, 0.10))

    assert auc_at(np.zeros(5), 0.10) == 1.0
    assert auc_at([0.2, np.inf, np.nan], 0.10) == 0.0
    assert auc_at([0.05], 0.10) == pytest.approx(0.5)
    # The exact area agrees with a fine trapezoid over the sampled curve.
    rng = np.random.default_rng(0)
    random_values = rng.uniform(0, 0.15, 200)
    fine_t, fine_below = ced_curve(random_values, 0.10, steps=20001)
    trapezoid = float(np.sum((fine_below[1:] + fine_below[:-1]) / 2 * np.diff(fine_t))) / 0.10
    assert auc_at(random_values, 0.10) == pytest.approx(trapezoid, abs=1e-3)


# ----------------------------------------------------------------------------------------------------
# Whole-split summary
def test_summarise_on_synthetic_faces() -> None:
    truths = [GroundTruthFace(synthetic_face(centre_x=60 + k, opening=k), 120, 130, f"img{k}") for k in range(6)]
    gt_lips = [t.points[HELEN_LIPS] for t in truths]
    distractor = gt_lips[1] + (500.0, 0.0)
    predictions = [
        [gt_lips[0]],  # perfect
        [distractor, gt_lips[1] + (3.0, 0.0)],  # nearest face is scored: NME_io = 0.03
        None,  # missing -> failure
        [],  # no face -> failure
        [np.zeros((10, 2))],  # malformed -> failure
        label_mask_from_lips(gt_lips[5], 120, 130),  # a label mask: pixels only, no points
    ]
    report = summarise(predictions, truths)
    assert report["counts"] == {"ok": 3, "missing": 1, "no_face": 1, "malformed": 1}
    assert report["n_images"] == 6 and report["n_no_prediction"] == 3
    nme_block = report["nme"]
    assert nme_block["n_scored"] == 2 and nme_block["n_png_not_scored"] == 1
    assert nme_block["mean_io"] == pytest.approx(0.015)
    assert nme_block["n_fail"] == 3 and nme_block["failure_rate"] == pytest.approx(3 / 5)
    assert report["per_image"][0]["f1"]["mouth"] == 1.0
    assert report["per_image"][5]["f1"]["mouth"] == 1.0 and "nme_io" not in report["per_image"][5]
    assert report["mean_image_f1_lips"] == pytest.approx(np.mean([r["f1"]["lips"] for r in report["per_image"]]))
    flat = headline_metrics(report)
    assert flat["nme_io"] == pytest.approx(0.015) and flat["failure_rate"] == pytest.approx(0.6)
    assert set(flat) >= {f"f1_{name}" for name, _ in CLASSES}
    json.dumps(report)  # a pipeline stage writes it as metrics.json

    perfect = summarise([[lips] for lips in gt_lips], truths)
    assert all(perfect["pooled"][name]["f1"] == 1.0 for name, _ in CLASSES)
    assert perfect["nme"]["mean_io"] == 0.0 and perfect["nme"]["failure_rate"] == 0.0

    only_masks = summarise([None] * 6, truths)
    assert only_masks["nme"] is None  # no JSON-style prediction at all, as in lipeval

    broken_gt = summarise([None], [GroundTruthFace(np.zeros((68, 2)), 50, 50, "bad")])
    assert broken_gt["n_images"] == 0 and broken_gt["gt_errors"][0]["name"] == "bad"


def test_pick_face_takes_the_nearest_lip_centroid() -> None:
    gt_lips = synthetic_face()[HELEN_LIPS]
    near, far = gt_lips + 2.0, gt_lips + 40.0
    assert pick_face([far, near], gt_lips) is near
    assert pick_face([near, near.copy()], gt_lips) is near  # first on ties


# ----------------------------------------------------------------------------------------------------
# Parity with the official scorer on real Helen images
def read_helen_annotation(path: Path) -> tuple[str, np.ndarray]:
    """Helen 194-point file: line 1 = image name, then `x , y` lines (CRLF)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    points = [tuple(float(value) for value in line.split(",")) for line in lines[1:]]
    return lines[0], np.array(points, np.float64)


@pytest.mark.helen
def test_summary_equals_lipeval_on_helen_sample(tmp_path: Path, lipeval: ModuleType, helen_dir: Path) -> None:
    names = [line.strip() for line in (helen_dir / "testnames.txt").read_text().splitlines() if line.strip()][:40]
    wanted = set(names)
    annotations = {}
    for path in (helen_dir / "annotation").glob("*.txt"):
        name, points = read_helen_annotation(path)
        if name in wanted:
            annotations[name] = points
    assert wanted <= set(annotations)

    rng = np.random.default_rng(20240611)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    truths, predictions = [], []
    for index, name in enumerate(names):
        points = annotations[name]
        # Same flags as lipeval: EXIF orientation must not swap height and width.
        image = cv2.imread(str(helen_dir / "images" / f"{name}.jpg"), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        height, width = image.shape[:2]
        truths.append(GroundTruthFace(points, height, width, name))
        gt_lips = points[HELEN_LIPS]
        iod = float(np.linalg.norm(points[124] - points[144]))
        noise_scale = rng.uniform(0.005, 0.10) * iod  # some images end above NME_io 0.10
        noisy = gt_lips + rng.normal(0.0, noise_scale, gt_lips.shape) + rng.normal(0.0, 0.02 * iod, 2)
        json_path = pred_dir / f"{name}.json"
        if index == 0:  # missing
            predictions.append(None)
        elif index == 1:  # no face
            json_path.write_text(json.dumps({"faces": []}))
            predictions.append([])
        elif index == 2:  # malformed: wrong point count
            json_path.write_text(json.dumps({"faces": [{"lips": [[1.0, 2.0]] * 10}]}))
            predictions.append([np.full((10, 2), (1.0, 2.0))])
        elif index == 3:  # a label-mask prediction
            mask = label_mask_from_lips(noisy, height, width)
            cv2.imwrite(str(pred_dir / f"{name}.png"), mask)
            predictions.append(mask)
        else:
            faces = [noisy]
            if index % 4 == 0:  # a distractor face elsewhere in the image, listed first
                faces.insert(0, noisy + (0.4 * width, 0.1 * height))
            json_path.write_text(json.dumps({"faces": [{"lips": face.tolist()} for face in faces]}))
            predictions.append(faces)
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(names) + "\n")

    reference = lipeval.evaluate(str(helen_dir), str(pred_dir), "test", names_file=str(names_file), quiet=True)
    ours = summarise(predictions, truths)

    assert ours["counts"] == reference["counts"]
    assert ours["n_images"] == reference["n_images"] == len(names)
    assert ours["n_no_prediction"] == reference["n_no_prediction"]
    for name, _ in CLASSES:
        for key in ("tp", "fp", "fn"):
            assert ours["pooled"][name][key] == reference["pooled"][name][key], (name, key)
        for key in ("f1", "iou"):
            assert ours["pooled"][name][key] == pytest.approx(reference["pooled"][name][key], abs=1e-9)
    assert ours["mean_image_f1_lips"] == pytest.approx(reference["mean_image_f1_lips"], abs=1e-9)
    for key in ("n_scored", "n_png_not_scored", "n_fail"):
        assert ours["nme"][key] == reference["nme"][key], key
    for key in ("mean_io", "median_io", "mean_mw", "median_mw", "failure_rate"):
        assert ours["nme"][key] == pytest.approx(reference["nme"][key], abs=1e-9), key
    assert 0 < ours["nme"]["failure_rate"] < 1  # the noise really produced some failures
    for our_image, their_image in zip(ours["per_image"], reference["per_image"]):
        assert our_image["name"] == their_image["name"]
        assert our_image["f1"] == their_image["f1"]
        assert our_image.get("nme_io") == pytest.approx(their_image.get("nme_io"), abs=1e-12)
