"""The one image reader: every photo, label mask and `lipseg predict` input is read by `read_image`.

A file is refused with a named `ImageError` instead of returning None or crashing: the size the header
declares is checked against a pixel limit before anything is decoded, so a decompression bomb costs a
header read, and a JPEG or PNG cut short is refused rather than decoded with grey rows.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

DEFAULT_MAX_PIXELS = 100_000_000  # a large camera photo is 50 MP; a decompression bomb declares gigapixels
# `lipseg predict` on a laptop: detection peaks near 16 bytes a pixel (dlib's RGB copy and HOG pyramid on top
# of the decoded photo), so 50 MP, the largest camera photos, stays near 1 GB; upsampling is bounded by it too.
PREDICT_MAX_PIXELS = 50_000_000
PIXEL_LIMIT_SETTINGS = "crop.max_pixels in params.yaml, lipseg predict --max-pixels"

# The kinds of ImageError: each is the start of the message, so rejects can be counted by kind.
IMAGE_EMPTY = "image file is empty (0 bytes)"
IMAGE_UNREADABLE = "image file cannot be read"
IMAGE_TOO_LARGE = "image too large"
IMAGE_TRUNCATED = "truncated image"
IMAGE_UNDECODABLE = "image cannot be decoded"
SUPPORTED_FORMATS = "JPEG, PNG, BMP, GIF, TIFF, WebP or PNM"
# The file name suffixes of those formats: what a folder search or a dataset lookup takes for an image.
IMAGE_SUFFIXES = (
    *(".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"),
    *(".ppm", ".pgm", ".pbm", ".pnm", ".pam"),
)


class ImageError(ValueError):
    """An image file that cannot be used; the message, '<kind>' or '<kind>: <detail>', says why."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "JPEG", "PNG", ...
    width: int
    height: int
    scan_offset: int = 0  # JPEG: where the first scan starts (the end-of-image marker must follow it)


class _ShortHeader(Exception):
    """The file ends inside its header."""


def _read_exact(handle: BinaryIO, count: int) -> bytes:
    data = handle.read(count)
    if len(data) < count:
        raise _ShortHeader
    return data


# JPEG start-of-frame markers (C4 = DHT, C8 = reserved, CC = DAC are not frames).
_JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _next_jpeg_marker(handle: BinaryIO) -> int:
    """The next marker as libjpeg's next_marker finds it: stray bytes and stuffed FF 00 pairs between
    segments are skipped, FF fill bytes too. Reading it any other way would let a file show us one frame
    header and the decoder another."""
    while True:
        while _read_exact(handle, 1) != b"\xff":
            pass
        marker = _read_exact(handle, 1)[0]
        while marker == 0xFF:
            marker = _read_exact(handle, 1)[0]
        if marker != 0x00:
            return marker


def _jpeg_header(handle: BinaryIO) -> ImageHeader:
    """Walk the marker segments by their lengths (so an EXIF thumbnail's own markers are skipped) to the
    first frame header for the size (the one libjpeg uses; it refuses a second), and on to the first scan."""
    handle.seek(2)
    size: tuple[int, int] | None = None
    while True:
        marker = _next_jpeg_marker(handle)
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if marker == 0xD9:
            raise ImageError(IMAGE_UNDECODABLE, "corrupt JPEG (end of image before any scan)")
        length = int.from_bytes(_read_exact(handle, 2), "big")
        if length < 2:
            raise ImageError(IMAGE_UNDECODABLE, "corrupt JPEG (bad segment length)")
        if marker == 0xDA:
            if size is None:
                raise ImageError(IMAGE_UNDECODABLE, "corrupt JPEG (no frame header before the scan)")
            return ImageHeader("JPEG", *size, scan_offset=handle.tell() - 4)
        segment = _read_exact(handle, length - 2)
        if marker in _JPEG_FRAMES and size is None:
            size = int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big")


def _png_header(handle: BinaryIO) -> ImageHeader:
    chunk = _read_exact(handle, 24)
    if chunk[12:16] != b"IHDR":
        raise ImageError(IMAGE_UNDECODABLE, "corrupt PNG (no IHDR chunk first)")
    return ImageHeader("PNG", int.from_bytes(chunk[16:20], "big"), int.from_bytes(chunk[20:24], "big"))


def _bmp_header(handle: BinaryIO) -> ImageHeader:
    header = _read_exact(handle, 26)
    if int.from_bytes(header[14:18], "little") == 12:  # OS/2 core header: 16-bit sizes
        return ImageHeader("BMP", int.from_bytes(header[18:20], "little"), int.from_bytes(header[20:22], "little"))
    # A negative height means top-down rows.
    width = int.from_bytes(header[18:22], "little", signed=True)
    height = int.from_bytes(header[22:26], "little", signed=True)
    return ImageHeader("BMP", abs(width), abs(height))


def _gif_header(handle: BinaryIO) -> ImageHeader:
    head = _read_exact(handle, 10)
    return ImageHeader("GIF", int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little"))


def _tiff_header(handle: BinaryIO) -> ImageHeader:
    head = _read_exact(handle, 8)
    order = "little" if head[:2] == b"II" else "big"
    if int.from_bytes(head[2:4], order) != 42:
        raise ImageError(IMAGE_UNDECODABLE, "BigTIFF is not supported")
    handle.seek(int.from_bytes(head[4:8], order))
    count = int.from_bytes(_read_exact(handle, 2), order)
    entries = _read_exact(handle, 12 * min(count, 4096))
    found: dict[int, int] = {}
    for start in range(0, len(entries), 12):
        tag, kind = (
            int.from_bytes(entries[start : start + 2], order),
            int.from_bytes(entries[start + 2 : start + 4], order),
        )
        if tag not in (256, 257):
            continue
        # ImageWidth / ImageLength: anything but one SHORT or LONG entry each is ambiguous (libtiff reads
        # other integer types and keeps the first of two), so it is refused rather than guessed.
        if kind not in (3, 4) or tag in found:
            raise ImageError(IMAGE_UNDECODABLE, "TIFF with a repeated or non-SHORT/LONG image width or length")
        found[tag] = int.from_bytes(entries[start + 8 : start + (10 if kind == 3 else 12)], order)
    if 256 not in found or 257 not in found:
        raise ImageError(IMAGE_UNDECODABLE, "corrupt TIFF (no image width and length in the first directory)")
    return ImageHeader("TIFF", found[256], found[257])


def _webp_header(handle: BinaryIO) -> ImageHeader:
    head = _read_exact(handle, 30)
    chunk, payload = head[12:16], head[20:]
    if chunk == b"VP8 " and payload[3:6] == b"\x9d\x01\x2a":
        return ImageHeader(
            "WebP", int.from_bytes(payload[6:8], "little") & 0x3FFF, int.from_bytes(payload[8:10], "little") & 0x3FFF
        )
    if chunk == b"VP8L" and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return ImageHeader("WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        return ImageHeader(
            "WebP", int.from_bytes(payload[4:7], "little") + 1, int.from_bytes(payload[7:10], "little") + 1
        )
    raise ImageError(IMAGE_UNDECODABLE, "corrupt WebP (unknown first chunk)")


def _pnm_header(handle: BinaryIO) -> ImageHeader:
    # As OpenCV reads it: a comment runs from '#' to CR or LF only, tokens split on ASCII whitespace only.
    tokens = re.sub(rb"#[^\r\n]*", b" ", handle.read(4096)).split()
    try:
        if tokens[0] == b"P7":  # PAM: WIDTH / HEIGHT lines
            return ImageHeader("PNM", int(tokens[tokens.index(b"WIDTH") + 1]), int(tokens[tokens.index(b"HEIGHT") + 1]))
        return ImageHeader("PNM", int(tokens[1]), int(tokens[2]))
    except (IndexError, ValueError):
        raise ImageError(IMAGE_UNDECODABLE, "corrupt PNM (no width and height in the header)") from None


def _header_reader(signature: bytes):
    if signature.startswith(b"\xff\xd8"):
        return _jpeg_header
    if signature.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_header
    if signature.startswith(b"BM"):
        return _bmp_header
    if signature.startswith((b"GIF87a", b"GIF89a")):
        return _gif_header
    if signature.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return _tiff_header
    if signature.startswith(b"RIFF") and signature[8:12] == b"WEBP":
        return _webp_header
    if len(signature) >= 2 and signature[0:1] == b"P" and signature[1:2] in b"1234567":
        return _pnm_header
    return None


def read_image_header(handle: BinaryIO) -> ImageHeader:
    """Format and declared size of the image in an open file, from its header only (nothing decoded)."""
    reader = _header_reader(handle.read(12))
    if reader is None:
        raise ImageError(IMAGE_UNDECODABLE, f"unrecognised format (expected {SUPPORTED_FORMATS})")
    handle.seek(0)
    try:
        header = reader(handle)
    except _ShortHeader:
        raise ImageError(IMAGE_TRUNCATED, "the file ends inside its header") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageError(
            IMAGE_UNDECODABLE, f"the {header.format} header declares a {header.width} x {header.height} image"
        )
    return header


def _checked_header(path: Path, max_pixels: int | None) -> tuple[ImageHeader, int]:
    """(header, byte limit) after the checks every image read starts with: a regular file, not empty and,
    with `max_pixels`, no larger than an image of that many pixels can need and declaring no more."""
    byte_limit = 8 * max_pixels + (16 << 20) if max_pixels is not None else 0
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):  # a FIFO or device named x.jpg would block or never end
            raise ImageError(IMAGE_UNREADABLE, "not a regular file")
        if status.st_size == 0:
            raise ImageError(IMAGE_EMPTY)
        # No image format needs more bytes than 16-bit RGBA pixels plus metadata: more is not an image we read.
        if max_pixels is not None and status.st_size > byte_limit:
            raise ImageError(
                IMAGE_TOO_LARGE,
                f"a file of {status.st_size} bytes, over the {byte_limit} bytes an image of at most "
                f"{max_pixels} pixels can need ({PIXEL_LIMIT_SETTINGS})",
            )
        with Path(path).open("rb") as handle:
            header = read_image_header(handle)
    except OSError as error:
        raise ImageError(IMAGE_UNREADABLE, error.strerror or str(error)) from None
    if max_pixels is not None:
        check_pixel_count(header.width, header.height, max_pixels)
    return header, byte_limit


def check_pixel_count(
    width: int, height: int, max_pixels: int, what: str = "", settings: str = PIXEL_LIMIT_SETTINGS
) -> None:
    """ImageError when `width` x `height` (a photo's, or `what`: a video's frames) passes `max_pixels`."""
    if width * height > max_pixels:
        raise ImageError(
            IMAGE_TOO_LARGE,
            f"{what}{width} x {height} = {width * height} pixels, over the limit of {max_pixels} ({settings})",
        )


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) an image file declares, from its header alone (as read_image would decode it:
    EXIF orientation is ignored there too); the file must be a regular, non-empty file."""
    header, _ = _checked_header(path, None)
    return header.height, header.width


def _png_complete(data: bytes) -> bool:
    """True when the chunks, walked by their lengths, reach IEND inside the file."""
    position = 8
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        if data[position + 4 : position + 8] == b"IEND":
            return True
        position += 12 + length
    return False


def _check_complete(header: ImageHeader, data: bytes) -> None:
    # OpenCV builds differ: some decode a cut JPEG with the missing rows grey and only warn. A JPEG must
    # have an end-of-image marker after its first scan (0xFF inside scan data is always escaped), and a
    # PNG its IEND chunk.
    if header.format == "JPEG" and data.find(b"\xff\xd9", header.scan_offset) < 0:
        raise ImageError(IMAGE_TRUNCATED, "the JPEG ends before its end-of-image marker")
    if header.format == "PNG" and not _png_complete(data):
        raise ImageError(IMAGE_TRUNCATED, "the PNG ends before its IEND chunk")


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, flags: int | None = None) -> np.ndarray:
    """The image at `path` decoded by OpenCV, or ImageError with the reason.

    Default `flags`: 3-channel BGR uint8 with EXIF orientation ignored (annotations are in the stored
    frame), so alpha is dropped, grey is replicated, 16-bit is scaled to 8-bit and CMYK is converted.
    The declared width x height must not exceed `max_pixels`; that is checked on the header, before
    the file is read in full or decoded.
    """
    import cv2

    if flags is None:
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    header, byte_limit = _checked_header(path, max_pixels)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(byte_limit + 1)
    except OSError as error:
        raise ImageError(IMAGE_UNREADABLE, error.strerror or str(error)) from None
    _check_complete(header, data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        image = None
    if image is None:
        raise ImageError(IMAGE_UNDECODABLE, f"corrupt {header.format} data")
    if image.shape[:2] != (header.height, header.width):
        # Defence in depth: a header our parser reads differently from the decoder must not slip a larger
        # image past the limit (OpenCV's own cap, 2**30 pixels, bounds what this one decode could cost).
        raise ImageError(
            IMAGE_UNDECODABLE,
            f"the {header.format} header declares {header.width} x {header.height} "
            f"but the data decodes to {image.shape[1]} x {image.shape[0]}",
        )
    return image


EXIF_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageMetadata:
    """What the pixels alone do not say: how a viewer turns the photo, and how many pages it holds."""

    orientation: int = 1  # EXIF orientation, 1 (as stored) to 8
    pages: int = 1  # TIFF pages or GIF frames; read_image decodes the first
    format: str = "image"

    def notes(self) -> list[str]:
        """What a user should know about how the file was read, one sentence each (none for most photos)."""
        notes = []
        if self.orientation != 1:
            notes.append(f"EXIF orientation {self.orientation}: turned as a viewer shows it")
        if self.pages > 1:
            notes.append(f"{self.format} with {self.pages} pages or frames: only the first is read")
        return notes


def image_metadata(path: Path) -> ImageMetadata:
    """EXIF orientation and page count of an image file that read_image accepted, from its metadata only
    (Pillow opens files lazily); a file whose metadata cannot be parsed is taken as plain."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own pixel-limit warning: read_image applied ours
            with Image.open(path) as image:
                orientation = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
                pages = int(getattr(image, "n_frames", 1))
                format_name = image.format or "image"
    except Exception:  # metadata is optional: a file Pillow cannot parse is taken as plain
        return ImageMetadata()
    return ImageMetadata(orientation if 1 <= orientation <= 8 else 1, max(pages, 1), format_name)


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` (as stored) turned the way EXIF `orientation` tells a viewer to show it."""
    import cv2

    turns = {
        2: lambda im: cv2.flip(im, 1),
        3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
        4: lambda im: cv2.flip(im, 0),
        5: cv2.transpose,
        6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
        7: lambda im: cv2.flip(cv2.transpose(im), -1),
        8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return turns[orientation](image) if orientation in turns else image
