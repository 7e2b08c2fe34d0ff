"""Assemble the Helen layout (images/, annotation/, trainnames.txt, testnames.txt) from downloaded and
extracted files, recognising annotation files by their content. Files are copied, never moved, so the
download cache stays reusable.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from lipseg.core.files import atomic_directory, sha256_file
from lipseg.data.landmarks import HELEN_NUM_POINTS

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NAME_LISTS = ("trainnames.txt", "testnames.txt")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COORD_LINE = re.compile(rf"^\s*{_NUM}\s*,\s*{_NUM}\s*$")
_MAX_ANNOTATION_BYTES = 64 * 1024  # a Helen annotation is ~4 KB; bigger .txt files are not sniffed


class LayoutError(RuntimeError):
    """The downloaded files do not form a usable Helen layout."""


def _is_helen_annotation_text(path: Path) -> bool:
    """First line an image name, then exactly 194 `x , y` lines (trailing blank lines allowed)."""
    try:
        if path.stat().st_size > _MAX_ANNOTATION_BYTES:
            return False
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != HELEN_NUM_POINTS + 1:
        return False
    first = lines[0].strip()
    if not first or _COORD_LINE.match(first) or "," in first:
        return False
    return all(_COORD_LINE.match(line) for line in lines[1:])


def _iter_source_files(sources: list[Path], skip: list[Path]) -> list[Path]:
    skip_resolved = [s.resolve() for s in skip]

    def skipped(p: Path) -> bool:
        r = p.resolve()
        return any(r == s or s in r.parents for s in skip_resolved)

    out: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_file():
            out.append(src)
            continue
        if not src.is_dir():
            raise LayoutError(f"source {src} does not exist")
        for dirpath, dirnames, filenames in os.walk(src):
            d = Path(dirpath)
            dirnames[:] = sorted(
                n for n in dirnames if not n.startswith(".") and n != "__MACOSX" and not skipped(d / n)
            )
            out.extend(d / n for n in sorted(filenames) if not n.startswith("."))
    return out


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)


def _looks_like_layout(d: Path) -> bool:
    allowed = {"images", "annotation", *NAME_LISTS}
    return all(p.name in allowed or p.name.startswith(".") for p in d.iterdir())


def assemble_helen_layout(sources: list[Path], out_dir: Path) -> dict:
    """Build `out_dir` in the Helen layout from extracted archive trees and plain files.

    out_dir/images/<name>.<ext>      every .jpg/.jpeg/.png found
    out_dir/annotation/<N>.txt       .txt files in a folder called `annotation`, or any .txt whose
                                     first line is a name followed by 194 `x , y` lines (bytes kept
                                     as-is, CRLF included; numeric names are kept, others numbered
                                     after the highest)
    out_dir/trainnames.txt, testnames.txt

    Files are copied (shutil.copy2), never moved. Dotfiles and __MACOSX folders are ignored.
    Identical duplicates are skipped; different files mapping to the same output name raise
    LayoutError. The layout is built in a temp dir and swapped in, replacing an existing out_dir
    only if that holds nothing but a previous Helen layout. Returns counts.
    """
    out_dir = Path(out_dir)
    files = _iter_source_files([Path(s) for s in sources], skip=[out_dir])

    images: dict[str, Path] = {}
    numbered: dict[str, Path] = {}  # "<N>.txt" -> source
    unnumbered: list[Path] = []
    lists: dict[str, Path] = {}
    duplicates = 0

    def put(table: dict[str, Path], key: str, src: Path) -> None:
        nonlocal duplicates
        prev = table.get(key)
        if prev is None:
            table[key] = src
        elif prev.resolve() == src.resolve() or _same_bytes(prev, src):
            duplicates += 1
        else:
            raise LayoutError(f"conflicting files for {key}: {prev} and {src} differ")

    for f in files:
        lower = f.name.lower()
        if lower in NAME_LISTS:
            put(lists, lower, f)
        elif f.suffix.lower() in IMAGE_SUFFIXES:
            put(images, f.name, f)
        elif f.suffix.lower() == ".txt" and (f.parent.name.lower() == "annotation" or _is_helen_annotation_text(f)):
            if f.stem.isdigit():
                put(numbered, f"{int(f.stem)}.txt", f)
            else:
                unnumbered.append(f)

    if unnumbered:
        next_n = max((int(k[:-4]) for k in numbered), default=0) + 1
        known = {p.resolve() for p in numbered.values()}
        for f in unnumbered:
            if f.resolve() in known or any(_same_bytes(f, p) for p in numbered.values()):
                duplicates += 1
                continue
            numbered[f"{next_n}.txt"] = f
            known.add(f.resolve())
            next_n += 1

    if not images:
        raise LayoutError(f"no images (.jpg/.jpeg/.png) found in {[str(s) for s in sources]}")
    if not numbered:
        raise LayoutError(f"no Helen annotation files found in {[str(s) for s in sources]}")
    for name in NAME_LISTS:
        if name not in lists:
            log.warning("%s not found among the downloaded files", name)

    if out_dir.exists() and (not out_dir.is_dir() or not _looks_like_layout(out_dir)):
        raise LayoutError(f"refusing to replace {out_dir}: it holds files that are not a Helen layout")
    with atomic_directory(out_dir) as tmp:
        (tmp / "images").mkdir()
        (tmp / "annotation").mkdir()
        for name, src in images.items():
            shutil.copy2(src, tmp / "images" / name)
        for name, src in numbered.items():
            shutil.copy2(src, tmp / "annotation" / name)
        for name, src in lists.items():
            shutil.copy2(src, tmp / name)

    image_stems = {Path(n).stem for n in images}
    unmatched = 0
    for src in numbered.values():
        try:
            first = src.read_bytes().decode("utf-8", "replace").splitlines()[0].strip()
        except (OSError, IndexError):
            first = ""
        if first not in image_stems:
            unmatched += 1
    if unmatched:
        log.warning("%d annotation(s) name an image that was not found", unmatched)

    def count_names(name: str) -> int:
        p = out_dir / name
        return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.exists() else 0

    return {
        "images": len(images),
        "annotations": len(numbered),
        "annotations_without_image": unmatched,
        "trainnames": count_names("trainnames.txt"),
        "testnames": count_names("testnames.txt"),
        "duplicates_skipped": duplicates,
    }
