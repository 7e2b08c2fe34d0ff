"""Tests for lipseg.datasets.download against a local, deliberately misbehaving HTTP server."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from lipseg.data.archives import ArchiveLimitError, DownloadError, UnsafeArchiveError, extract_archive
from lipseg.data.fetch import RemoteFile, download_file, fetch_dataset
from lipseg.data.layout import LayoutError, assemble_helen_layout

FAST = dict(retries=3, backoff_s=0.01, timeout_s=5.0, progress=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------- server


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.plans: dict[str, list[str]] = {}  # path -> queue of misbehaviours for the next requests
        self.no_range: set[str] = set()  # paths for which Range headers are ignored (answer 200)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for p, _ in self.requests if path is None or p == path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer  # carries .state

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        state: _State = self.server.state  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        with state.lock:
            state.requests.append((path, rng))
            queue = state.plans.get(path) or []
            action = queue.pop(0) if queue else None
        body = state.files.get(path)
        if action == "500" or body is None or action == "404":
            code = 500 if action == "500" else 404
            msg = b"boom" if code == 500 else b"not found"
            self.send_response(code)
            self.send_header("Content-Length", str(len(msg)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(msg)
            self.close_connection = True
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and path not in state.no_range:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        if action == "cut":
            # Promise the whole body, send a part of it, then drop the connection.
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(autouse=True)
def _hang_guard():
    """Dump tracebacks and abort if a single test hangs (no pytest-timeout needed)."""
    faulthandler.dump_traceback_later(30, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.timeout = 5
    httpd.state = _State()  # type: ignore[attr-defined]
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield base, httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


# ----------------------------------------------------------------------------------------- fixtures


def _jpeg(seed: int) -> bytes:
    try:
        import cv2

        img = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(".jpg", img)
        assert ok
        return buf.tobytes()
    except ImportError:  # any bytes do: the downloader never decodes images
        return b"\xff\xd8\xff\xe0" + bytes([seed]) * 32 + b"\xff\xd9"


def _annotation(name: str, seed: int) -> bytes:
    pts = np.random.default_rng(seed).uniform(0, 100, (194, 2))
    lines = [name] + [f"{x:.3f} , {y:.3f}" for x, y in pts]
    return ("\r\n".join(lines) + "\r\n").encode()


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


@pytest.fixture
def helen(server):
    """A fake Helen release served over HTTP: images zip, annotation tar.gz, two name lists."""
    base, state = server
    imgs = {"100032540_1": _jpeg(1), "100040721_1": _jpeg(2), "100466187_1": _jpeg(3)}
    anns = {"annotation/1.txt": _annotation("100032540_1", 1), "annotation/2.txt": _annotation("100040721_1", 2)}
    helen_zip = _zip_bytes({f"helen_1/{k}.jpg": v for k, v in imgs.items()} | {"__MACOSX/._x.jpg": b"junk"})
    ann_tgz = _tar_bytes([(k, v) for k, v in anns.items()])
    train, test = b"100032540_1\n100040721_1\n", b"100466187_1\n"
    state.files.update(
        {"/helen_1.zip": helen_zip, "/annotation.tar.gz": ann_tgz, "/trainnames.txt": train, "/testnames.txt": test}
    )
    files = [RemoteFile(f"{base}{p}", sha(state.files[p])) for p in state.files]
    return files, imgs, anns, state


# ----------------------------------------------------------------------------------------- tests


def test_fetch_dataset_assembles_helen_layout_and_reuses_cache(helen, tmp_path):
    files, imgs, anns, state = helen
    out, cache = tmp_path / "helen", tmp_path / "cache"
    counts = fetch_dataset(files, out, cache, **FAST)
    assert counts["images"] == 3 and counts["annotations"] == 2
    assert counts["trainnames"] == 2 and counts["testnames"] == 1
    assert counts["files"] == 4 and counts["archives"] == 2
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{k}.jpg" for k in imgs)
    for rel, data in anns.items():
        assert (out / rel).read_bytes() == data  # bytes unchanged, CRLF kept
    assert b"\r\n" in (out / "annotation" / "1.txt").read_bytes()
    assert (out / "trainnames.txt").read_bytes() == b"100032540_1\n100040721_1\n"
    assert (cache / "helen_1.zip").is_file() and (cache / "extracted" / "helen_1" / "helen_1").is_dir()
    assert not list(cache.glob("*.part"))
    # Copied, not moved: the cache still holds everything.
    assert (cache / "extracted" / "annotation" / "annotation" / "1.txt").is_file()

    n = state.count()
    counts2 = fetch_dataset(files, out, cache, **FAST)
    assert state.count() == n  # every file reused from the cache, no request at all
    assert counts2 == counts


def test_reuse_of_verified_file_does_not_hit_server(server, tmp_path):
    base, state = server
    data = b"x" * 1000
    state.files["/f.bin"] = data
    dest = tmp_path / "f.bin"
    download_file(f"{base}/f.bin", dest, sha(data), **FAST)
    assert state.count("/f.bin") == 1
    assert download_file(f"{base}/f.bin", dest, sha(data), **FAST) == dest
    assert state.count("/f.bin") == 1


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path):
    base, state = server
    state.files["/f.bin"] = b"real content"
    dest = tmp_path / "f.bin"
    wrong = sha(b"something else")
    with pytest.raises(DownloadError) as ei:
        download_file(f"{base}/f.bin", dest, wrong, **FAST)
    msg = str(ei.value)
    assert f"{base}/f.bin" in msg and wrong in msg and sha(b"real content") in msg
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    assert state.count("/f.bin") == 1  # a full (non-resumed) transfer with a bad hash is not retried


def test_cut_mid_transfer_resumes_with_range(server, tmp_path):
    base, state = server
    data = bytes(range(256)) * 400  # 100 KiB
    state.files["/big.bin"] = data
    state.plans["/big.bin"] = ["cut"]
    dest = tmp_path / "big.bin"
    download_file(f"{base}/big.bin", dest, sha(data), chunk_size=4096, **{**FAST, "progress": True})
    assert dest.read_bytes() == data
    assert not (tmp_path / "big.bin.part").exists()
    reqs = [r for p, r in state.requests if p == "/big.bin"]
    assert reqs[0] is None and len(reqs) == 2
    assert reqs[1] is not None and re.fullmatch(r"bytes=\d+-", reqs[1])
    assert int(reqs[1][6:-1]) == len(data) // 2


def test_cut_then_server_ignores_range_restarts(server, tmp_path):
    base, state = server
    data = b"abcdefgh" * 5000
    state.files["/f.bin"] = data
    state.plans["/f.bin"] = ["cut"]
    state.no_range.add("/f.bin")
    dest = tmp_path / "f.bin"
    download_file(f"{base}/f.bin", dest, sha(data), chunk_size=1024, **FAST)
    assert dest.read_bytes() == data  # the 200 answer replaced the partial bytes instead of appending


def test_stale_part_file_is_resumed(server, tmp_path):
    base, state = server
    data = b"0123456789" * 1000
    state.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data[:3000])  # left over by an earlier, killed run
    download_file(f"{base}/f.bin", tmp_path / "f.bin", sha(data), **FAST)
    assert state.requests == [("/f.bin", "bytes=3000-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_complete_part_file_answered_416_is_verified(server, tmp_path):
    base, state = server
    data = b"complete" * 100
    state.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)  # killed between the last byte and the rename
    download_file(f"{base}/f.bin", tmp_path / "f.bin", sha(data), **FAST)
    assert state.requests == [("/f.bin", f"bytes={len(data)}-")]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_corrupt_part_file_is_discarded_after_bad_resume(server, tmp_path):
    base, state = server
    data = b"0123456789" * 1000
    state.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(b"X" * 3000)  # garbage prefix: resume gives a bad hash
    download_file(f"{base}/f.bin", tmp_path / "f.bin", sha(data), **FAST)
    assert [r for _, r in state.requests] == ["bytes=3000-", None]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_500_then_success_is_retried(server, tmp_path):
    base, state = server
    state.files["/f.bin"] = b"payload"
    state.plans["/f.bin"] = ["500"]
    download_file(f"{base}/f.bin", tmp_path / "f.bin", sha(b"payload"), **FAST)
    assert state.count("/f.bin") == 2
    assert (tmp_path / "f.bin").read_bytes() == b"payload"


def test_persistent_500_gives_up(server, tmp_path):
    base, state = server
    state.files["/f.bin"] = b"payload"
    state.plans["/f.bin"] = ["500"] * 10
    with pytest.raises(DownloadError, match="giving up"):
        download_file(f"{base}/f.bin", tmp_path / "f.bin", sha(b"payload"), **{**FAST, "retries": 2})
    assert state.count("/f.bin") == 3
    assert not (tmp_path / "f.bin").exists()


def test_404_fails_immediately(server, tmp_path):
    base, state = server
    with pytest.raises(DownloadError, match="404"):
        download_file(f"{base}/missing.zip", tmp_path / "missing.zip", "0" * 64, **FAST)
    assert state.count("/missing.zip") == 1
    assert not (tmp_path / "missing.zip").exists()


def test_connection_refused_is_retried_then_fails(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(DownloadError, match="2 attempts"):
        download_file(f"http://127.0.0.1:{port}/f", tmp_path / "f", "0" * 64, **{**FAST, "retries": 1})


def test_only_http_https_file_urls(tmp_path):
    with pytest.raises(DownloadError, match="scheme"):
        download_file("ftp://example.com/x.zip", tmp_path / "x.zip", "0" * 64, **FAST)
    src = tmp_path / "src.bin"
    src.write_bytes(b"local")
    dest = download_file(src.as_uri(), tmp_path / "out" / "src.bin", sha(b"local"), **FAST)
    assert dest.read_bytes() == b"local"


def test_remote_file_name():
    assert RemoteFile("https://h/x/helen_1.zip?dl=1", "0" * 64).name == "helen_1.zip"
    assert RemoteFile("https://h/get?id=3", "0" * 64, filename="a.zip").name == "a.zip"
    with pytest.raises(ValueError):
        _ = RemoteFile("https://h/", "0" * 64).name


# ----------------------------------------------------------------------------------------- archives


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _assert_refused(archive: Path, tmp_path: Path, match: str) -> None:
    before = _snapshot(tmp_path)
    target = tmp_path / "sub" / "target"
    (tmp_path / "sub").mkdir(exist_ok=True)
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_archive(archive, target)
    assert _snapshot(tmp_path) == before  # no target, no temp dir, nothing outside
    assert not (tmp_path / "evil.txt").exists() and not Path("/abs.txt").exists()


@pytest.mark.parametrize(
    "name,match",
    [
        ("../evil.txt", r"\.\./evil\.txt"),
        ("/abs.txt", "/abs.txt"),
        ("ok/../../evil.txt", "evil"),
        ("..\\evil.txt", "evil"),
    ],
)
def test_tar_path_traversal_refused(tmp_path, name, match):
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(_tar_bytes([("fine.txt", b"ok"), (name, b"pwned")]))
    _assert_refused(archive, tmp_path, match)


def test_tar_symlink_and_hardlink_refused(tmp_path):
    link = tarfile.TarInfo("innocent")
    link.type, link.linkname = tarfile.SYMTYPE, "../../evil.txt"
    archive = tmp_path / "sym.tar"
    archive.write_bytes(_tar_bytes([link, ("innocent", b"through the link")], mode="w"))
    _assert_refused(archive, tmp_path, "innocent")

    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    archive2 = tmp_path / "hard.tar.bz2"
    archive2.write_bytes(_tar_bytes([hard], mode="w:bz2"))
    _assert_refused(archive2, tmp_path, "hard")


def test_tar_device_refused(tmp_path):
    dev = tarfile.TarInfo("dev/null0")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    archive = tmp_path / "dev.tar.xz"
    archive.write_bytes(_tar_bytes([dev], mode="w:xz"))
    _assert_refused(archive, tmp_path, "null0")


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "a/../../evil.txt", "..\\evil.txt"])
def test_zip_path_traversal_refused(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip_bytes({"fine.txt": b"ok", name: b"pwned"}))
    _assert_refused(archive, tmp_path, "evil|abs")


def test_zip_symlink_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../evil.txt")
    archive = tmp_path / "sym.zip"
    archive.write_bytes(buf.getvalue())
    _assert_refused(archive, tmp_path, "link")


def test_size_and_member_limits(tmp_path):
    z = tmp_path / "big.zip"
    z.write_bytes(_zip_bytes({"a.bin": b"\0" * 5000}))  # compresses to almost nothing
    t = tmp_path / "big.tgz"
    t.write_bytes(_tar_bytes([("a.bin", b"\0" * 5000)]))
    for archive in (z, t):
        with pytest.raises(ArchiveLimitError, match="bytes"):
            extract_archive(archive, tmp_path / "out", max_total_bytes=1000)
        with pytest.raises(ArchiveLimitError, match="members"):
            extract_archive(archive, tmp_path / "out", max_members=0)
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tgz", "big.zip"]  # no temp dirs left


def test_extract_formats_and_replace(tmp_path):
    members = {"d/a.txt": b"A", "b.txt": b"B"}
    for mode, suffix in [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"), ("w:xz", ".tar.xz")]:
        archive = tmp_path / f"x{suffix}"
        archive.write_bytes(_tar_bytes(list(members.items()), mode=mode))
        out = tmp_path / f"out{suffix}"
        (out / "stale").mkdir(parents=True)
        files = extract_archive(archive, out)
        assert sorted(str(p.relative_to(out)) for p in files) == ["b.txt", "d/a.txt"]
        assert (out / "d" / "a.txt").read_bytes() == b"A" and not (out / "stale").exists()
    z = tmp_path / "x.zip"
    z.write_bytes(_zip_bytes({"d/": b"", **members}))
    files = extract_archive(z, tmp_path / "outzip")
    assert sorted(p.name for p in files) == ["a.txt", "b.txt"]
    with pytest.raises(ValueError, match="unsupported"):
        extract_archive(tmp_path / "x.rar", tmp_path / "o")


# ----------------------------------------------------------------------------------------- layout


def test_assemble_detects_annotation_by_content_and_errors(tmp_path):
    src = tmp_path / "src"
    (src / "imgs").mkdir(parents=True)
    (src / "imgs" / "p1.png").write_bytes(b"png")
    (src / "misc").mkdir()
    (src / "misc" / "p1_points.txt").write_bytes(_annotation("p1", 5))  # not in annotation/, found by content
    (src / "misc" / "notes.txt").write_bytes(b"just some notes\n")
    (src / "annotation").mkdir()
    (src / "annotation" / "7.txt").write_bytes(_annotation("other", 6))
    out = tmp_path / "out"
    counts = assemble_helen_layout([src], out)
    assert counts["images"] == 1 and counts["annotations"] == 2
    assert counts["annotations_without_image"] == 1 and counts["trainnames"] == 0
    assert sorted(p.name for p in (out / "annotation").iterdir()) == ["7.txt", "8.txt"]
    assert (out / "annotation" / "8.txt").read_bytes() == _annotation("p1", 5)
    assert (src / "imgs" / "p1.png").exists()  # copied, not moved

    with pytest.raises(LayoutError, match="annotation"):
        assemble_helen_layout([src / "imgs"], tmp_path / "out2")
    with pytest.raises(LayoutError, match="images"):
        assemble_helen_layout([src / "annotation"], tmp_path / "out3")
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("do not delete")
    with pytest.raises(LayoutError, match="refusing"):
        assemble_helen_layout([src], tmp_path / "precious")
    assert (tmp_path / "precious" / "thesis.tex").exists()


# ------------------------------------------------------------- whole releases served over HTTP, attacked


def _served_release(state: _State, base: str, archive_name: str, archive: bytes) -> list[RemoteFile]:
    """A release of one archive plus the two name lists, each pinned by the sha256 of what is served."""
    state.files.update(
        {f"/{archive_name}": archive, "/trainnames.txt": b"100032540_1\n", "/testnames.txt": b"100040721_1\n"}
    )
    return [
        RemoteFile(f"{base}{path}", sha(state.files[path]))
        for path in (f"/{archive_name}", "/trainnames.txt", "/testnames.txt")
    ]


def _good_helen_zip() -> bytes:
    return _zip_bytes(
        {
            "helen/100032540_1.jpg": _jpeg(1),
            "helen/100040721_1.jpg": _jpeg(2),
            "helen/annotation/1.txt": _annotation("100032540_1", 1),
            "helen/annotation/2.txt": _annotation("100040721_1", 2),
        }
    )


def _nothing_assembled(out: Path, cache: Path) -> bool:
    extracted = cache / "extracted"
    return not out.exists() and (not extracted.exists() or not any(extracted.iterdir()))


def test_served_release_cut_mid_transfer_resumes_and_assembles(server, tmp_path):
    base, state = server
    files = _served_release(state, base, "helen.zip", _good_helen_zip())
    state.plans["/helen.zip"] = ["cut"]
    counts = fetch_dataset(files, tmp_path / "out", tmp_path / "cache", **FAST)
    assert counts["images"] == 2 and counts["annotations"] == 2
    ranges = [rng for path, rng in state.requests if path == "/helen.zip"]
    assert ranges[0] is None and ranges[1].startswith("bytes=")  # the second request resumed


def test_served_release_corrupted_in_transit_is_never_used(server, tmp_path):
    base, state = server
    good = _good_helen_zip()
    files = _served_release(state, base, "helen.zip", good)
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF  # one byte flipped on the way: the pinned sha256 no longer matches
    state.files["/helen.zip"] = bytes(flipped)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch_dataset(files, out, cache, **FAST)
    assert _nothing_assembled(out, cache)
    assert not (cache / "helen.zip").exists() and not list(cache.glob("*.part"))


@pytest.mark.parametrize(
    "archive_name, damage",
    [
        ("helen.tar.gz", lambda data: data[: len(data) // 2]),  # published truncated
        (
            "helen.zip",
            lambda data: data[:60] + bytes(b ^ 0x5A for b in data[60:200]) + data[200:],
        ),  # deflate stream garbled
    ],
)
def test_served_corrupt_archive_with_matching_sha_fails_cleanly(server, tmp_path, archive_name, damage):
    base, state = server
    members = [("helen/100032540_1.jpg", _jpeg(1) * 50), ("helen/annotation/1.txt", _annotation("100032540_1", 1))]
    good = _tar_bytes(members) if archive_name.endswith(".tar.gz") else _zip_bytes(dict(members))
    files = _served_release(state, base, archive_name, damage(good))  # the publisher's sha256 is of the broken file
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(DownloadError, match="corrupt or unreadable archive"):
        fetch_dataset(files, out, cache, **FAST)
    assert _nothing_assembled(out, cache)
    assert not [p for p in cache.rglob("*") if ".extract-" in p.name]  # no half-extracted temp folder left


@pytest.mark.parametrize("member", ["../../escaped.txt", "/tmp/lipseg-absolute-escape.txt", "helen/../../escaped.txt"])
@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_served_malicious_member_path_is_refused(server, tmp_path, member, kind):
    base, state = server
    members = [("helen/100032540_1.jpg", _jpeg(1)), (member, b"pwned")]
    archive = _zip_bytes(dict(members)) if kind == "zip" else _tar_bytes(members)
    files = _served_release(state, base, f"helen.{kind}", archive)
    work = tmp_path / "deep" / "work"
    out, cache = work / "out", work / "cache"
    with pytest.raises(UnsafeArchiveError):
        fetch_dataset(files, out, cache, **FAST)
    assert _nothing_assembled(out, cache)
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/lipseg-absolute-escape.txt").exists()


def test_served_symlink_member_is_refused(server, tmp_path):
    base, state = server
    link = tarfile.TarInfo("helen/annotation")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    files = _served_release(state, base, "helen.tar.gz", _tar_bytes([link, ("helen/annotation/passwd", b"x")]))
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError, match="link"):
        fetch_dataset(files, out, cache, **FAST)
    assert _nothing_assembled(out, cache)
