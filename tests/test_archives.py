"""Uploaded-archive safety: every malicious fixture is generated in tmp_path at test time."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest

from app.api.errors import status_for
from app.datasets import archives
from app.datasets.archives import (
    ArchiveBomb,
    ArchiveError,
    ArchiveLimits,
    CorruptArchive,
    Member,
    NotAnArchive,
    UnsafeArchive,
    UploadTooLarge,
    archive_format,
    extract_archive,
    inspect_archive,
)

JPEG = b"\xff\xd8\xff\xe0" + os.urandom(2000)  # incompressible, like real images

# --------------------------------------------------------------------------------------------
# fixture builders


def make_zip(
    path: Path,
    entries: Iterable[tuple[str | zipfile.ZipInfo, bytes]],
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" on purpose in some tests
        with zipfile.ZipFile(path, "w", compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return path


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def make_tar(
    path: Path,
    entries: Iterable[tuple[tarfile.TarInfo, bytes | None]],
    mode: str = "w",
    **kwargs: object,
) -> Path:
    with tarfile.open(path, mode, **kwargs) as tf:  # type: ignore[call-overload]
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def dataset_entries() -> list[tuple[str, bytes]]:
    return [
        ("market/", b""),
        ("market/bounding_box_train/", b""),
        ("market/bounding_box_train/0001_c1s1_001.jpg", JPEG),
        ("market/query/0002_c2s1_001.jpg", JPEG[::-1]),  # parent dir only implied
        ("labels.csv", b"path,pid,camid\n" * 10),
    ]


EXPECTED_FILES = [
    "market/bounding_box_train/0001_c1s1_001.jpg",
    "market/query/0002_c2s1_001.jpg",
    "labels.csv",
]


def assert_empty_or_absent(dest: Path) -> None:
    assert not dest.exists() or list(dest.iterdir()) == []


def expect(exc_type: type[ArchiveError], path: Path, tmp_path: Path, **limits: int | float):
    """inspect and extract both raise; extraction leaves nothing behind."""
    lim = ArchiveLimits(**limits)  # type: ignore[arg-type]
    with pytest.raises(exc_type) as inspected:
        inspect_archive(path, lim)
    dest = tmp_path / "rejected"
    with pytest.raises(exc_type) as extracted:
        extract_archive(path, dest, lim)
    assert not dest.exists()
    assert inspected.value.detail == extracted.value.detail
    return inspected.value


def patch_u32(data: bytearray, signature: bytes, field_offset: int, value: int) -> None:
    """Overwrite a 32-bit field in every zip header with this signature."""
    start = 0
    while (pos := data.find(signature, start)) >= 0:
        struct.pack_into("<L", data, pos + field_offset, value)
        start = pos + 4


# --------------------------------------------------------------------------------------------
# happy paths


@pytest.mark.parametrize(
    ("suffix", "mode", "fmt"),
    [
        (".zip", None, "zip"),
        (".tar", "w", "tar"),
        (".tgz", "w:gz", "tar.gz"),
        (".tar.bz2", "w:bz2", "tar.bz2"),
        (".tar.xz", "w:xz", "tar.xz"),
    ],
)
def test_extracts_nested_dataset(tmp_path: Path, suffix: str, mode: str | None, fmt: str) -> None:
    path = tmp_path / f"upload{suffix}"
    if mode is None:
        make_zip(path, dataset_entries())
    else:
        entries = []
        for name, data in dataset_entries():
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                entries.append((info, None))
            else:
                entries.append(tar_file(name, data))
        make_tar(path, entries, mode)
    assert archive_format(path) == fmt

    members = inspect_archive(path)
    assert [m.name for m in members if not m.is_dir] == EXPECTED_FILES
    assert Member("market/bounding_box_train", 0, True) in members
    assert Member("labels.csv", 150, False) in members

    dest = tmp_path / "dataset"
    assert extract_archive(path, dest) == EXPECTED_FILES
    assert (dest / EXPECTED_FILES[0]).read_bytes() == JPEG
    assert (dest / EXPECTED_FILES[1]).read_bytes() == JPEG[::-1]
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        EXPECTED_FILES
    )


def test_format_is_judged_by_content_not_name(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "photo.png", [tar_file("a.jpg", JPEG)])
    assert archive_format(tar) == "tar"
    zf = make_zip(tmp_path / "data.tar.gz", [("a.jpg", JPEG)])
    assert archive_format(zf) == "zip"


def test_v7_tar_without_magic_is_recognised(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "v7.tar", [tar_file("a.jpg", JPEG)], format=tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    data[257:265] = b"\0" * 8  # drop magic and version: what a v7 tar looks like
    data[148:156] = b"        "
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path.write_bytes(bytes(data))
    assert archive_format(path) == "tar"
    assert [m.name for m in inspect_archive(path)] == ["a.jpg"]


def test_windows_names_dot_prefix_and_root_entry(tmp_path: Path) -> None:
    zpath = make_zip(tmp_path / "win.zip", [("dir\\sub\\", b""), ("dir\\sub\\img.jpg", JPEG)])
    dest = tmp_path / "w"
    assert extract_archive(zpath, dest) == ["dir/sub/img.jpg"]
    assert (dest / "dir" / "sub" / "img.jpg").read_bytes() == JPEG

    root = tarfile.TarInfo(".")
    root.type = tarfile.DIRTYPE
    tpath = make_tar(tmp_path / "dot.tar", [(root, None), tar_file("./a/./b.jpg", JPEG)])
    assert inspect_archive(tpath) == [Member("a/b.jpg", len(JPEG), False)]


def test_macos_junk_is_skipped_but_still_validated(tmp_path: Path) -> None:
    path = make_zip(
        tmp_path / "mac.zip",
        [
            ("__MACOSX/", b""),
            ("__MACOSX/a/._b.jpg", b"resource fork"),
            ("a/.DS_Store", b"finder"),
            ("a/._b.jpg", b"resource fork"),
            ("a/b.jpg", JPEG),
        ],
    )
    assert extract_archive(path, tmp_path / "out") == ["a/b.jpg"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a", "b.jpg"]

    evil = make_zip(tmp_path / "evil.zip", [("__MACOSX/../../evil.txt", b"x")])
    assert "'..'" in expect(UnsafeArchive, evil, tmp_path).detail


def test_case_insensitive_duplicates_are_allowed(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "case.zip", [("A.jpg", JPEG), ("a.jpg", JPEG)])
    assert [m.name for m in inspect_archive(path)] == ["A.jpg", "a.jpg"]


def test_duplicate_directories_are_allowed(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "dirs.zip", [("a/", b""), ("a/", b""), ("a/x.jpg", JPEG)])
    assert extract_archive(path, tmp_path / "out") == ["a/x.jpg"]


def test_existing_empty_destination_is_used_and_left_empty_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "existing"
    dest.mkdir()
    good = make_zip(tmp_path / "good.zip", [("x.jpg", JPEG)])
    assert extract_archive(good, dest) == ["x.jpg"]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    lim = ArchiveLimits(max_total_bytes=len(JPEG) + 10)
    two = make_zip(tmp_path / "two.zip", [("a/x.jpg", JPEG), ("a/y.jpg", JPEG)])
    with pytest.raises(ArchiveBomb):
        extract_archive(two, fresh, lim)
    assert fresh.is_dir() and list(fresh.iterdir()) == []


def test_destination_must_be_fresh(tmp_path: Path) -> None:
    good = make_zip(tmp_path / "good.zip", [("x.jpg", JPEG)])
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        extract_archive(good, full)
    assert (full / "keep.txt").read_text() == "mine"

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ValueError, match="symlink"):
        extract_archive(good, link)
    assert not (tmp_path / "elsewhere").exists()

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError):
        extract_archive(good, a_file)


# --------------------------------------------------------------------------------------------
# not an archive


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 600, "unrecognised"),
        (b"path,pid,camid\nimg.jpg,1,1\n" * 40, "unrecognised"),
        (gzip.compress(b"just some text\n" * 100), "not a tar"),
        (b"\x1f\x8b\x08" + b"garbage" * 10, "damaged"),
        (b"\0" * 10240, "unrecognised"),  # zero blocks only
    ],
)
def test_not_an_archive(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "upload.zip"
    path.write_bytes(content)
    with pytest.raises(NotAnArchive) as info:
        archive_format(path)
    assert status_for(info.value) == 415
    assert reason in info.value.detail
    assert ".zip, .tar, .tar.gz/.tgz" in info.value.detail
    with pytest.raises(NotAnArchive):
        extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# unsafe zip members


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.txt", "'..'"),
        ("a/../../evil.txt", "'..'"),
        ("a/../b.txt", "'..'"),  # refused even though it would stay inside
        ("/abs.txt", "absolute"),
        ("C:\\..\\x", "absolute"),
        ("C:/x.txt", "absolute"),
        ("\\\\server\\share\\x.txt", "absolute"),
        ("..\\evil.txt", "'..'"),
        ("bell\x07.txt", "control character"),
        ("line\nbreak.txt", "control character"),
    ],
)
def test_unsafe_zip_names(tmp_path: Path, name: str, reason: str) -> None:
    path = make_zip(tmp_path / "bad.zip", [("ok.jpg", JPEG), (name, b"x")])
    err = expect(UnsafeArchive, path, tmp_path)
    assert status_for(err) == 422
    assert err.member == name
    assert reason in err.detail
    assert repr(name) in err.detail


def test_zip_symlink_entry(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("images/link")
    link.external_attr = 0o120777 << 16
    path = make_zip(tmp_path / "link.zip", [("images/a.jpg", JPEG), (link, b"/etc/passwd")])
    err = expect(UnsafeArchive, path, tmp_path)
    assert err.member == "images/link"
    assert "symlink" in err.detail


@pytest.mark.parametrize(
    ("mode", "word"),
    [(0o020644, "character device"), (0o060644, "block device"), (0o010644, "fifo")],
)
def test_zip_special_file_modes(tmp_path: Path, mode: int, word: str) -> None:
    info = zipfile.ZipInfo("dev")
    info.external_attr = mode << 16
    path = make_zip(tmp_path / "dev.zip", [(info, b"")])
    assert word in expect(UnsafeArchive, path, tmp_path).detail


def test_zip_duplicates_and_file_directory_conflicts(tmp_path: Path) -> None:
    dup = make_zip(tmp_path / "dup.zip", [("x.jpg", JPEG), ("x.jpg", b"other")])
    assert "duplicate" in expect(UnsafeArchive, dup, tmp_path).detail

    file_then_child = make_zip(tmp_path / "fc.zip", [("a", b"file"), ("a/b.jpg", JPEG)])
    err = expect(UnsafeArchive, file_then_child, tmp_path)
    assert err.member == "a/b.jpg" and "parent 'a' is a file" in err.detail

    child_then_file = make_zip(tmp_path / "cf.zip", [("a/b.jpg", JPEG), ("a", b"file")])
    assert "same path" in expect(UnsafeArchive, child_then_file, tmp_path).detail

    dir_then_file = make_zip(tmp_path / "df.zip", [("a/", b""), ("./a", b"file")])
    assert "same path" in expect(UnsafeArchive, dir_then_file, tmp_path).detail

    slash_variants = make_zip(tmp_path / "sv.zip", [("a/b.jpg", JPEG), ("a\\b.jpg", JPEG)])
    assert "duplicate" in expect(UnsafeArchive, slash_variants, tmp_path).detail


def test_zip_path_length_and_depth(tmp_path: Path) -> None:
    deep = make_zip(tmp_path / "deep.zip", [("a/b/c/d/e.jpg", JPEG)])
    assert "deeper than 3" in expect(UnsafeArchive, deep, tmp_path, max_depth=3).detail

    long = make_zip(tmp_path / "long.zip", [("x" * 60 + ".jpg", JPEG)])
    assert "longer than 50" in expect(UnsafeArchive, long, tmp_path, max_path_length=50).detail

    component = make_zip(tmp_path / "comp.zip", [("y" * 300, b"x")])
    assert "component longer than 255" in expect(UnsafeArchive, component, tmp_path).detail


def test_zip_bzip2_member_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bz.zip", [("a.jpg", JPEG)], compression=zipfile.ZIP_BZIP2)
    assert "bzip2" in expect(UnsafeArchive, path, tmp_path).detail


def test_zip_encrypted_member_is_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "enc.zip", [("a.jpg", JPEG)])
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.find(signature)
        struct.pack_into(
            "<H", data, pos + offset, struct.unpack_from("<H", data, pos + offset)[0] | 1
        )
    path.write_bytes(bytes(data))
    assert "encrypted" in expect(UnsafeArchive, path, tmp_path).detail


def to_zip64(data: bytes) -> bytes:
    """Rewrite a small zip's end records the zip64 way (as if it had > 65535 members)."""
    eocd = data.rfind(b"PK\x05\x06")
    _, _, _, _, count, cd_size, cd_offset, _ = struct.unpack_from("<4s4H2LH", data, eocd)
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, eocd, 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return data[:eocd] + record + locator + end


def test_central_directory_is_found_where_zipfile_finds_it(tmp_path: Path) -> None:
    """The member pre-count must walk the very bytes zipfile will load."""
    entries = [(f"d/{i}.jpg", JPEG[:100]) for i in range(30)]
    plain = make_zip(tmp_path / "plain.zip", entries).read_bytes()
    with_comment = tmp_path / "comment.zip"
    with zipfile.ZipFile(with_comment, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        zf.comment = b"dataset v1 " * 1000
    variants = {
        "plain": plain,
        "comment": with_comment.read_bytes(),
        "prepended": b"#!/bin/sh\nexit 0\n" + plain,  # self-extractor style
        "zip64": to_zip64(plain),
    }
    for label, data in variants.items():
        path = tmp_path / f"{label}.bin"
        path.write_bytes(data)
        with path.open("rb") as f, zipfile.ZipFile(f) as zf:
            assert len(zf.infolist()) == 30, label
            start, length = archives._zip_directory_span(f, len(data))
            assert start == zf.start_dir and length > 30 * 46, label
            archives._check_zip_directory(f, len(data), ArchiveLimits(max_members=30))
            with pytest.raises(ArchiveBomb):
                archives._check_zip_directory(f, len(data), ArchiveLimits(max_members=29))
    # an end record hidden in the comment wins for zipfile (last one): an empty directory
    fake = tmp_path / "fake.zip"
    fake.write_bytes(plain[:-2] + struct.pack("<H", 30) + b"PK\x05\x06" + b"\0" * 26)
    with fake.open("rb") as f, zipfile.ZipFile(f) as zf:
        assert zf.infolist() == []
        assert archives._zip_directory_span(f, fake.stat().st_size) == (zf.start_dir, 0)
    assert inspect_archive(fake) == []

    zip64 = tmp_path / "zip64.zip"
    zip64.write_bytes(variants["zip64"])
    assert len(extract_archive(zip64, tmp_path / "out64")) == 30


def test_empty_zip_is_an_empty_archive(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "empty.zip", [])
    assert archive_format(path) == "zip"
    assert extract_archive(path, tmp_path / "out") == []


def test_zip_oversized_entry_comment_is_refused_before_zipfile_parses(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("a.jpg")
    info.comment = b"c" * 5000
    path = make_zip(tmp_path / "comment.zip", [(info, JPEG)])
    assert "oversized" in expect(UnsafeArchive, path, tmp_path).detail


# --------------------------------------------------------------------------------------------
# unsafe tar members


@pytest.mark.parametrize(
    ("entry", "word"),
    [
        (tar_special("link", tarfile.SYMTYPE, "/etc/passwd"), "symlink"),
        (tar_special("inside", tarfile.SYMTYPE, "a.jpg"), "symlink"),
        (tar_special("hard", tarfile.LNKTYPE, "a.jpg"), "hardlink"),
        (tar_special("tty", tarfile.CHRTYPE), "character device"),
        (tar_special("disk", tarfile.BLKTYPE), "block device"),
        (tar_special("pipe", tarfile.FIFOTYPE), "fifo"),
        (tar_special("vol", b"V"), "of type"),
        (tar_file("../evil.txt", b"x"), "'..'"),
        (tar_file("/abs.txt", b"x"), "absolute"),
        (tar_file("ctl\x1b[31m.txt", b"x"), "control character"),
    ],
)
def test_unsafe_tar_members(tmp_path: Path, entry: tuple[tarfile.TarInfo, bytes], word: str):
    path = make_tar(tmp_path / "bad.tar.gz", [tar_file("a.jpg", JPEG), entry], "w:gz")
    err = expect(UnsafeArchive, path, tmp_path)
    assert err.member == entry[0].name
    assert word in err.detail


def test_tar_extended_names_are_checked_too(tmp_path: Path) -> None:
    """The name that counts is the one tarfile resolves from pax / GNU long-name records."""
    info, data = tar_file("harmless.jpg", JPEG)
    info.pax_headers = {"path": "../../evil.jpg"}
    pax = make_tar(tmp_path / "pax.tar", [(info, data)], format=tarfile.PAX_FORMAT)
    assert expect(UnsafeArchive, pax, tmp_path).member == "../../evil.jpg"

    long_name = "d" * 120 + "/../../evil.jpg"
    gnu = make_tar(tmp_path / "gnu.tar", [tar_file(long_name, JPEG)], format=tarfile.GNU_FORMAT)
    assert expect(UnsafeArchive, gnu, tmp_path).member == long_name


def test_tar_name_that_is_not_utf8(tmp_path: Path) -> None:
    name = b"bad\xff.jpg".decode("utf-8", "surrogateescape")
    path = make_tar(
        tmp_path / "latin.tar",
        [tar_file(name, JPEG)],
        format=tarfile.GNU_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    )
    err = expect(UnsafeArchive, path, tmp_path)
    assert "not valid UTF-8" in err.detail
    assert "\\udcff" in err.detail  # escaped, never raw bytes in the message


def test_tar_file_and_directory_conflict(tmp_path: Path) -> None:
    d = tarfile.TarInfo("a")
    d.type = tarfile.DIRTYPE
    path = make_tar(tmp_path / "c.tar", [(d, None), tar_file("a", b"x")])
    assert "same path" in expect(UnsafeArchive, path, tmp_path).detail


def test_tar_sparse_member(tmp_path: Path) -> None:
    path = make_tar(
        tmp_path / "sparse.tar",
        [tar_special("holes", tarfile.GNUTYPE_SPARSE)],
        format=tarfile.GNU_FORMAT,
    )
    assert "sparse" in expect(UnsafeArchive, path, tmp_path).detail


def test_tar_oversized_pax_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archives, "_MAX_TAR_HEADER_BYTES", 4096)
    info, data = tar_file("a.jpg", JPEG)
    info.pax_headers = {"comment": "z" * 10_000}
    path = make_tar(tmp_path / "pax.tar", [(info, data)], format=tarfile.PAX_FORMAT)
    assert expect(ArchiveBomb, path, tmp_path).limit == "header_bytes"


def test_tar_chained_headers_do_not_recurse_the_server_to_death(tmp_path: Path) -> None:
    header = tarfile.TarInfo("g").tobuf(tarfile.USTAR_FORMAT)
    header = header[:156] + tarfile.XGLTYPE + header[157:]
    chksum = sum(header[:148]) + 256 + sum(header[156:])
    header = header[:148] + b"%06o\0 " % chksum + header[156:]
    path = tmp_path / "chain.tar"
    path.write_bytes(header * 3000 + b"\0" * 1024)
    expect(CorruptArchive, path, tmp_path)


def test_xz_decoder_memory_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_tar(tmp_path / "big-dict.tar.xz", [tar_file("a.jpg", JPEG)], "w:xz", preset=6)
    assert len(inspect_archive(path)) == 1
    monkeypatch.setattr(archives, "_XZ_MEMLIMIT", 1 << 20)  # preset 6 needs ~9 MiB to decode
    with pytest.raises(ArchiveBomb) as info:
        archive_format(path)
    assert info.value.limit == "memory"
    expect(ArchiveBomb, path, tmp_path)


def test_concatenated_and_padded_xz_streams(tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "a.tar", [tar_file("a.jpg", JPEG)]).read_bytes()
    path = tmp_path / "cat.tar.xz"
    path.write_bytes(lzma.compress(tar[:1024]) + lzma.compress(tar[1024:]) + b"\0" * 8)
    assert extract_archive(path, tmp_path / "out") == ["a.jpg"]
    truncated = tmp_path / "cut.tar.xz"
    truncated.write_bytes(lzma.compress(tar)[:-100])
    expect(CorruptArchive, truncated, tmp_path)


def test_truncated_tar_gz_is_corrupt(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "t.tgz", [tar_file("a.jpg", JPEG * 20)], "w:gz")
    path.write_bytes(path.read_bytes()[:-2000])
    err = expect(CorruptArchive, path, tmp_path)
    assert status_for(err) == 422


# --------------------------------------------------------------------------------------------
# bombs


def test_zip_bomb_by_member_ratio(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * 5_000_000)])
    assert path.stat().st_size < 10_000
    err = expect(ArchiveBomb, path, tmp_path)
    assert err.limit == "ratio" and "'zeros.bin'" in err.detail and "200:1" in err.detail


def test_zip_bomb_by_whole_archive_ratio(tmp_path: Path) -> None:
    # each member stays under the per-member grace; together they pass max_ratio
    entries = [(f"z{i}.bin", b"\0" * 60_000) for i in range(20)]
    path = make_zip(tmp_path / "many.zip", entries)
    err = expect(ArchiveBomb, path, tmp_path, ratio_grace_bytes=100_000)
    assert err.limit == "ratio" and "archive" in err.detail


def test_small_compressible_files_are_fine_under_the_grace(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "ok.zip", [("blank.csv", b"0," * 100_000)])
    assert [m.name for m in inspect_archive(path)] == ["blank.csv"]


def test_too_many_members(tmp_path: Path) -> None:
    entries = [(f"img{i}.jpg", b"x") for i in range(11)]
    zpath = make_zip(tmp_path / "many.zip", entries)
    err = expect(ArchiveBomb, zpath, tmp_path, max_members=10)
    assert err.limit == "members" and "10" in err.detail
    assert len(inspect_archive(zpath, ArchiveLimits(max_members=11))) == 11

    tpath = make_tar(tmp_path / "many.tar", [tar_file(n, d) for n, d in entries])
    assert expect(ArchiveBomb, tpath, tmp_path, max_members=10).limit == "members"


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_member_over_max_member_bytes(tmp_path: Path, suffix: str) -> None:
    entries = [("small.jpg", JPEG[:500]), ("big.jpg", JPEG)]
    if suffix == ".zip":
        path = make_zip(tmp_path / "big.zip", entries)
    else:
        path = make_tar(tmp_path / "big.tar", [tar_file(n, d) for n, d in entries])
    err = expect(ArchiveBomb, path, tmp_path, max_member_bytes=1000)
    assert err.limit == "member_bytes" and "'big.jpg'" in err.detail


def test_total_over_max_total_bytes(tmp_path: Path) -> None:
    path = make_tar(tmp_path / "t.tar", [tar_file(f"{i}.jpg", JPEG) for i in range(5)])
    err = expect(ArchiveBomb, path, tmp_path, max_total_bytes=4 * len(JPEG))
    assert err.limit == "total_bytes" and "'4.jpg'" in err.detail


def test_tar_gz_bomb_is_stopped_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 8 * 2**20
    path = make_tar(tmp_path / "bomb.tar.gz", [tar_file("zeros.bin", b"\0" * size)], "w:gz")
    compressed = path.stat().st_size
    assert compressed < 20_000

    inflated = 0
    real_read = gzip.GzipFile.read

    def counting_read(self: gzip.GzipFile, n: int = -1) -> bytes:
        nonlocal inflated
        data = real_read(self, n)
        inflated += len(data)
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting_read)
    err = expect(ArchiveBomb, path, tmp_path, ratio_grace_bytes=64 * 1024)
    assert err.limit == "ratio" and "while streaming" in err.detail
    # two attempts (inspect, extract), each stopped near 200 x compressed, far before 8 MiB
    assert inflated < 2 * (200 * compressed + 2 * 2**20) < 2 * size


def test_zip_lying_header_fails_and_leaves_nothing(tmp_path: Path) -> None:
    text = b"".join(b"line %d of the labels\n" % i for i in range(5000))
    path = make_zip(tmp_path / "lie.zip", [("first.jpg", JPEG), ("labels.csv", text)])
    data = bytearray(path.read_bytes())
    # claim 1000 bytes for labels.csv in both its local and its central header
    local = data.find(b"PK\x03\x04", 30)
    struct.pack_into("<L", data, local + 22, 1000)
    central = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    struct.pack_into("<L", data, central + 24, 1000)
    path.write_bytes(bytes(data))

    assert [m.size for m in inspect_archive(path)] == [len(JPEG), 1000]
    dest = tmp_path / "out"
    with pytest.raises(CorruptArchive) as info:  # zipfile stops at 1000 bytes: bad CRC
        extract_archive(path, dest)
    assert status_for(info.value) == 422
    assert not dest.exists()


def test_member_yielding_more_than_declared_is_a_bomb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real bytes are counted, whatever the decompressor does with the header."""
    path = make_zip(tmp_path / "lie.zip", [("first.jpg", JPEG), ("second.jpg", JPEG)])
    real_open = zipfile.ZipFile.open

    def lying_open(self: zipfile.ZipFile, info: zipfile.ZipInfo, *args: object, **kw: object):
        if info.filename == "second.jpg":
            return io.BytesIO(JPEG + b"more than declared")
        return real_open(self, info, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveBomb) as info:
        extract_archive(path, dest)
    assert info.value.limit == "member_bytes"
    assert "'second.jpg'" in info.value.detail and "declares" in info.value.detail
    assert list(dest.iterdir()) == []  # first.jpg, already written, was removed


def test_member_yielding_less_than_declared_is_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_zip(tmp_path / "short.zip", [("a.jpg", JPEG)])
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: io.BytesIO(b"x"))
    with pytest.raises(CorruptArchive, match="shorter"):
        extract_archive(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# errors and limits


def test_error_status_codes() -> None:
    assert status_for(UploadTooLarge(1)) == 413
    assert status_for(NotAnArchive("x")) == 415
    assert status_for(UnsafeArchive("m", "why")) == 422
    assert status_for(ArchiveBomb("ratio", "x")) == 422
    assert status_for(CorruptArchive("x")) == 422
    long = UnsafeArchive("n" * 10_000, "why")
    assert len(long.detail) < 300


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_members"):
        ArchiveLimits(max_members=0)
    assert ArchiveLimits(ratio_grace_bytes=0).ratio_grace_bytes == 0
