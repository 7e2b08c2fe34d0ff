from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.helen import load_split
from lipseg.inference.cli import main
from lipseg.inference.coco import CATEGORIES, bbox, encode_rle, face_owners, mask_polygons, photo_annotations

coco_mask = pytest.importorskip("pycocotools.mask")


def random_masks(count: int = 200):
    """Random and blocky binary masks, including empty, full, one-pixel and one-row ones."""
    rng = np.random.default_rng(0)
    yield np.zeros((5, 7), np.uint8)
    yield np.ones((5, 7), np.uint8)
    yield np.ones((1, 1), np.uint8)
    yield (rng.random((1, 40)) < 0.5).astype(np.uint8)
    for index in range(count):
        height, width = rng.integers(1, 80, 2)
        if index % 2:
            yield (rng.random((height, width)) < rng.random()).astype(np.uint8)
        else:
            mask = np.zeros((height, width), np.uint8)
            cv2.ellipse(mask, (int(rng.integers(0, width)), int(rng.integers(0, height))), (15, 6), 0, 0, 360, 1, -1)
            yield mask


def test_rle_is_pycocotools_encoding_and_decodes_to_the_mask() -> None:
    for mask in random_masks():
        ours = encode_rle(mask)
        reference = coco_mask.encode(np.asfortranarray(mask))
        assert ours["counts"] == reference["counts"].decode("ascii")
        assert ours["size"] == list(reference["size"])
        decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode("ascii")})
        np.testing.assert_array_equal(decoded, mask)
        assert int(coco_mask.area(reference)) == int(mask.sum())
        if mask.any():
            assert bbox(mask) == coco_mask.toBbox(reference).astype(int).tolist()


def test_polygons_cover_the_mask_as_pycocotools_rasterises_them() -> None:
    mask = np.zeros((60, 90), np.uint8)
    cv2.ellipse(mask, (30, 30), (20, 8), 10, 0, 360, 1, -1)
    cv2.rectangle(mask, (60, 10), (80, 40), 1, -1)  # a second region: a second polygon
    polygons = mask_polygons(mask)
    assert len(polygons) == 2 and all(len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in polygons)
    drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(polygons, 60, 90)))
    overlap = (drawn & mask).sum() / (drawn | mask).sum()
    assert overlap > 0.9


def test_each_face_owns_the_pixels_nearest_its_lips() -> None:
    mask = np.zeros((40, 100), np.uint8)
    mask[10:20, 5:30] = 1
    mask[20:25, 5:30] = 3
    mask[10:20, 60:90] = 1
    left = np.array([[5.0, 15.0], [30.0, 15.0], [17.0, 24.0]])
    right = np.array([[60.0, 15.0], [90.0, 15.0]])
    owners = face_owners(mask, [left, right])
    assert (owners[mask == 0] == -1).all()
    assert (owners[:, :40][mask[:, :40] > 0] == 0).all() and (owners[:, 40:][mask[:, 40:] > 0] == 1).all()
    annotations = photo_annotations(mask, [left, right])
    assert [(a["face"], a["category_id"]) for a in annotations] == [(0, 1), (0, 3), (1, 1)]
    assert [a["area"] for a in annotations] == [250, 125, 300]
    assert annotations[2]["bbox"] == [60, 10, 30, 10]
    assert photo_annotations(np.zeros((4, 4), np.uint8), [left]) == []


@pytest.fixture
def photos(tmp_path: Path, synthetic_dir: Path) -> Path:
    """Synthetic face photos upscaled for dlib's HOG; one of them named like the COCO file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    records, _ = load_split(synthetic_dir, "test")
    for record, name in zip(records[:3], ("annotations", "b_face", "c_face")):
        image = cv2.resize(cv2.imread(str(record.image_path)), (320, 320), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"{name}.jpg"), image)
    cv2.imwrite(str(folder / "d_blank.png"), np.full((90, 120, 3), 127, np.uint8))
    return folder


def test_format_coco_writes_one_annotations_file_equal_to_the_label_masks(
    photos: Path, tmp_path: Path, tiny_model_folder: Path
) -> None:
    coco_out, grey_out = tmp_path / "coco", tmp_path / "grey"
    common = ["--model", str(tiny_model_folder), "--quiet", "--no-overlay"]
    assert main(["predict", str(photos), "--out", str(coco_out), *common, "--format", "coco"]) == 0
    assert main(["predict", str(photos), "--out", str(grey_out), *common, "--format", "png-grey"]) == 0
    assert not list(coco_out.glob("*.png"))
    # the photo named annotations.jpg moved aside, as a second photo of one name does
    assert (coco_out / "annotations_1.json").is_file()
    document = json.loads((coco_out / "annotations.json").read_text())
    assert document["categories"] == list(CATEGORIES)
    assert [Path(image["file_name"]).name for image in document["images"]] == [
        "annotations.jpg",
        "b_face.jpg",
        "c_face.jpg",
        "d_blank.png",
    ]
    assert [image["id"] for image in document["images"]] == [1, 2, 3, 4]
    assert [a["id"] for a in document["annotations"]] == list(range(1, len(document["annotations"]) + 1))
    for image in document["images"]:
        stem = Path(image["file_name"]).stem
        expected = cv2.imread(str(grey_out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert (image["height"], image["width"]) == expected.shape
        rebuilt = np.zeros_like(expected)
        faces = json.loads((coco_out / f"{stem if stem != 'annotations' else 'annotations_1'}.json").read_text())
        annotations = [a for a in document["annotations"] if a["image_id"] == image["id"]]
        assert {a["face"] for a in annotations} <= set(range(len(faces["faces"])))
        for annotation in annotations:
            region = coco_mask.decode(
                {"size": annotation["rle"]["size"], "counts": annotation["rle"]["counts"].encode()}
            )
            assert not (rebuilt[region > 0]).any()  # no pixel in two annotations
            rebuilt[region > 0] = annotation["category_id"]
            assert annotation["area"] == int(region.sum()) and annotation["iscrowd"] == 0
            assert (
                annotation["bbox"] == coco_mask.toBbox(coco_mask.encode(np.asfortranarray(region))).astype(int).tolist()
            )
            assert annotation["segmentation"] and all(len(polygon) >= 6 for polygon in annotation["segmentation"])
        np.testing.assert_array_equal(rebuilt, expected)
        assert bool(annotations) == bool(expected.any())
    assert len({a["image_id"] for a in document["annotations"]}) >= 2  # faces were found on the photos


def test_format_coco_refuses_to_overwrite_an_input_named_like_its_file(tmp_path: Path, photos: Path) -> None:
    photo = photos / "annotations.jpg"
    stray = tmp_path / "out" / "annotations.json"
    stray.parent.mkdir()
    stray.write_bytes(photo.read_bytes())  # a JPEG named .json, given as an input file
    code = main(["predict", str(stray), "--out", str(stray.parent), "--format", "coco", "--quiet"])
    assert code == 2 and stray.read_bytes() == photo.read_bytes()


def test_worker_entries_are_merged_and_listed_in_input_order() -> None:
    """Worker processes finish in any order: the file still lists the photos as the inputs came."""
    from lipseg.inference.coco import CocoPhoto, coco_document
    from lipseg.inference.outputs import Summary

    region = {"category_id": 1, "face": 0, "area": 1}
    summary, late, early = Summary(), Summary(), Summary()
    late.coco.append(CocoPhoto(2, "c.jpg", 4, 3, [dict(region)]))
    early.coco += [CocoPhoto(0, "a.jpg", 4, 3, [dict(region), dict(region)]), CocoPhoto(1, "b.jpg", 4, 3)]
    summary.merge(late)
    summary.merge(early)
    document = coco_document(summary.coco, "test")
    assert [(image["id"], image["file_name"]) for image in document["images"]] == [
        (1, "a.jpg"),
        (2, "b.jpg"),
        (3, "c.jpg"),
    ]
    assert [(a["id"], a["image_id"]) for a in document["annotations"]] == [(1, 1), (2, 1), (3, 3)]
