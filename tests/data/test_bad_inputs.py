"""The bad-input corpus: files the tests generate themselves, each with one named outcome.

`CORPUS` is the table (docs/robustness.md quotes it): for every generated file, what `lipseg.core.images.read_image`
does with it, what the pipeline does with the record (the crop stage's `reports/crop/rejects.csv` reason,
or "cropped"), and what `lipseg predict` does with it. The tests below iterate it at the function level
and end to end (the crop stage on a generated dataset, `lipseg predict` on a folder of the images), so a
changed outcome fails here before the doc goes stale.
"""

from __future__ import annotations

import csv
import io
import json
import os
import runpy
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from lipseg.core.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EMPTY,
    PREDICT_MAX_PIXELS,
    ImageError,
    image_size,
    read_image,
)
from lipseg.data.geometry import CropGeometry
from lipseg.data.helen import Record, format_helen_annotation, load_split, unlisted_annotation_rejects
from lipseg.data.photos import LIPS_OUTSIDE, read_record_images
from lipseg.data.rejects import DatasetError
from lipseg.tcnn.crops import make_crops

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BOMB_SIDE = 30_000  # 900 megapixels: 2.7 GB once decoded to BGR; about 110 KB on disk
CROPPED = "cropped"
PROCESSED = "processed"
TRUNCATED_JPEG = "truncated image: the JPEG ends before its end-of-image marker"
TRUNCATED_PNG = "truncated image: the PNG ends before its IEND chunk"
TOO_LARGE, TOO_LARGE_TO_PREDICT = (
    f"image too large: {BOMB_SIDE} x {BOMB_SIDE} = {BOMB_SIDE**2} pixels, over the limit of {limit} "
    "(crop.max_pixels in params.yaml, lipseg predict --max-pixels)"
    for limit in (DEFAULT_MAX_PIXELS, PREDICT_MAX_PIXELS)
)
NOT_AN_IMAGE = "image cannot be decoded: unrecognised format (expected JPEG, PNG, BMP, GIF, TIFF, WebP or PNM)"


@dataclass(frozen=True)
class Case:
    """One corpus file and its named outcomes ("" where a step does not apply)."""

    what: str
    read: str = ""  # read_image: "decoded: ..." or the ImageError message
    pipeline: str = CROPPED  # the crop stage: "cropped" or the reject reason in reports/crop/rejects.csv
    predict: str = ""  # lipseg predict: "processed..." or "failed: <message>" (stderr and the summary; exit status 1)


def refused(what: str, message: str) -> Case:
    return Case(what, message, message, f"failed: {message}")


def predict_only(what: str, outcome: str) -> Case:
    return Case(what, pipeline="", predict=outcome)


# Keys: images/<name> are photos (of a synthetic face, annotated with its own points unless said otherwise);
# annotation/<name>.txt are annotation files of a good photo; <list>:<name> are lines of a name list.
CORPUS: dict[str, Case] = {
    "images/zero_byte.jpg": refused("zero-byte file", IMAGE_EMPTY),
    "images/truncated_jpeg.jpg": refused("JPEG cut at 60% of its bytes", TRUNCATED_JPEG),
    "images/truncated_png.png": refused("PNG cut at 60% of its bytes", TRUNCATED_PNG),
    "images/alpha.png": Case(
        "PNG with an alpha channel (half transparent)", "decoded: alpha dropped, colour kept", CROPPED, PROCESSED
    ),
    "images/grayscale.jpg": Case("grayscale JPEG", "decoded: grey copied to 3 channels", CROPPED, PROCESSED),
    "images/sixteen_bit.png": Case("16-bit PNG", "decoded: scaled to 8 bits", CROPPED, PROCESSED),
    "images/cmyk.jpg": Case("CMYK JPEG", "decoded: converted to BGR", CROPPED, PROCESSED),
    "images/one_pixel.png": Case("1x1 PNG", "decoded: 1 x 1", LIPS_OUTSIDE, 'processed: no face ("faces": [])'),
    "images/bomb.png": Case(
        f"decompression bomb: PNG declaring {BOMB_SIDE} x {BOMB_SIDE}, 1-bit",
        TOO_LARGE,
        TOO_LARGE,
        f"failed: {TOO_LARGE_TO_PREDICT}",
    ),
    "images/not_an_image.jpg": refused("text file named .jpg", NOT_AN_IMAGE),
    "images/exif_rotated.jpg": Case(
        "JPEG stored a quarter turn left, EXIF orientation 6 (a viewer turns it upright)",
        "decoded: the stored pixels (annotations are given in them)",
        CROPPED,
        'processed: turned upright first, the face found ("exif_orientation": 6 and a note in the JSON)',
    ),
    "images/multipage.tif": Case(
        "TIFF of 2 pages (the face, then a blank page)",
        "decoded: the first page",
        CROPPED,
        "processed: the first page, with a note in the JSON and the summary",
    ),
    "images/palette.gif": Case("GIF (256-colour palette)", "decoded: palette expanded to BGR", CROPPED, PROCESSED),
    "images/netpbm.ppm": Case("binary PPM", "decoded", CROPPED, PROCESSED),
    "predict:fifo.jpg": predict_only("a FIFO named .jpg in a folder", "failed: not a regular file (a FIFO)"),
    "predict:dev_zero.png": predict_only(
        "a symlink to /dev/zero named .png in a folder", "failed: not a regular file (a character device)"
    ),
    "predict:..jpg": predict_only("a photo named `..jpg`", "processed: written as `..jpg.json`, `..jpg.png`"),
    "predict:new\\nline.jpg": predict_only(
        "a truncated JPEG whose name holds a newline",
        f"failed: {TRUNCATED_JPEG}, the name printed as `new\\nline.jpg` on one line",
    ),
    "annotation/too_few.txt": Case("193 points", pipeline="bad annotation: expected 194 points, found 193"),
    "annotation/too_many.txt": Case("195 points", pipeline="bad annotation: expected 194 points, found 195"),
    "annotation/nan.txt": Case("a point 'nan , nan'", pipeline="bad annotation: line 2: non-finite value 'nan , nan'"),
    "annotation/non_numeric.txt": Case(
        "a point 'left , corner'", pipeline="bad annotation: line 2: non-numeric value 'left , corner'"
    ),
    "annotation/far_outside.txt": Case("points 100000 px beyond the image", pipeline=LIPS_OUTSIDE),
    "annotation/lf_only.txt": Case("LF line endings (no CR)"),
    "annotation/cr_only.txt": Case("CR line endings (no LF)"),
    "annotation/bom.txt": Case("UTF-8 byte-order mark before the name"),
    "annotation/duplicated.txt": Case(
        "two annotation files name the same image",
        pipeline="duplicate annotation: 2 files name this image (duplicated.txt, duplicated_copy.txt)",
    ),
    "annotation/escape.txt": Case(
        "first line '../../x', listed in trainnames.txt", pipeline="name points outside the dataset"
    ),
    "annotation/escape_unlisted.txt": Case(
        "first line '../../y', in no list", pipeline="annotation names an image outside the dataset"
    ),
    "trainnames.txt:no_image": Case("listed and annotated, no image file", pipeline="image file missing"),
    "trainnames.txt:no_files": Case(
        "listed, no annotation and no image", pipeline="no annotation file names this image"
    ),
    "trainnames.txt:plain_0 (twice)": Case(
        "a name listed twice: cropped once, the repeat rejected", pipeline="duplicate name in list"
    ),
}
IMAGES = {key.split("/", 1)[1]: case for key, case in CORPUS.items() if key.startswith("images/")}
# Files a folder of photos may hold but a dataset never does (the pipeline reads no folder listing).
PREDICT_ONLY = {key.split(":", 1)[1]: case for key, case in CORPUS.items() if key.startswith("predict:")}
PIPELINE_CASES = {key: case for key, case in CORPUS.items() if not key.startswith("predict:")}
_NAMES = {
    "annotation/escape.txt": "../../x",
    "annotation/escape_unlisted.txt": "../../y",
    "trainnames.txt:plain_0 (twice)": "plain_0",
}


def record_name(key: str) -> str:
    """The image name a CORPUS entry is about (its rejects report row carries it)."""
    return _NAMES.get(key) or Path(key.split(":")[-1]).stem


# ---------------------------------------------------------------------------------------------- generators


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit grayscale PNG of side x side zero pixels: zlib streams the rows, so it stays small."""
    compressor, row, parts = zlib.compressobj(9), bytes(1 + (side + 7) // 8), []  # filter byte + packed bits
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def encoded(extension: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, data = cv2.imencode(extension, image, params or [])
    assert ok, extension
    return data.tobytes()


def cmyk_jpeg(face: np.ndarray) -> bytes:
    from PIL import Image  # Pillow comes with matplotlib; OpenCV cannot write CMYK

    buffer = io.BytesIO()
    Image.fromarray(face[..., ::-1]).convert("CMYK").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def pillow_bytes(images: list[np.ndarray], format_name: str, **options) -> bytes:
    """BGR images saved by Pillow: EXIF tags, several pages and palettes are beyond cv2.imencode."""
    from PIL import Image

    pictures = [Image.fromarray(np.ascontiguousarray(image[..., ::-1])) for image in images]
    buffer = io.BytesIO()
    pictures[0].save(buffer, format_name, save_all=len(pictures) > 1, append_images=pictures[1:], **options)
    return buffer.getvalue()


def exif_orientation_6(image: np.ndarray) -> bytes:
    """`image` stored a quarter turn left, with the EXIF tag that tells a viewer to turn it back."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    return pillow_bytes([cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)], "JPEG", quality=95, exif=exif)


def image_corpus(face: np.ndarray, bomb: bytes) -> dict[str, tuple[bytes, np.ndarray | None, float]]:
    """IMAGES file name -> (bytes, the BGR image read_image should give or None, allowed mean abs error)."""
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    alpha = np.dstack([face, np.tile(np.linspace(0, 255, face.shape[1]).astype(np.uint8), (face.shape[0], 1))])
    jpeg, png = encoded(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 95]), encoded(".png", face)
    return {
        "zero_byte.jpg": (b"", None, 0.0),
        "truncated_jpeg.jpg": (jpeg[: int(len(jpeg) * 0.6)], None, 0.0),
        "truncated_png.png": (png[: int(len(png) * 0.6)], None, 0.0),
        "alpha.png": (encoded(".png", alpha), face, 0.0),
        "grayscale.jpg": (
            encoded(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95]),
            cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR),
            2.0,
        ),
        "sixteen_bit.png": (encoded(".png", face.astype(np.uint16) * 257), face, 0.0),
        "cmyk.jpg": (cmyk_jpeg(face), face, 4.0),
        "one_pixel.png": (encoded(".png", face[:1, :1]), face[:1, :1], 0.0),
        "bomb.png": (bomb, None, 0.0),
        "not_an_image.jpg": (b"this is a text file, not a photo\n", None, 0.0),
        "exif_rotated.jpg": (exif_orientation_6(face), cv2.rotate(face, cv2.ROTATE_90_COUNTERCLOCKWISE), 4.0),
        "multipage.tif": (pillow_bytes([face, np.zeros_like(face)], "TIFF"), face, 0.0),
        "palette.gif": (pillow_bytes([face], "GIF"), face, 6.0),
        "netpbm.ppm": (encoded(".ppm", face), face, 0.0),
    }


def write_predict_only(folder: Path, face: np.ndarray) -> None:
    """PREDICT_ONLY's files in `folder`. Each key is the name as lipseg prints it: the newline escaped."""
    os.mkfifo(folder / "fifo.jpg")
    (folder / "dev_zero.png").symlink_to("/dev/zero")
    (folder / "..jpg").write_bytes(encoded(".jpg", face))
    jpeg = encoded(".jpg", face)
    (folder / "new\nline.jpg").write_bytes(jpeg[: len(jpeg) // 2])


def write_images(folder: Path, face: np.ndarray, bomb: bytes) -> dict[str, tuple[np.ndarray | None, float]]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, pixels, tolerance) in image_corpus(face, bomb).items():
        (folder / name).write_bytes(data)
        expected[name] = (pixels, tolerance)
    assert set(expected) == set(IMAGES)
    return expected


def write_bad_dataset(root: Path, synthetic_dir: Path, bomb: bytes) -> dict[str, str]:
    """The whole CORPUS as one Helen-layout dataset, plus good faces so that every split keeps some.
    Returns {name: expected crop-stage outcome} for every listed name; plain_0 is listed twice (cropped
    once, plus a duplicate row) and ../../y in no list (an 'unlisted' row)."""
    sources = load_split(synthetic_dir, "train")[0]
    (root / "images").mkdir(parents=True)
    (root / "annotation").mkdir()
    annotation_number = iter(range(1, 1000))
    plain = {f"plain_{index}": record for index, record in enumerate(sources[:8])}

    def annotate(name: str, record: Record, text: str | None = None, file_name: str | None = None) -> None:
        text = format_helen_annotation(name, record.points) if text is None else text
        (root / "annotation" / (file_name or f"{next(annotation_number)}.txt")).write_bytes(text.encode("utf-8"))

    def good_photo(name: str, record: Record) -> None:
        (root / "images" / f"{name}.jpg").write_bytes(record.image_path.read_bytes())

    for name, record in plain.items():
        good_photo(name, record)
        annotate(name, record)
    face_record = sources[8]  # every corpus image is this face, re-encoded
    for file_name in write_images(root / "images", cv2.imread(str(face_record.image_path)), bomb):
        annotate(Path(file_name).stem, face_record)
    record = sources[9]
    lines = format_helen_annotation("x", record.points).split("\r\n")
    for stem in ("too_few", "too_many", "nan", "non_numeric", "far_outside", "lf_only", "cr_only", "bom", "duplicated"):
        good_photo(stem, record)
    body = lines[1:195]
    annotate("too_few", record, "\r\n".join(["too_few", *body[:193]]) + "\r\n", "too_few.txt")
    annotate("too_many", record, "\r\n".join(["too_many", *body, body[-1]]) + "\r\n", "too_many.txt")
    annotate("nan", record, "\r\n".join(["nan", "nan , nan", *body[1:]]) + "\r\n", "nan.txt")
    annotate(
        "non_numeric", record, "\r\n".join(["non_numeric", "left , corner", *body[1:]]) + "\r\n", "non_numeric.txt"
    )
    annotate("far_outside", record, format_helen_annotation("far_outside", record.points + 100_000), "far_outside.txt")
    annotate("lf_only", record, format_helen_annotation("lf_only", record.points).replace("\r\n", "\n"), "lf_only.txt")
    annotate("cr_only", record, format_helen_annotation("cr_only", record.points).replace("\r\n", "\r"), "cr_only.txt")
    annotate("bom", record, "\ufeff" + format_helen_annotation("bom", record.points), "bom.txt")
    annotate("duplicated", record, None, "duplicated.txt")
    annotate("duplicated", record, None, "duplicated_copy.txt")
    annotate("../../x", record, None, "escape.txt")
    annotate("../../y", record, None, "escape_unlisted.txt")
    annotate("no_image", record)
    outcomes = {name: CROPPED for name in plain}
    outcomes |= {
        record_name(key): case.pipeline
        for key, case in PIPELINE_CASES.items()
        if key != "trainnames.txt:plain_0 (twice)"
    }
    del outcomes["../../y"]
    # Test keeps two good faces and one refused photo; everything else is train.
    test_names = ["plain_6", "plain_7", "truncated_jpeg"]
    train_names = [name for name in outcomes if name not in test_names] + ["plain_0"]  # plain_0 twice
    (root / "trainnames.txt").write_text("\n".join(train_names) + "\n")
    (root / "testnames.txt").write_text("\r\n".join(test_names) + "\r\n")
    return outcomes


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def bomb() -> bytes:
    return bomb_png()


@pytest.fixture(scope="session")
def face(synthetic_dir: Path) -> np.ndarray:
    return cv2.imread(str(load_split(synthetic_dir, "train")[0][0].image_path))


@pytest.fixture
def image_folder(
    tmp_path: Path, face: np.ndarray, bomb: bytes
) -> tuple[Path, dict[str, tuple[np.ndarray | None, float]]]:
    folder = tmp_path / "corpus"
    return folder, write_images(folder, face, bomb)


# ---------------------------------------------------------------------------------------------- read_image


def test_every_corpus_image_reads_as_the_table_says(image_folder: tuple[Path, dict]) -> None:
    folder, expected = image_folder
    for name, case in IMAGES.items():
        pixels, tolerance = expected[name]
        if pixels is None:
            with pytest.raises(ImageError) as caught:
                read_image(folder / name)
            assert str(caught.value) == case.read, name
            assert case.read.startswith(caught.value.kind)
            continue
        assert case.read.startswith("decoded"), name
        image = read_image(folder / name)
        assert image.dtype == np.uint8 and image.shape == pixels.shape, name
        assert np.abs(image.astype(np.int16) - pixels).mean() <= tolerance, name


def test_the_bomb_is_refused_from_its_header_without_decoding(
    image_folder: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = image_folder
    bomb_path = folder / "bomb.png"
    assert bomb_path.stat().st_size < 2_000_000  # a real file, small on disk
    assert image_size(bomb_path) == (BOMB_SIDE, BOMB_SIDE)

    def no_decoding(*args: object) -> None:
        raise AssertionError("the bomb reached the decoder")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    started = time.perf_counter()
    with pytest.raises(ImageError, match="over the limit of 100000000"):
        read_image(bomb_path)
    assert time.perf_counter() - started < 0.5
    # The limit is the caller's: a smaller one refuses an ordinary photo, with the sizes in the message.
    with pytest.raises(ImageError, match=r"^image too large: 1 x 1 = 1 pixels, over the limit of 0 "):
        read_image(folder / "one_pixel.png", max_pixels=0)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS from Linux's /proc")
def test_the_bomb_never_costs_memory(image_folder: tuple[Path, dict]) -> None:
    """In a fresh interpreter, so this test's own memory does not hide a peak: decoding would take 2.7 GB.
    VmHWM, the peak RSS of the process image, starts afresh at exec (ru_maxrss keeps the parent's)."""
    folder, _ = image_folder
    script = (
        "import re, sys\n"
        "from lipseg.core.images import ImageError, read_image\n"
        "try:\n    read_image(sys.argv[1])\nexcept ImageError as error:\n    print(error.kind)\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder / "bomb.png")], capture_output=True, text=True, check=True, timeout=60
    )
    kind, peak_kib = result.stdout.splitlines()
    assert kind == "image too large"
    assert int(peak_kib) < 400_000, f"peak RSS {int(peak_kib) // 1024} MiB"


def png_with_alpha(image: np.ndarray) -> np.ndarray:
    return np.dstack([image, np.full(image.shape[:2], 200, np.uint8)])


@pytest.mark.parametrize(
    ("extension", "convert"),
    [
        (".jpg", None),
        (".png", None),
        (".bmp", None),
        (".tiff", None),
        (".webp", None),
        (".ppm", None),
        (".pam", None),
        (".pgm", lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)),
        (".png", png_with_alpha),
    ],
)
def test_declared_size_is_read_from_every_supported_header(
    tmp_path: Path, face: np.ndarray, extension: str, convert
) -> None:
    image = np.ascontiguousarray(face[:97, :61])  # not square, odd sizes: width and height cannot be swapped unseen
    path = tmp_path / f"photo{extension}"
    path.write_bytes(encoded(extension, image if convert is None else convert(image)))
    assert image_size(path) == (97, 61)
    assert read_image(path).shape == (97, 61, 3)


@pytest.mark.parametrize(
    "save",
    [
        {"format": "GIF"},
        {"format": "WEBP", "lossless": True},
        {"format": "WEBP", "quality": 80},
        {"format": "WEBP", "quality": 80, "mode": "RGBA"},
        {"format": "JPEG", "progressive": True},
        {"format": "TIFF", "compression": "tiff_lzw"},
        {"format": "BMP", "mode": "P"},
    ],
)
def test_declared_size_of_other_encoders(tmp_path: Path, face: np.ndarray, save: dict) -> None:
    from PIL import Image

    options = dict(save)
    picture = Image.fromarray(np.ascontiguousarray(face[:97, :61, ::-1])).convert(options.pop("mode", "RGB"))
    path = tmp_path / "photo.bin"
    picture.save(path, **options)
    assert image_size(path) == (97, 61)
    assert read_image(path).shape == (97, 61, 3)


def test_a_jpeg_is_complete_with_trailing_bytes_and_an_exif_thumbnail_cannot_fake_the_end(
    tmp_path: Path, face: np.ndarray
) -> None:
    jpeg = encoded(".jpg", face)
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes(jpeg + b"\x00" * 100 + b"camera maker notes")
    assert read_image(trailing).shape == face.shape
    # An APP1 segment whose payload holds a whole JPEG (end marker included), then the photo cut short.
    thumbnail = encoded(".jpg", face[:16, :16])
    app1 = b"\xff\xe1" + (len(thumbnail) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumbnail
    cut = tmp_path / "cut_with_thumbnail.jpg"
    cut.write_bytes(jpeg[:2] + app1 + jpeg[2 : int(len(jpeg) * 0.7)])
    assert image_size(cut) == face.shape[:2]  # the header itself is intact
    with pytest.raises(ImageError, match="^" + TRUNCATED_JPEG + "$"):
        read_image(cut)


def test_unreadable_and_header_only_files(tmp_path: Path, face: np.ndarray) -> None:
    with pytest.raises(ImageError, match="^image file cannot be read: No such file or directory$"):
        read_image(tmp_path / "missing.jpg")
    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(encoded(".png", face)[:20])
    with pytest.raises(ImageError, match="^truncated image: the file ends inside its header$"):
        read_image(header_only)
    garbage = tmp_path / "garbage.png"  # every chunk whole, the pixel data not zlib
    garbage.write_bytes(
        encoded(".png", face)[:33] + png_chunk(b"IDAT", b"not zlib data" * 10) + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="^image cannot be decoded: corrupt PNG data$"):
        read_image(garbage)
    zero = tmp_path / "zero_width.bmp"
    data = bytearray(encoded(".bmp", face))
    data[18:22] = (0).to_bytes(4, "little")
    zero.write_bytes(bytes(data))
    with pytest.raises(
        ImageError, match=r"^image cannot be decoded: corrupt BMP header \(no pixel mode, or a width or height of 0\)$"
    ):
        read_image(zero)


# ---------------------------------------------------------------------------------------------- records and crops


def test_make_crops_names_every_image_outcome(image_folder: tuple[Path, dict], synthetic_dir: Path) -> None:
    folder, _ = image_folder
    record = load_split(synthetic_dir, "train")[0][0]  # the face the corpus images were made from
    records = [Record(Path(name).stem, folder / name, record.annotation_path, record.points) for name in IMAGES]
    crops = make_crops(records, CropGeometry(), None, progress=False)
    outcomes = {reject.name: reject.reason for reject in crops.rejects}
    outcomes |= {str(name): CROPPED for name in crops.names}
    assert outcomes == {Path(name).stem: case.pipeline for name, case in IMAGES.items()}
    assert {reject.file for reject in crops.rejects if reject.reason != LIPS_OUTSIDE} <= {
        str(folder / name) for name in IMAGES
    }


def test_read_record_images_reports_what_it_skips(image_folder: tuple[Path, dict], synthetic_dir: Path) -> None:
    folder, _ = image_folder
    record = load_split(synthetic_dir, "train")[0][0]
    records = [
        Record("alpha", folder / "alpha.png", record.annotation_path, record.points),
        Record("bomb", folder / "bomb.png", record.annotation_path, record.points),
    ]
    rejects: list = []
    assert [item.name for item, _ in read_record_images(records, rejects, progress=False)] == ["alpha"]
    assert [(reject.name, reject.reason) for reject in rejects] == [("bomb", TOO_LARGE)]
    rejects.clear()  # a limit of the caller's: here below the 128 x 128 face
    assert list(read_record_images(records[:1], rejects, max_pixels=100, progress=False)) == []
    assert rejects[0].kind == "image too large"


def test_a_bad_label_file_is_a_reject_not_a_crash(tmp_path: Path, face: np.ndarray) -> None:
    from lipseg.data.faceparts import DEFAULT_CLASS_TABLES, list_records
    from lipseg.segmentation.crops import make_parts_sources

    root = tmp_path / "lapa"
    for sub in ("images", "labels"):
        (root / "train" / sub).mkdir(parents=True)
    labels = np.zeros(face.shape[:2], np.uint8)
    labels[60:70, 40:90] = 7
    for name in ("good", "cut"):
        cv2.imwrite(str(root / "train/images" / f"{name}.jpg"), face)
        cv2.imwrite(str(root / "train/labels" / f"{name}.png"), labels)
    label = root / "train/labels/cut.png"
    label.write_bytes(label.read_bytes()[:60])
    parts, _ = list_records("lapa", root, "train")
    crops = make_parts_sources(parts, DEFAULT_CLASS_TABLES["lapa"], CropGeometry(32, 0.5), progress=False)
    assert crops.names.tolist() == ["good"]
    assert [(r.name, r.file, r.reason) for r in crops.rejects] == [
        ("cut", str(label), f"bad label: {label}: cannot decode label file ({TRUNCATED_PNG})")
    ]


# ---------------------------------------------------------------------------------------------- annotations and lists


def test_load_split_gives_each_annotation_and_list_case_its_reason(
    tmp_path: Path, synthetic_dir: Path, bomb: bytes
) -> None:
    root = tmp_path / "raw"
    outcomes = write_bad_dataset(root, synthetic_dir, bomb)
    records, rejects = load_split(root, "train")
    kept = [record.name for record in records]
    found = {reject.name: reject.reason for reject in rejects}
    for key, case in PIPELINE_CASES.items():
        name = record_name(key)
        if name in ("truncated_jpeg", "../../y"):
            continue  # listed in test / in no list
        if key.startswith("images/") and key != "images/zero_byte.jpg" or case.pipeline in (CROPPED, LIPS_OUTSIDE):
            assert name in kept, key  # images are read at crop time; only an empty file shows in the listing
        else:
            assert found[name] == case.pipeline, key
    assert kept.count("plain_0") == 1 and len(found) == len(rejects)
    assert {name for name, outcome in outcomes.items() if outcome == CROPPED} - set(kept) == {
        "plain_6",
        "plain_7",
    }  # in test
    unlisted = unlisted_annotation_rejects(root)
    assert [(r.name, Path(r.file).name, r.reason) for r in unlisted] == [
        ("../../y", "escape_unlisted.txt", CORPUS["annotation/escape_unlisted.txt"].pipeline)
    ]


def test_an_oversized_annotation_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "annotation").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotation" / "1.txt").write_bytes(b"huge\r\n" + b"1.0 , 2.0\r\n" * 200_000)
    (tmp_path / "trainnames.txt").write_text("huge\n")
    records, rejects = load_split(tmp_path, "train")
    assert records == [] and rejects[0].reason == "bad annotation: 2200006 bytes, too large for a Helen annotation"


# ------------------------------------------------------------------------------------ the crop stage, end to end


def run_crop_stage(workdir: Path) -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    crop = params["crop"] | {"augment": params["crop"]["augment"] | {"copies": 1}}
    (workdir / "params.yaml").write_text(yaml.safe_dump({"crop": crop}))
    runpy.run_path(str(PROJECT_ROOT / "stages" / "crop.py"), run_name="__main__")


def crop_stage_run(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("lipseg")
    runs = client.search_runs([experiment.experiment_id], "tags.`lipseg.stage` = 'crop'")
    assert len(runs) == 1
    return runs[0]


def read_rejects_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_crop_stage_reports_every_reject_and_its_counts(
    tmp_path: Path, mlflow_store: str, synthetic_dir: Path, bomb: bytes, capsys: pytest.CaptureFixture
) -> None:
    outcomes = write_bad_dataset(tmp_path / "data" / "raw", synthetic_dir, bomb)
    run_crop_stage(tmp_path)
    rows = read_rejects_csv(tmp_path / "reports" / "crop" / "rejects.csv")
    assert list(rows[0]) == ["split", "name", "file", "reason"]
    manifest = json.loads((tmp_path / "data" / "crops" / "manifest.json").read_text())
    cropped = {name for names in manifest["names"].values() for name in names}
    # Every listed name has exactly its table outcome: cropped, or one row with the reason.
    by_name: dict[str, list[str]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row["reason"])
    assert by_name.pop("plain_0") == ["duplicate name in list"] and "plain_0" in cropped
    assert by_name.pop("../../y") == ["annotation names an image outside the dataset"]
    assert {name: reasons for name, reasons in by_name.items()} == {
        name: [outcome] for name, outcome in outcomes.items() if outcome != CROPPED
    }
    assert cropped == {name for name, outcome in outcomes.items() if outcome == CROPPED}
    assert {row["split"] for row in rows if row["name"] == "../../y"} == {"unlisted"}
    assert {row["split"] for row in rows if row["name"] == "truncated_jpeg"} == {"test"}
    assert manifest["max_pixels"] == DEFAULT_MAX_PIXELS and manifest["rejected"] == len(rows)
    # The counts by kind: in the manifest, the stage log and MLflow.
    kinds = manifest["rejected_by_kind"]
    assert kinds["bad annotation"] == 4 and kinds["truncated image"] == 2 and kinds["image too large"] == 1
    assert sum(kinds.values()) == len(rows)
    log = capsys.readouterr().out
    summary = f"crop: {len(rows)} rejected: " + ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    assert summary in log
    assert f"crop: rejected test/truncated_jpeg: {TRUNCATED_JPEG} (data/raw/images/truncated_jpeg.jpg)" in log
    metrics = crop_stage_run(mlflow_store).data.metrics
    assert metrics["rejected"] == len(rows)
    assert metrics["rejected.bad_annotation"] == 4 and metrics["rejected.truncated_image"] == 2
    assert metrics["rejected.image_too_large"] == 1 and metrics["rejected.image_file_is_empty_0_bytes"] == 1


def test_crop_stage_fails_clearly_when_everything_is_rejected(
    tmp_path: Path, mlflow_store: str, synthetic_dir: Path, bomb: bytes
) -> None:
    raw = tmp_path / "data" / "raw"
    write_bad_dataset(raw, synthetic_dir, bomb)
    (raw / "trainnames.txt").write_text("bomb\nzero_byte\nnan\n../../x\n")
    (raw / "testnames.txt").write_text("truncated_jpeg\nno_files\n")
    with pytest.raises(DatasetError) as caught:
        run_crop_stage(tmp_path)
    # Listed: 4 rejected by the listing, 2 photos refused; unlisted now: 4 broken annotation files and ../../y.
    message = str(caught.value)
    assert message.startswith("crop: no usable images left in train, val, test; 11 rejected: 4 bad annotation, ")
    for count_and_kind in (
        "1 image file is empty (0 bytes)",
        "1 name points outside the dataset",
        "1 no annotation file names this image",
        "1 duplicate annotation",
        "1 annotation names an image outside the dataset",
        "1 image too large",
        "1 truncated image",
    ):
        assert count_and_kind in message
    assert message.endswith(" (each reject with its file and reason: reports/crop/rejects.csv)")
    rows = read_rejects_csv(tmp_path / "reports" / "crop" / "rejects.csv")
    assert len(rows) == 11 and {row["name"] for row in rows} >= {
        "bomb",
        "zero_byte",
        "nan",
        "../../x",
        "truncated_jpeg",
        "no_files",
    }
    assert not (tmp_path / "data" / "crops").exists()
    run = crop_stage_run(mlflow_store)
    assert (
        run.info.status == "FAILED"
        and run.data.metrics["rejected"] == 11
        and run.data.metrics["rejected.bad_annotation"] == 4
    )


# ---------------------------------------------------------------------------------------------- lipseg predict


def test_predict_names_each_bad_file_and_still_processes_the_rest(
    tmp_path: Path,
    face: np.ndarray,
    bomb: bytes,
    synthetic_dir: Path,
    tiny_model_folder: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from lipseg.inference.cli import main

    folder = tmp_path / "photos"
    big_face = cv2.resize(face, (320, 320), interpolation=cv2.INTER_CUBIC)  # dlib's HOG finds faces this size
    write_images(folder, big_face, bomb)
    write_predict_only(folder, big_face)
    for index, record in enumerate(load_split(synthetic_dir, "test")[0][:2]):
        cv2.imwrite(str(folder / f"good_{index}.jpg"), cv2.resize(cv2.imread(str(record.image_path)), (320, 320)))
    out = tmp_path / "out"
    code = main(
        ["predict", str(folder), "--out", str(out), "--model", str(tiny_model_folder), "--quiet", "--no-overlay"]
    )
    assert code == 1
    stderr = capsys.readouterr().err
    assert all(line.startswith("lipseg: ") for line in stderr.splitlines()), stderr  # no line forged by a name
    cases = {**IMAGES, **PREDICT_ONLY}
    failed = {name: case for name, case in cases.items() if case.predict.startswith("failed: ")}
    for name, case in failed.items():
        message = case.predict.removeprefix("failed: ").split(", the name printed")[0]
        assert f"lipseg: error: {folder / name}: {message}\n" in stderr, name  # as it happens
        assert f"lipseg: failed: {folder / name}: {message}\n" in stderr, name  # and in the summary
        assert not (out / f"{Path(name).stem}.json").exists()
    processed = [name for name, case in cases.items() if case.predict.startswith(PROCESSED)] + [
        "good_0.jpg",
        "good_1.jpg",
    ]
    assert f"lipseg: {len(processed)} images," in stderr and f"{len(failed)} failed" in stderr
    for name in processed:
        stem = name if name == "..jpg" else Path(name).stem
        payload = json.loads((out / f"{stem}.json").read_text())
        assert (out / f"{stem}.png").is_file()
        if "no face" in cases.get(name, Case("")).predict:
            assert payload["faces"] == [] and payload["image_size"] == [1, 1]
    rotated = json.loads((out / "exif_rotated.json").read_text())
    assert rotated["exif_orientation"] == 6 and len(rotated["faces"]) == 1  # stored sideways, HOG finds none
    assert rotated["notes"] == ["EXIF orientation 6: turned as a viewer shows it"]
    assert json.loads((out / "multipage.json").read_text())["notes"] == [
        "TIFF with 2 pages or frames: only the first is read"
    ]
    assert f"lipseg: note: {folder / 'multipage.tif'}: TIFF with 2 pages or frames: only the first is read\n" in stderr
    assert json.loads((out / "good_0.json").read_text())["notes"] == []


def test_predict_max_pixels_flag(
    tmp_path: Path, face: np.ndarray, tiny_model_folder: Path, capsys: pytest.CaptureFixture
) -> None:
    from lipseg.inference.cli import main

    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), face)
    args = [
        "predict",
        str(photo),
        "--out",
        str(tmp_path / "out"),
        "--model",
        str(tiny_model_folder),
        "--quiet",
        "--engine",
        "torch",
    ]
    assert main([*args, "--max-pixels", "16383"]) == 1
    assert "image too large: 128 x 128 = 16384 pixels, over the limit of 16383" in capsys.readouterr().err
    assert main([*args, "--max-pixels", "16384"]) == 0
    with pytest.raises(SystemExit):
        main([*args, "--max-pixels", "0"])


def test_robustness_doc_table_quotes_the_corpus() -> None:
    """The robustness doc's table is exactly what `tests/data/test_bad_inputs.py --readme` prints from CORPUS."""
    table = readme_table()
    assert table.count("\n") == len(CORPUS) + 2
    assert table in (Path(__file__).resolve().parents[2] / "docs" / "robustness.md").read_text(encoding="utf-8")


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    segments, start = [], 2
    while data[start + 1] != 0xDA:
        length = int.from_bytes(data[start + 2 : start + 4], "big")
        segments.append((data[start + 1], data[start : start + 2 + length]))
        start += 2 + length
    return [*segments, (0xDA, data[start:])]


def _tiff(entries: list[tuple[int, int, int]], pixels: bytes) -> bytes:
    """Little-endian, one uncompressed 8-bit grey strip; entries (tag, type, value); 273 = strip offset."""
    ifd_size = 2 + 12 * len(entries) + 4
    out = b"II*\x00" + (8).to_bytes(4, "little") + len(entries).to_bytes(2, "little")
    for tag, kind, value in entries:
        value = 8 + ifd_size if tag == 273 else value
        packed = (
            value.to_bytes(2, "little") + b"\x00\x00" if kind == 3 else value.to_bytes(4, "little", signed=kind == 9)
        )
        out += tag.to_bytes(2, "little") + kind.to_bytes(2, "little") + (1).to_bytes(4, "little") + packed
    return out + b"\x00" * 4 + pixels


def test_headers_that_show_the_decoder_another_size_are_refused(tmp_path: Path, face: np.ndarray) -> None:
    """Files that tell a naive header parser one size and OpenCV a larger one (review findings) are read
    the decoder's way or refused: none decodes past the pixel limit."""
    small = cv2.resize(face, (8, 8))
    data = cv2.imencode(".jpg", small)[1].tobytes()
    segments = _jpeg_segments(data)
    frame = next(segment for marker, segment in segments if marker == 0xC0)
    large_frame = bytearray(frame)
    large_frame[5:9] = (200).to_bytes(2, "big") + (300).to_bytes(2, "big")
    # libjpeg skips a stuffed FF 00 between segments and meets the large frame first; a parser that reads
    # FF 00 as a segment with a length jumps over it to the small one.
    hidden = bytes(large_frame) + b"\xff\xe1" + (2 + len(frame)).to_bytes(2, "big")
    jpeg = (
        b"\xff\xd8\xff\x00"
        + (2 + len(hidden)).to_bytes(2, "big")
        + hidden
        + frame
        + b"".join(segment for marker, segment in segments if marker != 0xC0)
    )
    tiff = _tiff(
        [
            (256, 9, 300),
            (256, 4, 1),
            (257, 4, 200),
            (258, 3, 8),
            (259, 3, 1),
            (262, 3, 1),
            (273, 4, 0),
            (277, 3, 1),
            (278, 4, 200),
            (279, 4, 300 * 200),
        ],
        bytes(300 * 200),
    )
    pnm = b"P6\n# a comment\x0c 2 2\n300 200\n255\n" + bytes(300 * 200 * 3)
    for name, payload in (("hidden_frame.jpg", jpeg), ("repeated_width.tif", tiff), ("formfeed_comment.ppm", pnm)):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ImageError, match="image too large|image cannot be decoded"):
            read_image(path, max_pixels=1000)
    # A stray byte between segments is only a warning to libjpeg, so it is no reason to refuse the photo.
    length = int.from_bytes(data[4:6], "big")
    padded = tmp_path / "stray_byte.jpg"
    padded.write_bytes(data[: 4 + length] + b"\x00" + data[4 + length :])
    assert read_image(padded).shape == (8, 8, 3)


def test_special_and_oversized_files_are_refused_unread(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it would block until a writer came
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)
    padded = tmp_path / "padded.png"
    padded.write_bytes(
        cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes() + bytes(17 << 20)
    )  # over 8 bytes a pixel + 16 MiB of metadata
    with pytest.raises(ImageError, match="image too large: a file of"):
        read_image(padded, max_pixels=100)


def outcome_text(case: Case) -> str:
    if not case.read and not case.pipeline:
        return f"predict: {case.predict}"
    if case.read and case.read == case.pipeline and case.predict == f"failed: {case.read}":
        return f"refused everywhere: `{case.read}`"
    if not case.read:
        return "cropped" if case.pipeline == CROPPED else f"rejected: `{case.pipeline}`"
    pipeline = "cropped" if case.pipeline == CROPPED else f"rejected `{case.pipeline}`"
    return f"{case.read}; pipeline: {pipeline}; predict: {case.predict}"


def readme_table() -> str:
    lines = ["| generated file | what | outcome |", "|---|---|---|"]
    lines += [f"| `{key}` | {case.what} | {outcome_text(case)} |" for key, case in CORPUS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__" and "--readme" in sys.argv:
    print(readme_table(), end="")
