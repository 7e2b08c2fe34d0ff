"""Safe extraction of downloaded archives (zip, tar, tar.gz/bz2/xz).

`extract_archive` refuses members that would land outside the target (`..`, absolute paths, links,
device files), enforces size and member-count limits and publishes the result with one rename. A tar
is extracted by tarfile through the standard library's `data` filter and the project's stricter rules;
a zip's bytes are copied here into paths built here, as zipfile has no such filter.
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

_ARCHIVE_SUFFIXES = {  # longest first so ".tar.gz" wins over ".gz"-less matches
    ".tar.gz": "tar",
    ".tar.bz2": "tar",
    ".tar.xz": "tar",
    ".tgz": "tar",
    ".tbz2": "tar",
    ".txz": "tar",
    ".tar": "tar",
    ".zip": "zip",
}
EXTRACT_MARKER = ".lipseg-extracted.sha256"  # dotfile: ignored by assemble_helen_layout


class DownloadError(RuntimeError):
    """A file could not be downloaded, failed verification, or is a corrupt archive."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would escape the target directory or is a link / device file."""


class ArchiveLimitError(RuntimeError):
    """An archive exceeds the configured total-size or member-count limit (zip-bomb guard)."""


def _archive_suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_archive(path: Path) -> bool:
    return _archive_suffix(Path(path)) is not None


def archive_stem(path: Path) -> str:
    """`helen_1.zip` -> `helen_1`, `x.tar.gz` -> `x`."""
    path = Path(path)
    suffix = _archive_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def _relative_name(name: str) -> str:
    """An archive member's name with backslashes read as separators; UnsafeArchiveError for a NUL byte
    or an absolute path."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"refusing archive member with a NUL byte: {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"refusing archive member with an absolute path: {name!r}")
    return unified


def _outside(name: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"refusing archive member that points outside the target ('..'): {name!r}")


def _safe_member_parts(name: str) -> tuple[str, ...]:
    """Validated relative path components of a zip member name (raises UnsafeArchiveError)."""
    parts = tuple(p for p in _relative_name(name).split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise _outside(name)
    return parts


def _check_limits(count: int, total: int, name: str, max_members: int, max_total_bytes: int) -> None:
    if count > max_members:
        raise ArchiveLimitError(f"archive has more than {max_members} members (stopped at {name!r})")
    if total > max_total_bytes:
        raise ArchiveLimitError(
            f"archive members add up to more than {max_total_bytes} bytes (reached {total} at {name!r})"
        )


def _write_member(src, dest: Path, limit: int, name: str) -> int:
    """Copy a member stream to dest, never more than `limit` bytes. Returns bytes written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_dir():
        raise UnsafeArchiveError(f"archive member {name!r} collides with a directory of the same name")
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise ArchiveLimitError(f"archive member {name!r} expands beyond its declared size / the size limit")
            out.write(chunk)
    return written


def _extract_zip(archive: Path, root: Path, max_total_bytes: int, max_members: int) -> list[Path]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        # The central directory is available up front: validate everything before writing anything.
        total = 0
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        for count, info in enumerate(infos, 1):
            parts = _safe_member_parts(info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if mode and stat.S_ISLNK(mode):
                raise UnsafeArchiveError(f"refusing symlink archive member: {info.filename!r}")
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                raise UnsafeArchiveError(f"refusing device/special-file archive member: {info.filename!r}")
            total += info.file_size
            _check_limits(count, total, info.filename, max_members, max_total_bytes)
            plan.append((info, parts))
        files: list[Path] = []
        written_total = 0
        for info, parts in plan:
            if not parts:
                continue
            target = root.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as src:
                written_total += _write_member(
                    src, target, min(info.file_size, max_total_bytes - written_total), info.filename
                )
            files.append(target)
    return files


def _extract_tar(archive: Path, root: Path, max_total_bytes: int, max_members: int) -> list[Path]:
    """tarfile extracts, through the standard library's `data` filter (no path outside `root`, no device
    files, no setuid or group/other-write modes) behind the project's own rules, which are stricter: no
    absolute name (the filter would strip the slash and extract it), no link of any kind (the datasets
    have none), backslashes read as separators, and the size and member-count limits. tarfile copies
    exactly the declared size of each member, so the declared sizes bound what is written."""
    files: set[Path] = set()
    count = total = 0

    def checked(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        nonlocal count, total
        name = member.name
        unified = _relative_name(name)
        if member.issym() or member.islnk():
            raise UnsafeArchiveError(f"refusing link archive member: {name!r} -> {member.linkname!r}")
        try:
            # Normalised, so that tarfile makes no folder for an `a/..` that stays inside.
            member = tarfile.data_filter(member.replace(name=posixpath.normpath(unified), deep=False), dest)
        except tarfile.OutsideDestinationError:
            raise _outside(name) from None
        except tarfile.SpecialFileError:
            raise UnsafeArchiveError(f"refusing device/special-file archive member: {name!r}") from None
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"refusing archive member of unsupported type {member.type!r}: {name!r}")
        count += 1
        total += member.size if member.isfile() else 0
        _check_limits(count, total, name, max_members, max_total_bytes)
        target = Path(os.path.normpath(os.path.join(dest, member.name)))
        if member.isfile():
            if target.is_dir():
                raise UnsafeArchiveError(f"archive member {name!r} collides with a directory of the same name")
            files.add(target)
        return member

    # Stream mode ("r|*"): one sequential pass, each member checked as it comes; anything already
    # written lives in the private temp dir, which the caller deletes on error.
    with tarfile.open(archive, mode="r|*") as tf:
        tf.extractall(root, filter=checked)
    return list(files)


def extract_archive(
    archive: Path,
    target_dir: Path,
    *,
    max_total_bytes: int = 20 * 2**30,
    max_members: int = 1_000_000,
) -> list[Path]:
    """Safely extract a .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz into `target_dir`.

    Raises UnsafeArchiveError for members with `..`, absolute paths, links or device files, and
    ArchiveLimitError when the declared member sizes add up to more than `max_total_bytes` or there
    are more than `max_members` members. Extraction happens in a temp dir next to `target_dir`
    which replaces `target_dir` (an existing one is removed) only on success; on any error nothing
    is left behind. Returns the extracted regular files (paths under `target_dir`), sorted.
    """
    archive = Path(archive)
    target_dir = Path(target_dir)
    suffix = _archive_suffix(archive)
    if suffix is None:
        raise ValueError(f"unsupported archive type: {archive.name} (expected one of {', '.join(_ARCHIVE_SUFFIXES)})")
    kind = _ARCHIVE_SUFFIXES[suffix]
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.extract-", dir=target_dir.parent))
    try:
        try:
            if kind == "zip":
                extracted = _extract_zip(archive, tmp, max_total_bytes, max_members)
            else:
                extracted = _extract_tar(archive, tmp, max_total_bytes, max_members)
        # A garbled deflate/gzip stream surfaces as zlib.error or gzip.BadGzipFile (an OSError), not as
        # the archive module's own error.
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
            raise DownloadError(f"corrupt or unreadable archive {archive}: {e}") from e
        if target_dir.exists() or target_dir.is_symlink():
            if target_dir.is_dir() and not target_dir.is_symlink():
                shutil.rmtree(target_dir)
            else:
                target_dir.unlink()
        os.replace(tmp, target_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(target_dir / p.relative_to(tmp) for p in extracted)
