"""Tar extraction through the standard library's `data` filter and the project's stricter rules, on crafted tars."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from lipseg.data.archives import UnsafeArchiveError, extract_archive


def tar_of(*members: tarfile.TarInfo | tuple[str, bytes, int]) -> bytes:
    """A tar of TarInfo entries as given and (name, data, mode) regular files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
                continue
            name, data, mode = member
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def refused(tmp_path: Path, data: bytes, match: str) -> None:
    archive = tmp_path / "crafted.tar"
    archive.write_bytes(data)
    (tmp_path / "sub").mkdir()
    with pytest.raises(UnsafeArchiveError, match=match):
        extract_archive(archive, tmp_path / "sub" / "target")
    assert list((tmp_path / "sub").iterdir()) == []  # no target and no half-extracted temp folder
    assert sorted(path.name for path in tmp_path.iterdir()) == ["crafted.tar", "sub"]


def test_modes_are_made_safe_by_the_data_filter(tmp_path: Path) -> None:
    archive = tmp_path / "modes.tar"
    archive.write_bytes(
        tar_of(("setuid.sh", b"#!/bin/sh\n", 0o4777), ("unreadable.txt", b"x", 0o000), ("plain.txt", b"y", 0o644))
    )
    files = extract_archive(archive, tmp_path / "out")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    # No setuid bit, no group/other write; the owner can always read and write.
    assert modes == {"setuid.sh": 0o755, "unreadable.txt": 0o600, "plain.txt": 0o644}


def test_a_dotdot_that_stays_inside_is_extracted_there(tmp_path: Path) -> None:
    archive = tmp_path / "inside.tar"
    archive.write_bytes(tar_of(("a/../b.txt", b"B", 0o644), ("c\\d.txt", b"D", 0o644)))
    files = extract_archive(archive, tmp_path / "out")
    assert sorted(str(path.relative_to(tmp_path / "out")) for path in files) == ["b.txt", "c/d.txt"]
    assert (tmp_path / "out" / "c" / "d.txt").read_bytes() == b"D"  # a backslash is a separator


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (("../escaped.txt", b"x", 0o644), r"outside the target \('\.\.'\): '\.\./escaped\.txt'"),
        (("a/../../escaped.txt", b"x", 0o644), r"outside the target"),
        (("..\\escaped.txt", b"x", 0o644), r"outside the target"),
        # The data filter alone would strip the slash and extract these inside the target.
        (("/etc/escaped.txt", b"x", 0o644), r"absolute path: '/etc/escaped\.txt'"),
        (("C:\\escaped.txt", b"x", 0o644), r"absolute path"),
        (special("fifo", tarfile.FIFOTYPE), r"device/special-file archive member: 'fifo'"),
        (special("disk", tarfile.BLKTYPE), r"device/special-file archive member: 'disk'"),
        (special("null", tarfile.CHRTYPE), r"device/special-file archive member: 'null'"),
        (special("out", tarfile.SYMTYPE, "../../escaped.txt"), r"link archive member: 'out' -> '\.\./\.\./escaped"),
        (special("root", tarfile.SYMTYPE, "/"), r"link archive member: 'root'"),
        (special("hard", tarfile.LNKTYPE, "/etc/passwd"), r"link archive member: 'hard'"),
        # Links inside the target pass the data filter; the datasets have none, so they are refused too.
        (special("inner", tarfile.SYMTYPE, "fine.txt"), r"link archive member: 'inner' -> 'fine\.txt'"),
    ],
)
def test_each_unsafe_member_is_refused_by_name(tmp_path: Path, member, match: str) -> None:
    refused(tmp_path, tar_of(("fine.txt", b"ok", 0o644), member), match)


def test_a_file_over_a_folder_is_refused(tmp_path: Path) -> None:
    refused(
        tmp_path,
        tar_of(("d/inner.txt", b"x", 0o644), ("d", b"not a folder", 0o644)),
        "collides with a directory of the same name",
    )
