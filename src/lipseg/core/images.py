"""The one image reader: every photo, label mask and `lipseg predict` input is read by `read_image`.

A file is refused with a named `ImageError` instead of returning None or crashing: Pillow reads the
header lazily, the size it declares is checked against a pixel limit before anything is decoded, so a
decompression bomb costs a header read, and a JPEG or PNG cut short is refused rather than decoded with
grey rows. OpenCV decodes what passes, into the BGR arrays the rest of lipseg works on.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
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
_PILLOW_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # Pillow's names for those formats


class ImageError(ValueError):
    """An image file that cannot be used; the message, '<kind>' or '<kind>: <detail>', says why."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def _pam_size(handle: BinaryIO) -> tuple[int, int]:
    """(width, height) of a PAM (P7) header, which OpenCV decodes and Pillow does not read."""
    # As OpenCV reads it: a comment runs from '#' to the end of its line.
    tokens = re.sub(rb"#[^\r\n]*", b" ", handle.read(4096).split(b"ENDHDR")[0]).split()
    try:
        width, height = int(tokens[tokens.index(b"WIDTH") + 1]), int(tokens[tokens.index(b"HEIGHT") + 1])
        if width > 0 and height > 0:
            return width, height
    except (IndexError, ValueError):
        pass
    raise ImageError(IMAGE_UNDECODABLE, "corrupt PAM (no width and height in the header)")


def _open_lazily(handle: BinaryIO):
    """The file parsed by Pillow's own header reader for its format, nothing decoded, or None for a PAM.

    The reader is called directly rather than through Image.open, whose decompression-bomb guard is a
    process-wide constant (a warning from 89 MP, an error from 179 MP) that would refuse photos a raised
    crop.max_pixels allows and would not say their size: the caller's limit takes its place, applied
    to the same header size."""
    # Importing a plugin registers its reader in Image.OPEN; these seven load faster than Image.init()'s all.
    from PIL import (  # noqa: F401
        BmpImagePlugin,
        GifImagePlugin,
        Image,
        JpegImagePlugin,
        PngImagePlugin,
        PpmImagePlugin,
        TiffImagePlugin,
        WebPImagePlugin,
    )

    prefix = handle.read(16)
    handle.seek(0)
    if prefix.startswith(b"P7"):
        return None
    name = next((name for name in _PILLOW_FORMATS if Image.OPEN[name][1](prefix) is True), None)
    if name is None:
        raise ImageError(IMAGE_UNDECODABLE, f"unrecognised format (expected {SUPPORTED_FORMATS})")
    try:
        return Image.OPEN[name][0](handle, "")
    except Image.DecompressionBombError as error:  # a GIF frame beyond its screen: only Pillow's guard sees it
        raise ImageError(IMAGE_TOO_LARGE, f"the {name} header: {error}") from None
    except (SyntaxError, OSError, ValueError) as error:  # Pillow's ways of saying a header is bad
        if not handle.read(1):  # it read to the end of the file and wanted more
            raise ImageError(IMAGE_TRUNCATED, "the file ends inside its header") from None
        # Pillow's words for a header without a pixel mode or with a width or height of 0
        detail = "no pixel mode, or a width or height of 0" if str(error) == "not identified by this driver" else error
        raise ImageError(IMAGE_UNDECODABLE, f"corrupt {name} header ({detail})") from None


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "JPEG", "PNG", ... (Pillow's names; "PAM")
    width: int
    height: int
    scan_offset: int = 0  # JPEG: where Pillow's segment walk met the first scan (the end marker must follow)


def _read_header(handle: BinaryIO) -> ImageHeader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd EXIF or TIFF tags: the size is what counts
        picture = _open_lazily(handle)
    if picture is None:
        return ImageHeader("PAM", *_pam_size(handle))
    return ImageHeader(picture.format, *picture.size, scan_offset=handle.tell() if picture.format == "JPEG" else 0)


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
            header = _read_header(handle)
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


def _check_complete(header: ImageHeader, data: bytes) -> None:
    # OpenCV builds differ: some decode a cut JPEG with the missing rows grey and only warn. A JPEG must
    # have an end-of-image marker after its first scan (0xFF inside scan data is always escaped; Pillow
    # walked the segments by their lengths, past any EXIF thumbnail and its own end marker), and a PNG
    # its chunks, whose checksums Pillow walks to IEND without inflating the pixels.
    if header.format == "JPEG" and data.find(b"\xff\xd9", header.scan_offset) < 0:
        raise ImageError(IMAGE_TRUNCATED, "the JPEG ends before its end-of-image marker")
    if header.format == "PNG":
        try:
            _open_lazily(io.BytesIO(data)).verify()
        except (OSError, SyntaxError) as error:  # a bad checksum, say, is OpenCV's to judge, as for every format
            if "truncated" in str(error).lower():
                raise ImageError(IMAGE_TRUNCATED, "the PNG ends before its IEND chunk") from None


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
        # Defence in depth: a header Pillow reads differently from OpenCV must not slip a larger image
        # past the limit (OpenCV's own cap, 2**30 pixels, bounds what this one decode could cost).
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
    (Pillow's header reader, as read_image's); a file whose metadata cannot be parsed is taken as plain."""
    try:
        with Path(path).open("rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd EXIF or TIFF tags
            picture = _open_lazily(handle)
            if picture is None:  # PAM: no EXIF, one page
                return ImageMetadata()
            orientation = int(picture.getexif().get(EXIF_ORIENTATION_TAG, 1))
            pages = int(getattr(picture, "n_frames", 1))
            format_name = picture.format or "image"
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
