"""Download, verify, safely extract and assemble a dataset given as a list of remote files.

This backs the `download` stage's `source: url` mode, e.g. the official Helen release
(helen_1.zip .. helen_5.zip with images, annotation.zip with annotation/N.txt, trainnames.txt,
testnames.txt), each pinned by its sha256.

Guarantees:
  * `download_file` never leaves an unverified file at `dest`: bytes stream into `dest + ".part"`,
    are hashed on the fly and only `os.replace`d onto `dest` once the sha256 matches. An interrupted
    transfer resumes from the .part file with `Range: bytes=N-` when the server answers 206.
  * `extract_archive` refuses members that would land outside the target (`..`, absolute paths,
    links, device files), enforces size and member-count limits, writes nothing through tarfile /
    zipfile's own extraction (every byte is copied by this module into a path it built itself) and
    publishes the result with one rename.
  * `assemble_helen_layout` copies (never moves) from the cache, so the cache stays reusable.

Only the standard library is used for HTTP (urllib), so there is no extra dependency.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lipseg.io import atomic_directory

log = logging.getLogger(__name__)

__all__ = [
    "RemoteFile",
    "DownloadError",
    "UnsafeArchiveError",
    "ArchiveLimitError",
    "LayoutError",
    "download_file",
    "extract_archive",
    "assemble_helen_layout",
    "fetch_dataset",
    "sha256_file",
    "archive_stem",
    "is_archive",
]

ALLOWED_SCHEMES = ("http", "https", "file")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
HELEN_POINTS = 194
NAME_LISTS = ("trainnames.txt", "testnames.txt")
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
_EXTRACT_MARKER = ".lipseg-extracted.sha256"  # dotfile: ignored by assemble_helen_layout
_USER_AGENT = "lipseg-downloader/0.1 (+python-urllib)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_COORD_LINE = re.compile(rf"^\s*{_NUM}\s*,\s*{_NUM}\s*$")
_MAX_ANNOTATION_BYTES = 64 * 1024  # a Helen annotation is ~4 KB; bigger .txt files are not sniffed


class DownloadError(RuntimeError):
    """A file could not be downloaded or failed verification."""


class UnsafeArchiveError(RuntimeError):
    """An archive member would escape the target directory or is a link / device file."""


class ArchiveLimitError(RuntimeError):
    """An archive exceeds the configured total-size or member-count limit (zip-bomb guard)."""


class LayoutError(RuntimeError):
    """The downloaded files do not form a usable Helen layout."""


class _RetryableError(Exception):
    """Internal: a transient failure worth another attempt (5xx, dropped connection, short body)."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str
    filename: str | None = None  # default: last path part of the URL

    @property
    def name(self) -> str:
        """File name inside the cache (explicit `filename`, else the URL's last path part)."""
        name = self.filename
        if name is None:
            name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(self.url).path).name)
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise ValueError(f"cannot derive a safe file name from {self.url!r} (filename={self.filename!r}); set `filename`")
        return name


# ----------------------------------------------------------------------------------------- hashing


def _normalize_sha256(sha256: str) -> str:
    s = str(sha256).strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    if not _SHA256_RE.match(s):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return s


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _hash_prefix(path: Path, chunk_size: int) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
            n += len(chunk)
    return h, n


# ---------------------------------------------------------------------------------------- download


def _check_url(url: str) -> str:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise DownloadError(f"unsupported URL scheme {scheme!r} in {url!r}; allowed: {', '.join(ALLOWED_SCHEMES)}")
    return scheme


def _content_range_start(value: str | None) -> int | None:
    """Start offset of a `Content-Range: bytes START-END/TOTAL` header, None if unparsable."""
    if not value:
        return None
    m = re.match(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", value)
    return int(m.group(1)) if m else None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def download_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    retries: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download `url` to `dest`, verified against `sha256`, and return `dest`.

    * `dest` already present with the right hash: reused, no network access.
    * Streams into `dest.with_suffix(dest.suffix + ".part")`, hashing as it goes; only a verified
      file is renamed (os.replace) onto `dest`.
    * Transient failures (connection errors, timeouts, HTTP 5xx/408/429, a body shorter than its
      Content-Length) are retried up to `retries` more times, sleeping backoff_s * 2**k between
      attempts; a partial .part file is resumed with `Range: bytes=N-` (kept only if the server
      answers 206 with a matching Content-Range, otherwise the download restarts from zero).
    * Other HTTP errors (404, 403, ...) fail at once with DownloadError.
    * A sha256 mismatch deletes the .part file and raises DownloadError (after one clean re-download
      if the bad bytes came from a resumed transfer, since the resume itself may be the culprit).
    """
    scheme = _check_url(url)
    expected = _normalize_sha256(sha256)
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)

    if dest.is_file():
        actual = sha256_file(dest, chunk_size)
        if actual == expected:
            log.info("reusing verified %s", dest)
            return dest
        log.warning("%s exists but its sha256 is %s, expected %s: downloading again", dest, actual, expected)

    hasher: hashlib._Hash | None = None  # sha256 state of the bytes currently in `part`
    offset = 0  # bytes currently in `part`
    failures = 0
    restarted_after_bad_resume = False
    while True:
        if part.exists():
            size = part.stat().st_size
            if hasher is None or size != offset:
                hasher, offset = _hash_prefix(part, chunk_size)
        else:
            hasher, offset = hashlib.sha256(), 0
        resumed = offset > 0
        try:
            hasher, offset, resumed = _attempt(
                url, scheme, part, hasher, offset, timeout_s=timeout_s, progress=progress,
                chunk_size=chunk_size, desc=dest.name,
            )
        except _RetryableError as e:
            failures += 1
            if failures > retries:
                raise DownloadError(f"giving up on {url} after {failures} attempts: {e}") from e
            delay = backoff_s * (2 ** (failures - 1))
            log.warning("download of %s failed (%s); retry %d/%d in %.2fs", url, e, failures, retries, delay)
            time.sleep(delay)
            continue

        actual = hasher.hexdigest()
        if actual == expected:
            os.replace(part, dest)
            log.info("downloaded %s (%d bytes, sha256 ok)", dest, offset)
            return dest
        part.unlink(missing_ok=True)
        hasher, offset = None, 0
        if resumed and not restarted_after_bad_resume:
            restarted_after_bad_resume = True
            log.warning("sha256 mismatch for resumed download of %s; downloading it again from scratch", url)
            continue
        raise DownloadError(
            f"sha256 mismatch for {url}: expected {expected}, got {actual}; the partial file was deleted. "
            "The file on the server changed or the configured checksum is wrong."
        )


def _attempt(
    url: str,
    scheme: str,
    part: Path,
    hasher: hashlib._Hash,
    offset: int,
    *,
    timeout_s: float,
    progress: bool,
    chunk_size: int,
    desc: str,
) -> tuple[hashlib._Hash, int, bool]:
    """One request. Returns (hasher, bytes in part, whether the body was a resumed 206 range)."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    want_range = offset > 0 and scheme in ("http", "https")
    if want_range:
        headers["Range"] = f"bytes={offset}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        code = e.code
        e.close()
        if code == 416 and offset > 0:
            # The range starts at/after the end: the .part file may already be complete. Let the
            # caller's hash check decide; if it is wrong it is deleted and fetched again.
            return hasher, offset, True
        if code >= 500 or code in (408, 429):
            raise _RetryableError(f"HTTP {code} {e.reason}") from e
        raise DownloadError(f"HTTP {code} {e.reason} for {url} (not retried)") from e
    except urllib.error.URLError as e:
        if scheme == "file":
            raise DownloadError(f"cannot read {url}: {e.reason}") from e
        raise _RetryableError(f"connection error: {e.reason}") from e
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
        raise _RetryableError(f"{type(e).__name__}: {e}") from e

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// responses have no status
        length = _int_or_none(resp.headers.get("Content-Length"))
        if want_range and status == 206 and _content_range_start(resp.headers.get("Content-Range")) == offset:
            mode, resumed = "ab", True
            log.info("resuming %s at byte %d", url, offset)
        else:
            if offset:
                log.info("server did not honour the range request for %s (HTTP %s); restarting", url, status)
            mode, resumed = "wb", False
            hasher, offset = hashlib.sha256(), 0
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=desc, disable=not progress, leave=False,
        ) as bar:
            try:
                while True:
                    chunk = resp.read(chunk_size)
                    if not chunk:
                        break
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    offset += len(chunk)
                    bar.update(len(chunk))
            except http.client.IncompleteRead as e:
                if e.partial:
                    f.write(e.partial)
                    hasher.update(e.partial)
                    offset += len(e.partial)
                    received += len(e.partial)
                f.flush()
                raise _RetryableError(f"connection dropped after {offset} bytes") from e
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
                f.flush()
                raise _RetryableError(f"{type(e).__name__} after {offset} bytes: {e}") from e
            finally:
                f.flush()
                os.fsync(f.fileno())
        if length is not None and received < length:
            raise _RetryableError(f"truncated body: got {received} of {length} bytes")
    return hasher, offset, resumed


# ----------------------------------------------------------------------------------------- archives


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


def _safe_member_parts(name: str) -> tuple[str, ...]:
    """Validated relative path components of an archive member name (raises UnsafeArchiveError)."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"refusing archive member with a NUL byte: {name!r}")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or re.match(r"^[A-Za-z]:", unified):
        raise UnsafeArchiveError(f"refusing archive member with an absolute path: {name!r}")
    parts = tuple(p for p in unified.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise UnsafeArchiveError(f"refusing archive member that points outside the target ('..'): {name!r}")
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
    files: list[Path] = []
    total = 0
    # Stream mode ("r|*"): one sequential pass, members are validated as they come; anything
    # already written lives in the private temp dir, which the caller deletes on error.
    with tarfile.open(archive, mode="r|*") as tf:
        for count, member in enumerate(tf, 1):
            name = member.name
            parts = _safe_member_parts(name)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(f"refusing link archive member: {name!r} -> {member.linkname!r}")
            if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                raise UnsafeArchiveError(f"refusing device/special-file archive member: {name!r}")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"refusing archive member of unsupported type {member.type!r}: {name!r}")
            total += member.size if member.isfile() else 0
            _check_limits(count, total, name, max_members, max_total_bytes)
            if not parts:
                continue
            target = root.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            src = tf.extractfile(member)
            if src is None:  # cannot happen for regular files, but be explicit
                raise UnsafeArchiveError(f"cannot read archive member {name!r}")
            with src:
                _write_member(src, target, member.size, name)
            files.append(target)
    return files


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


# ----------------------------------------------------------------------------------------- layout


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
    if len(lines) != HELEN_POINTS + 1:
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
            dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n != "__MACOSX" and not skipped(d / n))
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


# ----------------------------------------------------------------------------------------- fetch


def fetch_dataset(
    files: list[RemoteFile],
    out_dir: Path,
    cache_dir: Path,
    *,
    progress: bool = True,
    **download_kwargs,
) -> dict:
    """Download `files` into `cache_dir` (reusing verified ones), extract archives into
    `cache_dir/extracted/<archive stem>` (reused when already extracted from the same sha256),
    and assemble the Helen layout into `out_dir`. Returns assemble_helen_layout's counts plus
    `files` (number downloaded/reused) and `archives`.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = [rf.name for rf in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"several remote files map to the same cache name: {dupes}; set `filename`")
    if not files:
        raise ValueError("no remote files given")

    sources: list[Path] = []
    archives = 0
    stems: dict[str, str] = {}
    for rf, name in zip(files, names):
        path = download_file(rf.url, cache_dir / name, rf.sha256, progress=progress, **download_kwargs)
        if not is_archive(path):
            sources.append(path)
            continue
        archives += 1
        stem = archive_stem(path)
        if stem in stems:
            raise ValueError(f"archives {stems[stem]} and {name} would extract into the same folder {stem!r}")
        stems[stem] = name
        target = cache_dir / "extracted" / stem
        marker = target / _EXTRACT_MARKER
        expected = _normalize_sha256(rf.sha256)
        if marker.is_file() and marker.read_text().strip() == expected:
            log.info("reusing extracted %s", target)
        else:
            log.info("extracting %s -> %s", path, target)
            extract_archive(path, target)
            marker.write_text(expected + "\n")
        sources.append(target)

    counts = assemble_helen_layout(sources, Path(out_dir))
    return {**counts, "files": len(files), "archives": archives}
