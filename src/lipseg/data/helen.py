"""Reader for the Helen folder layout, which every data source (synthetic, helen, url) produces.

Layout: `images/<name>.jpg`, `annotation/<N>.txt` (line 1 = image name, then 194 `x , y` lines, CRLF
in the originals, LF or CR accepted too), `trainnames.txt`, `testnames.txt`. Nothing is dropped
silently: every name that cannot be used becomes a `Reject` (lipseg.data.rejects) with the file and
the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipseg.core.images import IMAGE_EMPTY, IMAGE_SUFFIXES
from lipseg.data.landmarks import HELEN_NUM_POINTS
from lipseg.data.rejects import DatasetError, Reject

IMAGE_EXTENSIONS = tuple(case for suffix in IMAGE_SUFFIXES for case in (suffix, suffix.upper()))
SPLITS = ("train", "test")
MAX_ANNOTATION_BYTES = 1 << 20  # 194 points take ~4 KB; anything this big is not an annotation


class AnnotationError(ValueError):
    """An annotation file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Record:
    """One annotated face image."""

    name: str
    image_path: Path
    annotation_path: Path
    points: np.ndarray  # (194, 2) float32, image pixels


def is_safe_name(name: str) -> bool:
    """An image name must stay inside images/: no separators, no '..', no absolute paths."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and ":" not in name


def _annotation_lines(text: str) -> list[str]:
    # CRLF in the originals; LF-only and CR-only copies mean the same, and an editor's BOM is no name.
    return [line.strip() for line in text.lstrip("\ufeff").replace("\r", "\n").split("\n") if line.strip()]


def parse_helen_annotation(text: str) -> tuple[str, np.ndarray]:
    """(image name, (194, 2) float32 points) from the text of a Helen annotation file."""
    lines = _annotation_lines(text)
    if not lines:
        raise AnnotationError("empty annotation file")
    name = lines[0]
    points = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(",")
        if len(parts) != 2:
            raise AnnotationError(f"line {number}: expected 'x , y', got {line[:40]!r}")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise AnnotationError(f"line {number}: non-numeric value {line[:40]!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AnnotationError(f"line {number}: non-finite value {line[:40]!r}")
        points.append((x, y))
    if len(points) != HELEN_NUM_POINTS:
        raise AnnotationError(f"expected {HELEN_NUM_POINTS} points, found {len(points)}")
    return name, np.asarray(points, np.float32)


def format_helen_annotation(name: str, points: np.ndarray) -> str:
    """The inverse of `parse_helen_annotation`, in the original style (2 decimals, CRLF)."""
    lines = [name] + [f"{x:.2f} , {y:.2f}" for x, y in np.asarray(points, np.float64)]
    return "\r\n".join(lines) + "\r\n"


def find_image(root: Path, name: str) -> Path | None:
    for extension in IMAGE_EXTENSIONS:
        candidate = root / "images" / f"{name}{extension}"
        if candidate.is_file():
            return candidate
    return None


def read_name_list(path: Path) -> tuple[list[str], list[str]]:
    """(unique names in order, duplicates) of a `<split>names.txt` file."""
    seen: dict[str, None] = {}
    duplicates = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in seen:
            duplicates.append(name)
        seen[name] = None
    return list(seen), duplicates


def _read_annotation_file(path: Path) -> tuple[str, np.ndarray | None, str | None]:
    """(the image name it claims, points or None, the reject reason or None) of one annotation file."""
    size = path.stat().st_size
    if size > MAX_ANNOTATION_BYTES:  # only its first line is read, for the name it claims
        with path.open("rb") as handle:
            lines = _annotation_lines(handle.read(4096).decode("utf-8", "replace"))
        return lines[0] if lines else path.name, None, f"bad annotation: {size} bytes, too large for a Helen annotation"
    text = path.read_bytes().decode("utf-8", "replace")
    lines = _annotation_lines(text)
    claimed = lines[0] if lines else path.name
    try:
        name, points = parse_helen_annotation(text)
    except AnnotationError as error:
        return claimed, None, f"bad annotation: {error}"
    if not is_safe_name(name):
        return name, None, "annotation names an image outside the dataset"
    return name, points, None


def read_annotations(root: Path) -> tuple[dict[str, tuple[Path, np.ndarray]], dict[str, Reject]]:
    """All annotation files keyed by the image name they name; unusable ones as rejects by name.

    Two files naming the same image make it a reject too: neither is trusted over the other."""
    folder = root / "annotation"
    if not folder.is_dir():
        raise DatasetError(f"{root}: no annotation/ folder (expected the Helen layout)")
    claims: dict[str, list[tuple[Path, np.ndarray | None, str | None]]] = {}
    for path in sorted(folder.glob("*.txt")):
        name, points, problem = _read_annotation_file(path)
        claims.setdefault(name, []).append((path, points, problem))
    annotations: dict[str, tuple[Path, np.ndarray]] = {}
    broken: dict[str, Reject] = {}
    for name, found in claims.items():
        path, points, problem = found[0]
        if len(found) > 1:
            files = ", ".join(other.name for other, _, _ in found)
            broken[name] = Reject(
                name, str(path), f"duplicate annotation: {len(found)} files name this image ({files})"
            )
        elif problem is not None:
            broken[name] = Reject(name, str(path), problem)
        else:
            annotations[name] = (path, points)
    return annotations, broken


def unlisted_annotation_rejects(root: Path) -> list[Reject]:
    """Unusable annotation files that neither list names (say one naming ../../x): no split's record,
    but reported so that nothing unusable is passed over in silence."""
    root = Path(root)
    listed: set[str] = set()
    for split in SPLITS:
        names_file = root / f"{split}names.txt"
        if names_file.is_file():
            listed.update(read_name_list(names_file)[0])
    _, broken = read_annotations(root)
    return [reject for name, reject in broken.items() if name not in listed]


def load_split(root: Path, split: str) -> tuple[list[Record], list[Reject]]:
    """Records of one split (`train` or `test`) and the rejects, each with file and reason."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    names_file = root / f"{split}names.txt"
    if not names_file.is_file():
        raise DatasetError(f"{names_file} not found")
    names, duplicates = read_name_list(names_file)
    annotations, broken = read_annotations(root)
    rejects = [Reject(name, str(names_file), "duplicate name in list") for name in duplicates]
    records = []
    for name in names:
        if not is_safe_name(name):
            rejects.append(Reject(name, str(names_file), "name points outside the dataset"))
            continue
        if name not in annotations:
            reason = broken[name].reason if name in broken else "no annotation file names this image"
            file = broken[name].file if name in broken else str(root / "annotation")
            rejects.append(Reject(name, file, reason))
            continue
        image_path = find_image(root, name)
        if image_path is None:
            rejects.append(Reject(name, str(root / "images" / name), "image file missing"))
            continue
        if image_path.stat().st_size == 0:
            rejects.append(Reject(name, str(image_path), IMAGE_EMPTY))
            continue
        annotation_path, points = annotations[name]
        records.append(Record(name, image_path, annotation_path, points))
    return records, rejects
