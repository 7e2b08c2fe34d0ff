"""Face-parsing adapters on tiny fixtures written in each dataset's published layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lipseg.data.faceparts import (
    ADAPTERS,
    CELEBAMASK_PRECEDENCE,
    DEFAULT_CLASS_TABLES,
    SOURCE_CLASSES,
    PartsRecord,
    lapa_landmarks_path,
    list_records,
    validate_class_table,
)
from lipseg.data.faceparts_labels import read_label_mask, read_landmarks_lapa
from lipseg.data.helen import AnnotationError
from lipseg.data.rejects import DatasetError, Reject

SHAPE = (40, 48)  # (H, W): not square, so a transposed mask cannot pass


def write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def photo(shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def reasons(rejects: list[Reject]) -> dict[str, str]:
    return {reject.name: reject.reason for reject in rejects}


# ---------------------------------------------------------------------------------------------- LaPa


def lapa_ids(shift: int = 0) -> np.ndarray:
    """A label-id image: skin face with hair on top, an eye, a nose and the three mouth classes."""
    ids = np.zeros(SHAPE, np.uint8)
    ids[0:6, :] = 10  # hair
    ids[6:36, 8:40] = 1  # skin
    ids[12:15, 12:18] = 4  # left eye
    ids[16:22, 22:26] = 6  # nose
    ids[24 + shift : 27 + shift, 16:32] = 7  # upper lip
    ids[27 + shift : 29 + shift, 18:30] = 8  # inner mouth
    ids[29 + shift : 32 + shift, 16:32] = 9  # lower lip
    return ids


def landmarks_text(count: int = 106, rows: int | None = None, bad: str | None = None) -> str:
    lines = [str(count)] + [f"{1.5 * i:.3f} {2.0 * i + 0.25:.3f}" for i in range(count if rows is None else rows)]
    if bad is not None:
        lines[5] = bad
    return "\n".join(lines) + "\n"


def write_lapa(root: Path) -> None:
    for split, names in {"train": ["a", "b", "nolabel"], "val": ["v1"]}.items():
        for number, name in enumerate(names):
            write(root / split / "images" / f"{name}.jpg", photo(seed=number))
            if name != "nolabel":
                write(root / split / "labels" / f"{name}.png", lapa_ids(shift=number))
                (root / split / "landmarks").mkdir(exist_ok=True)
                (root / split / "landmarks" / f"{name}.txt").write_text(landmarks_text())
    write(root / "train" / "labels" / "orphan.png", lapa_ids())


def test_lapa_lists_records_splits_and_rejects(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    records, rejects = list_records("lapa", tmp_path, "train")
    assert [r.name for r in records] == ["a", "b"]
    assert records[0] == PartsRecord("a", tmp_path / "train/images/a.jpg", (tmp_path / "train/labels/a.png",), "lapa")
    assert reasons(rejects) == {"nolabel": "label file missing", "orphan": "label file without an image"}
    assert next(r for r in rejects if r.name == "nolabel").file == str(tmp_path / "train/labels/nolabel.png")

    everything, _ = list_records("lapa", tmp_path)  # every split folder present (test/ is absent)
    assert [r.name for r in everything] == ["a", "b", "v1"]
    assert [r.name for r in list_records("lapa", tmp_path, "val")[0]] == ["v1"]

    with pytest.raises(DatasetError, match="test"):
        list_records("lapa", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown LaPa split"):
        list_records("lapa", tmp_path, "dev")


def test_lapa_rejects_duplicates_across_splits_and_empty_labels(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    write(tmp_path / "val" / "images" / "a.jpg", photo())
    write(tmp_path / "val" / "labels" / "a.png", lapa_ids())
    (tmp_path / "train" / "labels" / "b.png").write_bytes(b"")
    records, rejects = list_records("lapa", tmp_path)
    assert [r.name for r in records] == ["a", "v1"]
    found = reasons(rejects)
    assert found["a"] == "duplicate name in another split"
    assert found["b"] == "label file is empty (0 bytes)"


def test_lapa_label_mask_default_and_custom_tables(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    record = list_records("lapa", tmp_path, "train")[0][1]  # "b": mouth shifted down by one row
    ids = lapa_ids(shift=1)
    expected = np.zeros(SHAPE, np.uint8)
    expected[ids == 7], expected[ids == 8], expected[ids == 9] = 1, 2, 3

    mask = read_label_mask(record, DEFAULT_CLASS_TABLES["lapa"])
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(
        read_label_mask(record, DEFAULT_CLASS_TABLES["lapa"], image_shape=(*SHAPE, 3)), expected
    )

    custom = {**DEFAULT_CLASS_TABLES["lapa"], "skin": 255, "nose": 255}
    expected_custom = expected.copy()
    expected_custom[(ids == 1) | (ids == 6)] = 255
    np.testing.assert_array_equal(read_label_mask(record, custom), expected_custom)


def test_lapa_label_errors(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    record = list_records("lapa", tmp_path, "train")[0][0]
    with pytest.raises(AnnotationError, match="label is 48x40, image is 50x40"):
        read_label_mask(record, {}, image_shape=(40, 50))
    bad = lapa_ids()
    bad[0, 0] = 11
    write(record.label_paths[0], bad)
    with pytest.raises(AnnotationError, match="11 are not LaPa classes"):
        read_label_mask(record, {})
    record.label_paths[0].write_bytes(b"not a png")
    with pytest.raises(AnnotationError, match="cannot decode"):
        read_label_mask(record, {})


def test_lapa_landmarks(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    record = list_records("lapa", tmp_path, "train")[0][0]
    path = lapa_landmarks_path(record)
    assert path == tmp_path / "train/landmarks/a.txt"
    points = read_landmarks_lapa(path)
    assert points.shape == (106, 2) and points.dtype == np.float32
    np.testing.assert_allclose(points[10], [15.0, 20.25])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("abc\n1 2\n", "point count"),
        (landmarks_text(count=68), "point count is 68"),
        (landmarks_text(rows=105), "found 105 lines"),
        (landmarks_text(bad="1,2"), "expected 'x y'"),
        (landmarks_text(bad="1 y"), "non-numeric"),
        (landmarks_text(bad="nan 2"), "non-finite"),
    ],
)
def test_lapa_landmarks_malformed(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.txt"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_landmarks_lapa(path)
    with pytest.raises(ValueError):  # AnnotationError is a ValueError for callers that catch broadly
        read_landmarks_lapa(path)


def test_lapa_landmarks_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="cannot read landmark file"):
        read_landmarks_lapa(tmp_path / "absent.txt")


# ---------------------------------------------------------------------------------------------- CelebAMask-HQ

MASK_SHAPE = (20, 24)  # half the image size, like the real 512 masks of 1024 images
# (part, rows, cols) on the mask grid; they overlap on purpose to exercise the precedence.
PARTS = [
    ("skin", slice(2, 19), slice(3, 21)),
    ("nose", slice(6, 10), slice(10, 14)),
    ("mouth", slice(12, 15), slice(8, 16)),
    ("u_lip", slice(11, 13), slice(7, 17)),
    ("l_lip", slice(14, 16), slice(7, 17)),
    ("hair", slice(0, 12), slice(0, 9)),  # hair over the upper lip's left end: an occluder wins
]


def small_mask(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(MASK_SHAPE, np.uint8)
    mask[rows, cols] = 255
    return mask


def expected_celeba(table: dict[str, int]) -> np.ndarray:
    small = np.zeros(MASK_SHAPE, np.uint8)
    for part in CELEBAMASK_PRECEDENCE:
        for name, rows, cols in PARTS:
            if name == part:
                small[rows, cols] = table.get(name, 0)
    return np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)  # nearest neighbour at exactly 2x


def write_celeba(root: Path) -> None:
    for number in (0, 1, 2001, 5):  # 5 has no masks
        write(root / "CelebA-HQ-img" / f"{number}.jpg", photo(seed=number))
    write(root / "CelebA-HQ-img" / "cover.jpg", photo())
    anno = root / "CelebAMask-HQ-mask-anno"
    for number in (0, 1, 2001, 3):  # 3 has no image
        for index, (part, rows, cols) in enumerate(PARTS):
            mask = small_mask(rows, cols)
            if index == 0:  # the real masks are 3-channel PNGs; read either as grayscale
                mask = np.dstack([mask] * 3)
            write(anno / str(number // 2000) / f"{number:05d}_{part}.png", mask)
    write(anno / "0" / "00001_beard.png", small_mask(slice(0, 1), slice(0, 1)))
    write(anno / "1" / "00002_skin.png", small_mask(slice(0, 1), slice(0, 1)))  # id 2 belongs in 0/


def test_celebamask_lists_records_and_rejects(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    records, rejects = list_records("celebamask_hq", tmp_path)
    assert [r.name for r in records] == ["0", "1", "2001"]
    record = records[2]
    assert record.format == "celebamask_hq" and record.image_path == tmp_path / "CelebA-HQ-img/2001.jpg"
    folder = tmp_path / "CelebAMask-HQ-mask-anno" / "1"
    assert record.label_paths == tuple(
        folder / f"02001_{part}.png" for part in CELEBAMASK_PRECEDENCE if part in {name for name, _, _ in PARTS}
    )
    found = reasons(rejects)
    assert found["5"] == "no part masks found"
    assert found["3"] == "part masks without an image"
    assert found["cover"].startswith("image name is not a CelebA-HQ id")
    assert found["1"] == "unknown CelebAMask-HQ part 'beard'"
    assert found["2"].startswith("mask in folder 1/, expected 0/")


def test_celebamask_id_lists(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    (tmp_path / "ids.txt").write_text("# held out\n2001\n1\n1\n7\nx9\n")
    records, rejects = list_records("celebamask_hq", tmp_path, "ids.txt")
    assert [r.name for r in records] == ["2001", "1"]
    assert [(r.name, r.reason) for r in rejects] == [
        ("1", "duplicate id in list"),
        ("x9", "not a CelebA-HQ id (expected a non-negative integer)"),
        ("1", "unknown CelebAMask-HQ part 'beard'"),
        ("7", "image file missing"),
    ]
    # A bare name means <root>/<name>.txt; an absolute path is taken as is.
    assert [r.name for r in list_records("celebamask_hq", tmp_path, "ids")[0]] == ["2001", "1"]
    assert [r.name for r in list_records("celebamask_hq", tmp_path, str(tmp_path / "ids.txt"))[0]] == ["2001", "1"]
    # The shipped mapping file lists every id after its header.
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx orig_idx orig_file\n0 119613 119614.jpg\n1 99094 099095.jpg\n"
    )
    records, rejects = list_records("celebamask_hq", tmp_path, "CelebA-HQ-to-CelebA-mapping.txt")
    assert [r.name for r in records] == ["0", "1"]
    with pytest.raises(DatasetError, match="id list not found"):
        list_records("celebamask_hq", tmp_path, "absent")


def test_celebamask_label_mask_resizes_and_applies_precedence(tmp_path: Path) -> None:
    write_celeba(tmp_path)
    record = list_records("celebamask_hq", tmp_path)[0][2]
    table = DEFAULT_CLASS_TABLES["celebamask_hq"]
    mask = read_label_mask(record, table)
    assert mask.shape == SHAPE and mask.dtype == np.uint8
    expected = expected_celeba(table)
    np.testing.assert_array_equal(mask, expected)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3}
    assert mask[22, 14] == 0 and mask[22, 20] == 1  # the upper lip under the hair, and beside it

    custom = {**table, "skin": 255, "hair": 255}
    expected_custom = expected_celeba(custom)
    np.testing.assert_array_equal(read_label_mask(record, custom, image_shape=SHAPE), expected_custom)
    # lips win over skin: every lip pixel of the default mask is still a lip with skin mapped to ignore
    lips = np.isin(expected, [1, 2, 3])
    np.testing.assert_array_equal(expected_custom[lips], expected[lips])
    assert (expected_custom == 255).sum() > 0


# ---------------------------------------------------------------------------------------------- LFW Part Labels

LFW_SHAPE = (25, 25)
RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)  # BGR, as cv2 writes them


def lfw_label() -> np.ndarray:
    label = np.zeros((*LFW_SHAPE, 3), np.uint8)
    label[:] = BLUE
    label[0:8, :] = RED
    label[8:22, 4:21] = GREEN
    label[0, 0] = (10, 30, 200)  # not a pure colour: the largest channel (red) decides
    return label


def write_lfw(root: Path) -> None:
    for person, number in (("Ann_Lee", 1), ("Ann_Lee", 3), ("Bob", 2), ("Cy_Do", 1)):
        name = f"{person}_{number:04d}"
        write(root / "lfw_funneled" / person / f"{name}.jpg", photo(LFW_SHAPE, seed=number))
        if name != "Cy_Do_0001":
            write(root / "parts_lfw_funneled_gt_images" / f"{name}.ppm", lfw_label())
    (root / "parts_train.txt").write_text("Ann_Lee 1\nBob 2\nAnn_Lee 1\nCy_Do 1\nbroken line here\n")
    (root / "parts_validation.txt").write_text("Ann_Lee 3\n")


def test_lfw_lists_records_and_splits(tmp_path: Path) -> None:
    write_lfw(tmp_path)
    records, rejects = list_records("lfw_parts", tmp_path, "train")
    assert [r.name for r in records] == ["Ann_Lee_0001", "Bob_0002"]
    assert records[0] == PartsRecord(
        "Ann_Lee_0001",
        tmp_path / "lfw_funneled/Ann_Lee/Ann_Lee_0001.jpg",
        (tmp_path / "parts_lfw_funneled_gt_images/Ann_Lee_0001.ppm",),
        "lfw_parts",
    )
    assert [(r.name, r.reason) for r in rejects] == [
        ("Ann_Lee_0001", "duplicate name in list"),
        ("broken line here", "expected 'Person_Name N'"),
        ("Cy_Do_0001", "label file missing"),
    ]
    assert [r.name for r in list_records("lfw_parts", tmp_path, "val")[0]] == ["Ann_Lee_0003"]
    assert [r.name for r in list_records("lfw_parts", tmp_path)[0]] == ["Ann_Lee_0001", "Ann_Lee_0003", "Bob_0002"]
    with pytest.raises(DatasetError, match="parts_test.txt"):
        list_records("lfw_parts", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown LFW Part Labels split"):
        list_records("lfw_parts", tmp_path, "dev")


def test_lfw_label_mask(tmp_path: Path) -> None:
    write_lfw(tmp_path)
    record = list_records("lfw_parts", tmp_path, "train")[0][0]
    default = read_label_mask(record, DEFAULT_CLASS_TABLES["lfw_parts"])
    np.testing.assert_array_equal(default, np.zeros(LFW_SHAPE, np.uint8))  # no lip classes in LFW

    mask = read_label_mask(record, {"face": 255, "hair": 0})
    expected = np.zeros(LFW_SHAPE, np.uint8)
    expected[8:22, 4:21] = 255
    np.testing.assert_array_equal(mask, expected)
    hair_probe = read_label_mask(record, {"hair": 3})  # shows which pixels argmax calls hair
    assert hair_probe[0, 0] == 3 and (hair_probe == 3).sum() == 8 * 25


# ---------------------------------------------------------------------------------------------- shared


def test_class_table_validation() -> None:
    assert set(ADAPTERS) == set(SOURCE_CLASSES) == set(DEFAULT_CLASS_TABLES)
    for format in ADAPTERS:
        full = validate_class_table(format, DEFAULT_CLASS_TABLES[format])
        assert tuple(full) == SOURCE_CLASSES[format]
    full = validate_class_table("lapa", {"upper_lip": 1, "skin": 255})
    assert full["upper_lip"] == 1 and full["skin"] == 255 and full["lower_lip"] == 0 and full["hair"] == 0
    with pytest.raises(ValueError, match="unknown class name.*'lips'"):
        validate_class_table("lapa", {"lips": 1})
    with pytest.raises(ValueError, match="unknown class name.*'upper_lip'"):
        validate_class_table("celebamask_hq", {"upper_lip": 1})  # a LaPa name is not a CelebAMask-HQ part
    for bad in (4, -1, 256, True, "1", 1.0):
        with pytest.raises(ValueError, match="not a lip class id"):
            validate_class_table("lfw_parts", {"face": bad})
    with pytest.raises(ValueError, match="unknown face-parsing format"):
        validate_class_table("helen", {})


def test_read_label_mask_checks_the_table(tmp_path: Path) -> None:
    write_lapa(tmp_path)
    record = list_records("lapa", tmp_path, "train")[0][0]
    with pytest.raises(ValueError, match="not a lip class id"):
        read_label_mask(record, {"upper_lip": 7})
    with pytest.raises(ValueError, match="unknown class name"):
        read_label_mask(record, {"u_lip": 1})


@pytest.mark.parametrize("format", ADAPTERS)
def test_missing_folders_raise_dataset_error(tmp_path: Path, format: str) -> None:
    with pytest.raises(DatasetError, match="dataset folder not found"):
        list_records(format, tmp_path / "absent")
    with pytest.raises(DatasetError, match="not found"):  # root exists, the layout's folders do not
        list_records(format, tmp_path)


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown face-parsing format"):
        list_records("helen", Path("."))
