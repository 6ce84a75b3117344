"""Safe handling of uploaded dataset archives (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

An upload is hostile until proven otherwise. This module makes sure that an archive can
neither write outside its destination nor exhaust disk, memory or CPU, and that every problem
surfaces as an :class:`ArchiveError` carrying an HTTP status and a message safe to show.

Flow used by ``POST /datasets``::

    receive_multipart(request, upload_path, ...)               # app.api.uploads: 413 past the limit
    files = extract_archive(upload_path, dataset_dir, limits)  # 415 / 422 on bad input

Design:

* The format comes from magic bytes, never from the file name (:func:`archive_format`).
* :func:`inspect_archive` validates *every* member (path, type, declared sizes, counts,
  compression ratio) before :func:`extract_archive` writes anything; extraction then reads the
  archive a second time and checks the same things again on the *real* bytes, because headers
  can lie.
* Only regular files and directories are extracted, through our own ``open(path, "xb")``:
  never ``extractall``, no permission/owner/time restoration, no links or special files.
* tar streams (compressed or not) are read forward only through a counting reader, so a
  gzip/bzip2/xz bomb is stopped while it inflates, not after it reached the disk.
* zip archives: the central directory is counted before :mod:`zipfile` loads it into memory,
  only stored and deflated members are accepted (zipfile inflates bzip2/lzma members without
  an output bound), and the per-member declared ratio is checked.
* macOS metadata (``__MACOSX/``, ``._*``, ``.DS_Store``) is validated like everything else but
  silently skipped: it is neither extracted nor returned by :func:`inspect_archive`.
* A directory entry that normalises to the archive root (``.`` or ``./``, common in tars made
  with ``tar -C dir -cf x.tar .``) is accepted and skipped.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

__all__ = [
    "DEFAULT_LIMITS",
    "ArchiveBomb",
    "ArchiveError",
    "ArchiveFormat",
    "ArchiveLimits",
    "CorruptArchive",
    "Member",
    "NotAnArchive",
    "UnsafeArchive",
    "UploadTooLarge",
    "archive_format",
    "extract_archive",
    "inspect_archive",
]

StrPath = str | os.PathLike[str]
ArchiveFormat = Literal["zip", "tar", "tar.gz", "tar.bz2", "tar.xz"]

ACCEPTED_FORMATS = ".zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz"


# --------------------------------------------------------------------------------------------
# Limits and errors


@dataclass(frozen=True)
class ArchiveLimits:
    """Upper bounds for one upload; every check in this module reads them from here.

    Defaults fit large re-ID image datasets; deployments and tests can tighten them.
    """

    max_upload_bytes: int = 10 * 2**30  # the uploaded file, counted while streaming
    max_members: int = 200_000  # entries of any kind, junk and directories included
    max_total_bytes: int = 50 * 2**30  # uncompressed, declared and then really written
    max_member_bytes: int = 512 * 2**20  # one file, declared and then really written
    max_ratio: float = 200.0  # uncompressed / compressed, per zip member and whole archive
    max_path_length: int = 1024  # bytes of the normalised UTF-8 path
    max_depth: int = 32  # path components
    # Ratios are only enforced above this many uncompressed bytes: a small text file can
    # legitimately compress far better than 200:1 and cannot hurt anyone.
    ratio_grace_bytes: int = 2**20

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (value == 0 and f.name != "ratio_grace_bytes"):
                raise ValueError(f"ArchiveLimits.{f.name} must be positive, got {value!r}")


DEFAULT_LIMITS = ArchiveLimits()


class ArchiveError(Exception):
    """Base of every client-caused failure; ``detail`` is the message for the user (the HTTP
    status is the API's choice: ``app.api.errors``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UploadTooLarge(ArchiveError):
    """The upload passed ``max_upload_bytes`` (counted on the bytes received)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"upload is larger than the limit of {limit:,} bytes")


class NotAnArchive(ArchiveError):
    """The content is none of the accepted archive formats (judged by magic bytes)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"not a supported archive ({reason}); accepted formats: {ACCEPTED_FORMATS} "
            "(recognised by content, not by file name)"
        )


class UnsafeArchive(ArchiveError):
    """A member could escape the destination or is not a plain file/directory."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"unsafe archive member {_show(member)}: {reason}")


class ArchiveBomb(ArchiveError):
    """A size, count or ratio limit was exceeded.

    ``limit`` is one of ``"members"``, ``"total_bytes"``, ``"member_bytes"``, ``"ratio"``,
    ``"header_bytes"`` (a tar extended header or record too large to read into memory) or
    ``"memory"`` (an xz stream asking for a huge decoder dictionary).
    """

    def __init__(self, limit: str, detail: str) -> None:
        self.limit = limit
        super().__init__(f"archive rejected ({limit} limit): {detail}")


class CorruptArchive(ArchiveError):
    """The archive has the right magic bytes but cannot be read (truncated, bad CRC, ...)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the archive is damaged or malformed: {reason}")


@dataclass(frozen=True)
class Member:
    """One archive entry that will be extracted: normalised POSIX relative path, declared size."""

    name: str
    size: int
    is_dir: bool


def _show(name: str, limit: int = 200) -> str:
    """repr() escapes control characters and surrogates; long names are cut for the message."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


_CHUNK = 1 << 20  # read size when copying or decompressing


# --------------------------------------------------------------------------------------------
# Format detection

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # first local header / empty archive
_GZIP_MAGIC = b"\x1f\x8b\x08"
_BZIP2_MAGIC = re.compile(rb"BZh[1-9]")
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BLOCK = 512


def _is_tar_header(block: bytes) -> bool:
    """A ustar/GNU magic, or (old v7 tars) a valid header checksum."""
    if len(block) < _BLOCK:
        return False
    if block[257:262] == b"ustar":
        return True
    field = block[148:156].split(b"\0", 1)[0].strip()
    try:
        checksum = int(field, 8)
    except ValueError:
        return False
    return checksum == sum(block[:148]) + 8 * 32 + sum(block[156:_BLOCK]) and any(block[:100])


_XZ_MEMLIMIT = 128 << 20  # xz -9 needs 65 MiB to decode


class _XzReader(io.RawIOBase):
    """xz decoding with a memory limit, which :class:`lzma.LZMAFile` cannot set.

    An .xz header chooses the dictionary size the decoder allocates: without a limit a
    100-byte upload could make the server reserve gigabytes. Output per call stays bounded.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._decoder = self._new_decoder()
        self._done = False

    @staticmethod
    def _new_decoder() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._read(len(view))
        view[: len(data)] = data
        return len(data)

    def _read(self, size: int) -> bytes:
        while size > 0 and not self._done:
            if self._decoder.eof:  # concatenated streams are valid xz, like LZMAFile
                rest = self._decoder.unused_data or self._raw.read(_CHUNK)
                if not rest:
                    self._done = True
                    break
                self._decoder = self._new_decoder()
                try:
                    data = self._decompress(rest, size)
                except lzma.LZMAError:  # trailing garbage or padding ends the data
                    self._done = True
                    break
            elif self._decoder.needs_input:
                rest = self._raw.read(_CHUNK)
                if not rest:
                    raise EOFError("xz data ended before the end-of-stream marker")
                data = self._decompress(rest, size)
            else:
                data = self._decompress(b"", size)
            if data:
                return data
        return b""

    def _decompress(self, data: bytes, size: int) -> bytes:
        try:
            return self._decoder.decompress(data, size)
        except lzma.LZMAError as exc:
            if "memory" in str(exc).lower():  # liblzma's LZMA_MEMLIMIT_ERROR
                raise ArchiveBomb(
                    "memory", f"the xz data needs more than {_XZ_MEMLIMIT:,} bytes to decode"
                ) from None
            raise


def _decompressor(raw: BinaryIO, fmt: str) -> contextlib.AbstractContextManager[BinaryIO]:
    """A reader of the tar stream inside ``raw``; each produces bounded output per read().

    gzip and bzip2 decoders use a small fixed amount of memory; xz is capped (see above).
    """
    if fmt == "tar.gz":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    if fmt == "tar.bz2":
        return cast(BinaryIO, bz2.BZ2File(raw))
    if fmt == "tar.xz":
        return cast(BinaryIO, io.BufferedReader(_XzReader(raw), _CHUNK))
    return contextlib.nullcontext(raw)


def archive_format(path: StrPath) -> ArchiveFormat:
    """Return the archive format judged by content; raise :class:`NotAnArchive` otherwise.

    A compressed file counts as an archive only if it decompresses to a tar header: a plain
    ``.gz`` of a text file is rejected here rather than failing later.
    """
    with open(path, "rb") as f:
        head = f.read(_BLOCK)
        if not head:
            raise NotAnArchive("the file is empty")
        if head.startswith(_ZIP_MAGICS):
            return "zip"
        if _is_tar_header(head):
            return "tar"
        fmt: ArchiveFormat | None = None
        if head.startswith(_GZIP_MAGIC):
            fmt = "tar.gz"
        elif _BZIP2_MAGIC.match(head):
            fmt = "tar.bz2"
        elif head.startswith(_XZ_MAGIC):
            fmt = "tar.xz"
        if fmt is None:
            raise NotAnArchive("unrecognised content")
        f.seek(0)
        try:
            with _decompressor(cast(BinaryIO, f), fmt) as inner:
                first = inner.read(_BLOCK)
        except (OSError, EOFError, zlib.error, lzma.LZMAError):
            raise NotAnArchive(f"{fmt.split('.')[1]} data is damaged") from None
        if not _is_tar_header(first):
            raise NotAnArchive(f"{fmt.split('.')[1]}-compressed, but not a tar archive")
        return fmt


# --------------------------------------------------------------------------------------------
# Member validation, shared by zip and tar

_FILE = "file"
_DIR = "dir"
_NOT_PLAIN = "; only regular files and directories are accepted"
_DRIVE = re.compile(r"[A-Za-z]:(/|$)")
_NAME_MAX = 255  # bytes per path component on common Linux file systems


def _normalise(raw: str, limits: ArchiveLimits) -> str:
    """Map an archive name to a safe relative POSIX path, or raise :class:`UnsafeArchive`.

    Backslashes count as separators (zips made on Windows), ``.`` components and empty
    components vanish, ``..`` is refused even where it would stay inside. Returns ``""`` for
    the archive root itself.
    """
    if not raw:
        raise UnsafeArchive(raw, "empty name")
    if "\0" in raw:
        raise UnsafeArchive(raw, "NUL character in name")
    if not raw.isprintable():  # fast path: almost every name is printable
        for ch in raw:
            category = unicodedata.category(ch)
            if category == "Cs":
                raise UnsafeArchive(raw, "name is not valid UTF-8")
            if category == "Cc":
                raise UnsafeArchive(raw, "control character in name")
    name = raw.replace("\\", "/")
    if name.startswith("/"):
        raise UnsafeArchive(raw, "absolute path")
    if _DRIVE.match(name):
        raise UnsafeArchive(raw, "absolute path (Windows drive)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(raw, "'..' path component")
    normalised = "/".join(parts)
    if len(normalised.encode("utf-8")) > limits.max_path_length:
        raise UnsafeArchive(raw, f"path longer than {limits.max_path_length} bytes")
    if len(parts) > limits.max_depth:
        raise UnsafeArchive(raw, f"path deeper than {limits.max_depth} levels")
    if any(len(p.encode("utf-8")) > _NAME_MAX for p in parts):
        raise UnsafeArchive(raw, f"path component longer than {_NAME_MAX} bytes")
    return normalised


def _over_ratio(uncompressed: int, compressed: int, limits: ArchiveLimits) -> bool:
    """Past the grace size, is uncompressed / compressed above ``max_ratio``?"""
    return uncompressed > limits.ratio_grace_bytes and uncompressed > limits.max_ratio * compressed


def _is_junk(parts: list[str]) -> bool:
    """macOS metadata that Finder adds to archives; never useful in a dataset."""
    leaf = parts[-1]
    return "__MACOSX" in parts or leaf == ".DS_Store" or leaf.startswith("._")


class _Checker:
    """Validates members one by one in archive order; state is only what the limits need."""

    def __init__(self, limits: ArchiveLimits, archive_size: int | None) -> None:
        self.limits = limits
        self.archive_size = archive_size  # known compressed sizes (zip): check the whole ratio
        self.count = 0
        self.total = 0
        self.paths: dict[str, bool] = {}  # normalised path -> is a directory (maybe implied)

    def add(self, raw: str, kind: str, size: int, compressed: int | None = None) -> Member | None:
        """Check one member; return what to extract, ``None`` for a skipped one."""
        lim = self.limits
        self.count += 1
        if self.count > lim.max_members:
            raise ArchiveBomb("members", f"more than {lim.max_members:,} members")
        name = _normalise(raw, lim)
        if kind not in (_FILE, _DIR):
            raise UnsafeArchive(raw, kind)
        is_dir = kind == _DIR
        if not is_dir:
            self._check_size(raw, size, compressed)
        if not name:
            if is_dir:
                return None  # "." / "./": the destination itself
            raise UnsafeArchive(raw, "empty name")
        parts = name.split("/")
        if _is_junk(parts):
            return None
        self._check_conflicts(raw, name, parts, is_dir)
        return Member(name, 0 if is_dir else size, is_dir)

    def _check_size(self, raw: str, size: int, compressed: int | None) -> None:
        lim = self.limits
        if size < 0:
            raise UnsafeArchive(raw, "negative size")
        if size > lim.max_member_bytes:
            raise ArchiveBomb(
                "member_bytes",
                f"member {_show(raw)} declares {size:,} bytes, "
                f"over the limit of {lim.max_member_bytes:,} per file",
            )
        self.total += size
        if self.total > lim.max_total_bytes:
            raise ArchiveBomb(
                "total_bytes",
                f"members declare more than {lim.max_total_bytes:,} bytes in total "
                f"(passed at {_show(raw)})",
            )
        if compressed is not None and _over_ratio(size, compressed, lim):
            raise ArchiveBomb(
                "ratio",
                f"member {_show(raw)} expands {compressed:,} bytes to {size:,} "
                f"(over {lim.max_ratio:g}:1)",
            )
        if self.archive_size is not None and _over_ratio(self.total, self.archive_size, lim):
            raise ArchiveBomb(
                "ratio",
                f"members declare {self.total:,} bytes from a {self.archive_size:,}-byte "
                f"archive (over {lim.max_ratio:g}:1)",
            )

    def _check_conflicts(self, raw: str, name: str, parts: list[str], is_dir: bool) -> None:
        """Refuse duplicate files and a file and a directory sharing a path."""
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if self.paths.setdefault(parent, True) is False:
                raise UnsafeArchive(raw, f"its parent {_show(parent)} is a file in this archive")
        seen = self.paths.get(name)
        if is_dir:
            if seen is False:
                raise UnsafeArchive(raw, "a file and a directory have the same path")
        elif seen is True:
            raise UnsafeArchive(raw, "a file and a directory have the same path")
        elif seen is False:
            raise UnsafeArchive(raw, "duplicate of an earlier member")
        self.paths[name] = is_dir


# --------------------------------------------------------------------------------------------
# Reading archives: one walker per family, calling visit(member, open_data) per member

Visit = Callable[[Member, Callable[[], IO[bytes]]], None]

# What reading a malformed archive can raise from zipfile, tarfile and the decompressors.
# RuntimeError covers RecursionError from chained tar extended headers.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Turn library errors raised while *reading* the archive into :class:`CorruptArchive`.

    Only read calls are wrapped, so a full disk while writing stays a server error.
    """
    try:
        yield
    except _READ_ERRORS as exc:
        if isinstance(exc, OSError) and exc.filename is not None:
            reason = "I/O error"  # do not echo server paths
        elif isinstance(exc, RecursionError):
            reason = "too many chained headers"
        else:
            reason = str(exc)[:200] or type(exc).__name__
        raise CorruptArchive(reason) from exc


def _walk(path: StrPath, limits: ArchiveLimits, visit: Visit) -> None:
    fmt = archive_format(path)
    if fmt == "zip":
        _walk_zip(path, limits, visit)
    else:
        _walk_tar(path, fmt, limits, visit)


# --- zip

_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64"}
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_FILE_TYPES = {
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _zip_directory_span(f: BinaryIO, size: int) -> tuple[int, int]:
    """Return (offset, length) of the central directory exactly as :mod:`zipfile` finds it."""
    tail_len = min(size, _EOCD.size + (1 << 16))  # the record plus a maximal comment
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    if tail[-_EOCD.size :][:4] == b"PK\x05\x06" and tail[-2:] == b"\0\0":
        pos = len(tail) - _EOCD.size
    else:
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + _EOCD.size > len(tail):
        raise zipfile.BadZipFile("end of central directory not found")
    cd_size = _EOCD.unpack_from(tail, pos)[5]
    end = size - tail_len + pos
    if end >= _EOCD64_LOCATOR.size:
        f.seek(end - _EOCD64_LOCATOR.size)
        if f.read(4) == b"PK\x06\x07":
            f.seek(end - _EOCD64_LOCATOR.size - _EOCD64.size)
            record = f.read(_EOCD64.size)
            if len(record) == _EOCD64.size and record[:4] == b"PK\x06\x06":
                cd_size = _EOCD64.unpack(record)[8]
                end -= _EOCD64_LOCATOR.size + _EOCD64.size
    if cd_size > end:
        raise zipfile.BadZipFile("bad central directory size")
    return end - cd_size, cd_size


def _check_zip_directory(f: BinaryIO, size: int, limits: ArchiveLimits) -> None:
    """Count central-directory entries before :mod:`zipfile` loads them all into memory.

    zipfile reads the whole directory at once and builds a ZipInfo per entry, so a directory
    of millions of tiny entries would exhaust memory before any limit could be checked.
    """
    extra_max = limits.max_path_length + 1024  # extra fields may repeat the name (0x7075)
    entry_max = _CENTRAL.size + limits.max_path_length + extra_max
    start, length = _zip_directory_span(f, size)
    if length > limits.max_members * entry_max:
        raise ArchiveBomb(
            "members",
            f"the central directory ({length:,} bytes) is too large for "
            f"{limits.max_members:,} members",
        )
    f.seek(start)
    count = 0
    while length > 0:
        header = f.read(_CENTRAL.size)
        if len(header) != _CENTRAL.size or header[:4] != b"PK\x01\x02":
            raise zipfile.BadZipFile("bad central directory entry")
        name_len, extra_len, comment_len = _CENTRAL.unpack(header)[12:15]
        count += 1
        if count > limits.max_members:
            raise ArchiveBomb("members", f"more than {limits.max_members:,} members")
        if name_len > limits.max_path_length or extra_len + comment_len > extra_max:
            name = f.read(name_len).decode("utf-8", "replace")
            if name_len > limits.max_path_length:
                raise UnsafeArchive(name, f"path longer than {limits.max_path_length} bytes")
            raise UnsafeArchive(name, "oversized extra field or comment")
        f.seek(name_len + extra_len + comment_len, os.SEEK_CUR)
        length -= _CENTRAL.size + name_len + extra_len + comment_len


def _zip_kind(info: zipfile.ZipInfo) -> str:
    ftype = stat.S_IFMT(info.external_attr >> 16)
    if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
        what = _FILE_TYPES.get(ftype, f"file of type {ftype:#o}")
        return f"is a {what}{_NOT_PLAIN}"
    if ftype == stat.S_IFDIR or info.filename.endswith(("/", "\\")):
        return _DIR
    if info.flag_bits & 0x1:
        return "is encrypted"
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, str(info.compress_type))
        return f"uses compression method {method}; accepted: stored, deflate"
    return _FILE


def _walk_zip(path: StrPath, limits: ArchiveLimits, visit: Visit) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as raw:
        with _reading():
            _check_zip_directory(raw, size, limits)
            archive = zipfile.ZipFile(raw)
        with archive:
            checker = _Checker(limits, archive_size=size)
            for info in archive.infolist():
                kind = _zip_kind(info)
                member = checker.add(info.filename, kind, info.file_size, info.compress_size)
                if member is not None:
                    visit(member, partial(archive.open, info))


# --- tar

_MAX_TAR_HEADER_BYTES = 1 << 20  # pax / GNU long-name records are read into memory whole
_MAX_READ = 16 << 20  # no single read of the tar stream may ask for more
_TAR_OVERHEAD_PER_MEMBER = 8 << 10  # header, padding, extended headers
_TAR_TAIL = 16 << 20  # end-of-archive blocks and record padding
_EXTENDED_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _SafeTarInfo(tarfile.TarInfo):
    """TarInfo refusing, before tarfile acts on them, headers it would trust blindly.

    ``_proc_member`` is tarfile's documented extension point for subclasses. Oversized pax /
    GNU long-name records would be read into memory in one piece; sparse files expand beyond
    their stored bytes, and the GNU 1.0 sparse map is read without a bound.
    """

    __slots__ = ()

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and not 0 <= self.size <= _MAX_TAR_HEADER_BYTES:
            raise ArchiveBomb(
                "header_bytes",
                f"a tar extended header of {self.size:,} bytes (limit {_MAX_TAR_HEADER_BYTES:,})",
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchive(self.name, f"is a sparse file{_NOT_PLAIN}")
        return cast(tarfile.TarInfo, super()._proc_member(tar))

    def _proc_gnusparse_10(self, member: tarfile.TarInfo, *args: Any) -> None:
        raise UnsafeArchive(member.name, f"is a sparse file{_NOT_PLAIN}")


class _TarStream:
    """Forward-only reader over the (decompressed) tar stream, counting every byte.

    tarfile only learns about members while reading the stream, so the stream length and the
    compression ratio are enforced here, on real bytes, as they are produced: a bomb stops
    after at most ``max_ratio * compressed size`` bytes, never after inflating to disk.
    Seeking backwards (a corrupt header pointing back, which could loop) is refused.
    """

    def __init__(
        self, src: BinaryIO, *, can_seek: bool, compressed_size: int | None, limits: ArchiveLimits
    ) -> None:
        self._src = src
        self._can_seek = can_seek
        self._compressed_size = compressed_size
        self._limits = limits
        self._pos = 0
        self._max_pos = (
            limits.max_total_bytes + (limits.max_members + 1) * _TAR_OVERHEAD_PER_MEMBER + _TAR_TAIL
        )

    def _advance(self, n: int) -> None:
        self._pos += n
        if self._pos > self._max_pos:
            raise ArchiveBomb("total_bytes", f"the tar stream is longer than {self._max_pos:,}")
        lim, compressed = self._limits, self._compressed_size
        if compressed is not None and _over_ratio(self._pos, compressed, lim):
            raise ArchiveBomb(
                "ratio",
                f"the {compressed:,}-byte archive inflated past {self._pos:,} bytes "
                f"(over {lim.max_ratio:g}:1), stopped while streaming",
            )

    def read(self, n: int = -1) -> bytes:
        if not 0 <= n <= _MAX_READ:
            raise ArchiveBomb("header_bytes", f"a tar record of {n:,} bytes")
        data = self._src.read(n)
        self._advance(len(data))
        return data

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise OSError("only absolute seeks are supported")
        if pos < self._pos:
            raise CorruptArchive("a tar header points backwards")
        if self._can_seek:
            self._advance(pos - self._pos)
            self._src.seek(pos)
        else:
            while self._pos < pos:
                data = self._src.read(min(_CHUNK, pos - self._pos))
                if not data:
                    break
                self._advance(len(data))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.issparse():
        what = "sparse file"
    elif info.isreg():
        return _FILE
    elif info.isdir():
        return _DIR
    elif info.issym():
        what = "symlink"
    elif info.islnk():
        what = "hardlink"
    elif info.ischr():
        what = "character device"
    elif info.isblk():
        what = "block device"
    elif info.isfifo():
        what = "fifo"
    else:
        what = f"member of type {info.type!r}"
    return f"is a {what}{_NOT_PLAIN}"


def _tar_data(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    data = tar.extractfile(info)
    if data is None:  # not reachable for regular files; keeps the type honest
        raise CorruptArchive(f"no data for {_show(info.name)}")
    return data


def _walk_tar(path: StrPath, fmt: str, limits: ArchiveLimits, visit: Visit) -> None:
    compressed_size = None if fmt == "tar" else os.path.getsize(path)
    with open(path, "rb") as raw, _decompressor(cast(BinaryIO, raw), fmt) as src:
        stream = _TarStream(
            src, can_seek=fmt == "tar", compressed_size=compressed_size, limits=limits
        )
        with contextlib.ExitStack() as stack:
            with _reading():
                tar = stack.enter_context(
                    tarfile.open(
                        fileobj=cast(IO[bytes], stream),
                        mode="r:",
                        tarinfo=_SafeTarInfo,
                        encoding="utf-8",
                        errors="surrogateescape",
                    )
                )
            checker = _Checker(limits, archive_size=None)
            while True:
                with _reading():
                    info = tar.next()
                if info is None:
                    break
                tar.members.clear()  # tarfile keeps every TarInfo otherwise; we need none
                member = checker.add(info.name, _tar_kind(info), info.size)
                if member is not None:
                    visit(member, partial(_tar_data, tar, info))


# --------------------------------------------------------------------------------------------
# Public inspection and extraction


def inspect_archive(path: StrPath, limits: ArchiveLimits = DEFAULT_LIMITS) -> list[Member]:
    """Validate every member without extracting anything; return those to be extracted.

    Raises :class:`NotAnArchive`, :class:`UnsafeArchive` (first offending member),
    :class:`ArchiveBomb` (declared sizes, member count, ratio; tar streams are also measured
    while read) or :class:`CorruptArchive`. Skipped members (macOS junk, the root entry) are
    validated but not returned.
    """
    members: list[Member] = []
    _walk(path, limits, lambda member, _open: members.append(member))
    return members


class _Writer:
    """The extraction ``visit``: writes one member, counting the real bytes."""

    def __init__(
        self, dest: Path, limits: ArchiveLimits, expected: list[Member], archive_size: int
    ) -> None:
        self.dest = dest
        self.limits = limits
        self.expected = expected
        self.archive_size = archive_size
        self.index = 0
        self.total = 0
        self.dirs: set[str] = set()
        self.files: list[str] = []

    def __call__(self, member: Member, open_data: Callable[[], IO[bytes]]) -> None:
        if self.index >= len(self.expected) or self.expected[self.index] != member:
            raise CorruptArchive("the archive changed while it was extracted")
        self.index += 1
        parts = member.name.split("/")
        if member.is_dir:
            self._mkdirs(member, parts)
            return
        self._mkdirs(member, parts[:-1])
        with _reading():
            src = open_data()
        with src:
            try:
                # "x": O_CREAT|O_EXCL, never follows or replaces whatever is already there.
                with open(self.dest.joinpath(*parts), "xb") as out:
                    self._copy(member, src, out)
            except FileExistsError:
                raise UnsafeArchive(
                    member.name, "collides with another member (case-insensitive file system?)"
                ) from None
        self.files.append(member.name)

    def _mkdirs(self, member: Member, parts: list[str]) -> None:
        """Create each level with mkdir (never follows links), checking what already exists."""
        path = self.dest
        for i, part in enumerate(parts):
            path = path / part
            key = "/".join(parts[: i + 1])
            if key in self.dirs:
                continue
            try:
                path.mkdir()
            except FileExistsError:
                if not stat.S_ISDIR(path.lstat().st_mode):
                    raise UnsafeArchive(
                        member.name, f"{_show(key)} collides with another member"
                    ) from None
            self.dirs.add(key)

    def _copy(self, member: Member, src: IO[bytes], out: BinaryIO) -> None:
        lim, name = self.limits, _show(member.name)
        written = 0
        while True:
            with _reading():
                chunk = src.read(_CHUNK)
            if not chunk:
                break
            written += len(chunk)
            self.total += len(chunk)
            if written > member.size:
                raise ArchiveBomb(
                    "member_bytes",
                    f"member {name} yields more than the {member.size:,} bytes it declares",
                )
            if written > lim.max_member_bytes:
                raise ArchiveBomb("member_bytes", f"member {name} is over the per-file limit")
            if self.total > lim.max_total_bytes:
                raise ArchiveBomb("total_bytes", f"extracted data passed the total at {name}")
            if _over_ratio(self.total, self.archive_size, lim):
                raise ArchiveBomb("ratio", f"extracted data passed {lim.max_ratio:g}:1 at {name}")
            out.write(chunk)
        if written != member.size:
            raise CorruptArchive(f"member {name} is shorter than it declares")


def _prepare_dest(dest: Path) -> bool:
    """Require a fresh, empty, real directory; return True if this call created it."""
    if dest.is_symlink():
        raise ValueError(f"extraction destination {dest} is a symlink")
    try:
        dest.mkdir(parents=True)
        return True
    except FileExistsError:
        if not dest.is_dir():
            raise NotADirectoryError(f"extraction destination {dest} is not a directory") from None
        if any(dest.iterdir()):
            raise FileExistsError(f"extraction destination {dest} is not empty") from None
        return False


def _discard(dest: Path, remove_dest: bool) -> None:
    """Undo a failed extraction (rmtree removes links themselves, never their targets)."""
    if remove_dest:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in list(dest.iterdir()):
        with contextlib.suppress(OSError):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def extract_archive(
    path: StrPath, dest: StrPath, limits: ArchiveLimits = DEFAULT_LIMITS
) -> list[str]:
    """Extract regular files and directories into ``dest``; return the files (relative POSIX).

    Calls :func:`inspect_archive` first, so nothing is written unless every member passed.
    ``dest`` must not exist or be an empty directory (not a symlink): otherwise ``ValueError``,
    ``NotADirectoryError`` or ``FileExistsError``, which are server bugs, not client errors.
    Files get default permissions (umask); modes, owners and times in the archive are ignored.
    The real bytes are counted: a member yielding more than it declares, or passing
    ``max_member_bytes`` / ``max_total_bytes`` / ``max_ratio``, raises :class:`ArchiveBomb`.

    On any error everything written is removed before re-raising: ``dest`` is deleted if this
    call created it, or left empty if it existed.
    """
    expected = inspect_archive(path, limits)
    target = Path(dest)
    created = _prepare_dest(target)
    writer = _Writer(target, limits, expected, os.path.getsize(path))
    try:
        _walk(path, limits, writer)
        if writer.index != len(expected):
            raise CorruptArchive("the archive changed while it was extracted")
    except BaseException:
        _discard(target, remove_dest=created)
        raise
    return writer.files
