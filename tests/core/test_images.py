"""The image reader's use of Pillow: its header readers, its checks for a cut file, and its pixel guard left aside."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from lipseg.core.images import ImageError, image_metadata, image_size, read_image

PICTURE = np.random.default_rng(0).integers(0, 255, (97, 61, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes, checksum: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if checksum is None else checksum
    return len(data).to_bytes(4, "big") + kind + data + crc.to_bytes(4, "big")


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of zeros: large on paper, a few hundred KB on disk."""
    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def pillow_saved(format_name: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PICTURE[..., ::-1].copy()).save(buffer, format_name, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("suffix", "data", "keep"),
    [
        (".jpg", cv2.imencode(".jpg", PICTURE)[1].tobytes(), 100),
        (".png", cv2.imencode(".png", PICTURE)[1].tobytes(), 30),
        (".bmp", cv2.imencode(".bmp", PICTURE)[1].tobytes(), 20),
        (".tif", cv2.imencode(".tiff", PICTURE)[1].tobytes(), 12),
        (".webp", cv2.imencode(".webp", PICTURE)[1].tobytes(), 20),
        (".ppm", cv2.imencode(".ppm", PICTURE)[1].tobytes(), 3),
        (".gif", pillow_saved("GIF"), 8),
    ],
)
def test_a_file_cut_inside_its_header_is_truncated_in_every_format(
    tmp_path: Path, suffix: str, data: bytes, keep: int
) -> None:
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:keep])
    with pytest.raises(ImageError, match="^truncated image: the file ends inside its header$"):
        read_image(path)


def test_pillows_own_pixel_guard_neither_refuses_nor_warns(tmp_path: Path) -> None:
    """Pillow warns from 89 MP and refuses from 179 MP; the caller's limit replaces both, with the size said."""
    path = tmp_path / "large.png"
    path.write_bytes(blank_png(20_000, 10_000))  # 200 MP
    guard_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (10_000, 20_000)
        assert image_metadata(path).notes() == []
        with pytest.raises(ImageError, match=r"^image too large: 20000 x 10000 = 200000000 pixels, over the limit of "):
            read_image(path, max_pixels=199_999_999)
    assert guard_before == Image.MAX_IMAGE_PIXELS  # other Pillow users in the process keep theirs


def test_bigtiff_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.tif"
    path.write_bytes(pillow_saved("TIFF", big_tiff=True))
    assert image_size(path) == (97, 61)
    assert np.array_equal(read_image(path), PICTURE)


def test_a_bad_checksum_in_an_ancillary_png_chunk(tmp_path: Path) -> None:
    """After the pixels, libpng skips the chunk and so does the check for a cut file: the photo is read.
    Before them, Pillow's header reader refuses it, naming the chunk."""
    png = cv2.imencode(".png", PICTURE)[1].tobytes()
    comment = png_chunk(b"tEXt", b"Comment\x00hello", checksum=0)
    damaged = tmp_path / "comment.png"
    damaged.write_bytes(png[:-12] + comment + png[-12:])
    assert np.array_equal(read_image(damaged), PICTURE)
    damaged.write_bytes(png[:-12] + comment)  # and no IEND: Pillow's walk stops at the checksum, libpng at the end
    with pytest.raises(ImageError, match="^image cannot be decoded: corrupt PNG data$"):
        read_image(damaged)
    damaged.write_bytes(png[:33] + comment + png[33:])
    with pytest.raises(ImageError, match=r"^image cannot be decoded: corrupt PNG header \(.*checksum in b'tEXt'\)\)$"):
        read_image(damaged)


def test_a_progressive_jpeg_cut_between_its_scans_is_truncated(tmp_path: Path) -> None:
    jpeg = pillow_saved("JPEG", progressive=True, quality=90)
    second_scan = jpeg.index(b"\xff\xda", jpeg.index(b"\xff\xda") + 2)
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg[:second_scan])
    with pytest.raises(ImageError, match="^truncated image: the JPEG ends before its end-of-image marker$"):
        read_image(path)


def test_a_pam_pillow_does_not_read_is_still_sized_and_read(tmp_path: Path) -> None:
    path = tmp_path / "photo.pam"
    path.write_bytes(cv2.imencode(".pam", PICTURE)[1].tobytes())
    assert image_size(path) == (97, 61)
    assert np.array_equal(read_image(path), PICTURE)
    assert image_metadata(path).notes() == []


def test_a_gif_frame_beyond_its_screen_meets_pillows_guard_as_too_large(tmp_path: Path) -> None:
    """The screen says 1 x 1; only Pillow's reader, walking to the first frame, sees 30000 x 30000."""
    gif = bytearray(pillow_saved("GIF"))
    gif[6:10] = (1).to_bytes(2, "little") * 2
    descriptor = gif.index(b",", 13 + 3 * 2 ** ((gif[10] & 7) + 1))  # after the global colour table
    gif[descriptor + 5 : descriptor + 9] = (30_000).to_bytes(2, "little") * 2
    path = tmp_path / "frame.gif"
    path.write_bytes(bytes(gif))
    with pytest.raises(ImageError, match=r"^image too large: the GIF header: Image size \(900000000 pixels\)"):
        read_image(path)
