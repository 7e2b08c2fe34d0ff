"""Download a dataset given as a list of remote files, each pinned by its sha256 (the `download` stage's
`source: url` mode, e.g. the official Helen release: helen_1.zip .. helen_5.zip with images,
annotation.zip with annotation/N.txt, trainnames.txt, testnames.txt).

`download_file` never leaves an unverified file at `dest`: bytes stream into `dest + ".part"`, are
hashed on the fly and only `os.replace`d onto `dest` once the sha256 matches. An interrupted transfer
resumes from the .part file with `Range: bytes=N-` when the server answers 206. Archives are extracted
by lipseg.data.archives and the Helen layout assembled by lipseg.data.layout. Only the standard library
is used for HTTP (urllib), so there is no extra dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from lipseg.core.files import file_hash, sha256_file
from lipseg.data.archives import (
    EXTRACT_MARKER,
    DownloadError,
    archive_stem,
    extract_archive,
    is_archive,
)
from lipseg.data.layout import assemble_helen_layout

log = logging.getLogger(__name__)

ALLOWED_SCHEMES = ("http", "https", "file")
_USER_AGENT = "lipseg-downloader/0.1 (+python-urllib)"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
            raise ValueError(
                f"cannot derive a safe file name from {self.url!r} (filename={self.filename!r}); set `filename`"
            )
        return name


def _normalize_sha256(sha256: str) -> str:
    s = str(sha256).strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:") :]
    if not _SHA256_RE.match(s):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return s


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
                hasher, offset = file_hash(part, chunk_size)
        else:
            hasher, offset = hashlib.sha256(), 0
        resumed = offset > 0
        try:
            hasher, offset, resumed = _attempt(
                url,
                scheme,
                part,
                hasher,
                offset,
                timeout_s=timeout_s,
                progress=progress,
                chunk_size=chunk_size,
                desc=dest.name,
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
    except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
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
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
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
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
                f.flush()
                raise _RetryableError(f"{type(e).__name__} after {offset} bytes: {e}") from e
            finally:
                f.flush()
                os.fsync(f.fileno())
        if length is not None and received < length:
            raise _RetryableError(f"truncated body: got {received} of {length} bytes")
    return hasher, offset, resumed


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
        marker = target / EXTRACT_MARKER
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
