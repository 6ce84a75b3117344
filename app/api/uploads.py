"""Receiving a multipart/form-data upload without ever holding it in memory or trusting it.

Starlette's ``request.form()`` spools every file part to a temporary file before the handler
runs, with no size limit of ours. Here the body is read from ``request.stream()`` and fed to
python-multipart's streaming parser: the one file part goes straight to a destination file
through a byte counter that stops at the limit (413) the moment it is passed, and the small text
fields are collected in memory with their own bounds. Content-Length is never looked at.

Parsing runs in a worker thread one batch (about 1 MiB) at a time, so neither the parser nor
the disk writes stall the event loop during a multi-gigabyte upload.
"""

from __future__ import annotations

import codecs
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.datasets.archives import ArchiveError, UploadTooLarge

__all__ = [
    "MAX_FIELD_BYTES",
    "MAX_PARTS",
    "BadUpload",
    "FileStartHook",
    "MalformedUpload",
    "NotMultipart",
    "ReceivedFile",
    "ReceivedForm",
    "receive_multipart",
    "work_folder",
]

MAX_FIELD_BYTES = 64 * 1024  # one text field (name, labeled, layout, ...)
MAX_PARTS = 32  # parts of any kind, ignored ones included
_BATCH = 1 << 20  # bytes handed to the parser thread at a time
_FORM_OVERHEAD = MAX_PARTS * (MAX_FIELD_BYTES + 16 * 1024)  # fields + part headers


class BadUpload(ArchiveError):
    """A well-formed form whose fields cannot be used (too many, too long, not UTF-8)."""


class MalformedUpload(BadUpload):
    """The body is not valid multipart/form-data (bad or missing boundary, truncated)."""


class NotMultipart(BadUpload):
    """The request body is some other media type."""


FileStartHook = Callable[[dict[str, str]], None]


@dataclass(frozen=True)
class ReceivedFile:
    """One file part, written to ``path``."""

    path: Path
    filename: str | None
    size: int


@dataclass
class ReceivedForm:
    """What arrived: text fields by name, and the file parts written (in order)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[ReceivedFile] = field(default_factory=list)

    @property
    def file_received(self) -> bool:
        return bool(self.files)

    @property
    def file_size(self) -> int:
        """Bytes of all file parts together."""
        return sum(f.size for f in self.files)

    @property
    def filename(self) -> str | None:
        return self.files[0].filename if self.files else None


class _Receiver:
    """python-multipart callbacks: route the file part to disk, collect the text fields."""

    def __init__(
        self,
        dest: Path,
        file_field: str,
        max_file_bytes: int,
        max_files: int,
        on_file_start: FileStartHook | None,
    ) -> None:
        self.dest = dest
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.on_file_start = on_file_start
        self.form = ReceivedForm()
        self.written: list[Path] = []  # removed again on failure
        self.file_bytes = 0  # of all file parts
        self._filename: str | None = None
        self._part_bytes = 0
        self.out: IO[bytes] | None = None
        self.ended = False
        self.parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._kind = "ignore"  # "file" | "field" | "ignore"
        self._name = ""
        self._value = bytearray()

    # --- part headers

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadUpload(f"too many parts in the form (limit {MAX_PARTS})")
        self._disposition = b""
        self._kind = "ignore"
        self._value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise MalformedUpload("a form part has no name in its Content-Disposition header")
        name = _decode(raw_name, "form field name")
        self._name = name
        if name == self.file_field:
            count = len(self.written)
            if count >= self.max_files:
                many = "one" if self.max_files == 1 else f"at most {self.max_files}"
                raise BadUpload(f"only {many} '{self.file_field}' part(s) accepted")
            self._filename = None
            if b"filename" in options:
                self._filename = options[b"filename"].decode("utf-8", "replace")[:255]
            if self.on_file_start is not None and count == 0:
                self.on_file_start(dict(self.form.fields))
            path = self.dest if self.max_files == 1 else self.dest / f"part-{count}"
            # "xb": never overwrites or follows anything already there
            self.out = open(path, "xb")  # noqa: SIM115  # closed in on_part_end / close()
            self.written.append(path)
            self._part_bytes = 0
            self._kind = "file"
        elif b"filename" in options or name in self.form.fields:
            self._kind = "ignore"  # other files and repeated fields: read past, keep nothing
        else:
            self._kind = "field"

    # --- part bodies

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "file":
            assert self.out is not None
            self._part_bytes += end - start
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise UploadTooLarge(self.max_file_bytes)
            self.out.write(data[start:end])
        elif self._kind == "field":
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise BadUpload(
                    f"form field '{self._name}' is longer than {MAX_FIELD_BYTES:,} bytes"
                )

    def on_part_end(self) -> None:
        if self._kind == "file":
            self.close()
            self.form.files.append(ReceivedFile(self.written[-1], self._filename, self._part_bytes))
        elif self._kind == "field":
            self.form.fields[self._name] = _decode(bytes(self._value), f"form field {self._name!r}")
        self._kind = "ignore"

    def on_end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def _decode(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadUpload(f"{what} is not valid UTF-8") from None


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise NotMultipart("the request body must be multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 70:  # RFC 2046: 1 to 70 characters
        raise MalformedUpload("multipart/form-data without a valid boundary parameter")
    charset = options.get(b"charset")
    if charset is not None:
        try:
            codecs.lookup(charset.decode("latin-1"))
        except LookupError:
            raise NotMultipart("unknown charset in the Content-Type header") from None
    return boundary


async def receive_multipart(
    request: Request,
    dest: Path,
    *,
    file_field: str = "file",
    max_file_bytes: int,
    max_files: int = 1,
    on_file_start: FileStartHook | None = None,
) -> ReceivedForm:
    """Read the whole multipart body of ``request``; the ``file_field`` part goes to ``dest``.

    ``dest`` must not exist; with ``max_files`` > 1 it is an existing empty folder that
    receives up to that many ``file_field`` parts as ``part-0``, ``part-1``, ... and
    ``max_file_bytes`` bounds them all together. Raises
    :class:`~app.datasets.archives.UploadTooLarge` (413) as soon as the file parts pass
    ``max_file_bytes`` or the body passes that plus a small allowance for the other fields;
    :class:`NotMultipart` (415), :class:`MalformedUpload` (400) or :class:`BadUpload` (422,
    unusable fields); lets Starlette's ``ClientDisconnect`` through.
    ``on_file_start(fields_so_far)`` runs when the file part begins, so a caller can refuse
    bad fields sent before a huge file.
    On any failure the files written are removed.
    """
    boundary = _boundary(request)
    receiver = _Receiver(dest, file_field, max_file_bytes, max_files, on_file_start)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
            "on_end": receiver.on_end,
        },
    )
    body_limit = max_file_bytes + _FORM_OVERHEAD

    def feed(data: bytes) -> None:
        try:
            parser.write(data)
        except FormParserError as exc:
            raise MalformedUpload(f"malformed multipart body: {str(exc)[:200]}") from None

    received = 0
    pending: list[bytes] = []
    pending_bytes = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise UploadTooLarge(max_file_bytes)
            if receiver.ended:
                continue  # epilogue after the closing boundary: counted, ignored
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes >= _BATCH:
                data, pending, pending_bytes = b"".join(pending), [], 0
                await anyio.to_thread.run_sync(feed, data)
        if pending:
            await anyio.to_thread.run_sync(feed, b"".join(pending))
        parser.finalize()
        if not receiver.ended:
            raise MalformedUpload("the multipart body ended early (no closing boundary)")
    except BaseException:
        receiver.close()
        for path in receiver.written:
            path.unlink(missing_ok=True)
        raise
    finally:
        receiver.close()
    return receiver.form


@asynccontextmanager
async def work_folder(tmp_dir: Path) -> AsyncIterator[Path]:
    """A fresh folder under ``tmp_dir`` for one upload, removed afterwards whatever happened
    (also when the request is cancelled); a crash's leftovers are swept at the next start."""
    await anyio.to_thread.run_sync(partial(tmp_dir.mkdir, parents=True, exist_ok=True))
    work = Path(await anyio.to_thread.run_sync(partial(tempfile.mkdtemp, "", "upload-", tmp_dir)))
    try:
        yield work
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(partial(shutil.rmtree, work, ignore_errors=True))
