from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.helen import load_split
from lipseg.data.landmarks import HELEN_LIPS
from lipseg.inference.detect import DlibMouthLocator, FaceDetector, model_file, nearest_mouth


def test_model_files_are_found_without_importing_the_package() -> None:
    assert model_file("shape_predictor_68_face_landmarks.dat").stat().st_size > 1_000_000
    assert model_file("mmod_human_face_detector.dat").is_file()
    with pytest.raises(Exception, match="not found"):
        model_file("no_such_model.dat")


def test_dlib_finds_the_synthetic_mouths(synthetic_dir: Path) -> None:
    records, _ = load_split(synthetic_dir, "test")
    locator = DlibMouthLocator("hog", upsample=1)
    matched = 0
    for record in records:
        image = cv2.resize(cv2.imread(str(record.image_path)), (256, 256), interpolation=cv2.INTER_CUBIC)
        gt_lips = record.points[HELEN_LIPS] * 2
        match = nearest_mouth(locator(image), gt_lips)
        if match is not None:
            matched += 1
            assert match.mouth.shape == (20, 2)
            # dlib's mouth corners land near the annotated corners (within a third of the mouth width).
            width = np.ptp(gt_lips[:28, 0])
            assert np.linalg.norm(match.mouth[0] - gt_lips[0]) < width / 3
    assert matched >= len(records) // 2


def test_no_face_and_bad_detector_name() -> None:
    assert FaceDetector("hog")(np.zeros((120, 160, 3), np.uint8)) == []
    with pytest.raises(ValueError, match="detector must be one of"):
        FaceDetector("retina")


@pytest.mark.helen
def test_cnn_detector_on_a_real_photo(helen_dir: Path) -> None:
    name = (helen_dir / "testnames.txt").read_text().split()[0]
    image = cv2.imread(str(helen_dir / "images" / f"{name}.jpg"))
    faces = FaceDetector("cnn", upsample=0)(image)
    assert faces and faces[0].width > 20


def test_hog_plus_cnn_asks_the_cnn_only_where_hog_found_nothing(synthetic_dir: Path) -> None:
    record = load_split(synthetic_dir, "test")[0][0]
    image = cv2.resize(cv2.imread(str(record.image_path)), (320, 320), interpolation=cv2.INTER_CUBIC)
    detector = FaceDetector("hog+cnn")
    hog_faces = FaceDetector("hog")(image)
    assert hog_faces and [face.box.tolist() for face in detector(image)] == [face.box.tolist() for face in hog_faces]
    assert detector.fallbacks == 0
    assert detector(np.zeros((120, 160, 3), np.uint8)) == [] and detector.fallbacks == 1


@pytest.mark.helen
def test_hog_plus_cnn_finds_a_turned_face_hog_misses(helen_dir: Path) -> None:
    image = cv2.imread(str(helen_dir / "images" / "3139620200_1.jpg"))  # a Helen test photo where HOG finds no face
    assert FaceDetector("hog")(image) == []
    detector = FaceDetector("hog+cnn")
    faces = detector(image)
    assert len(faces) == 1 and detector.fallbacks == 1 and faces[0].width > 80


def test_photos_are_upsampled_only_while_no_face_is_found(synthetic_dir: Path) -> None:
    """A face big enough at the photo's own size costs one pass; a small one is still found by upsampling."""
    record = load_split(synthetic_dir, "train")[0][0]
    image = cv2.imread(str(record.image_path))
    big = cv2.resize(image, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    small = cv2.resize(image, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    at_own_size = FaceDetector("hog", 0)
    assert at_own_size(big) and not at_own_size(small)  # the small face needs upsampling
    detector = FaceDetector("hog", 1)
    assert detector(big) and detector.upsampled == 0
    assert detector(small) and detector.upsampled == 1
