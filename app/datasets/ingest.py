"""From an uploaded archive to a stored dataset: extract, read, validate, store.

``ingest_archive`` is synchronous and slow (it decodes every image), so the endpoint runs it
in a worker thread. The steps, each reusing what already exists:

1. ``app.datasets.archives.extract_archive`` unpacks the archive safely (unsafe members and bombs
   raise an ``ArchiveError`` with its HTTP status).
2. ``trainer.data.readers.read_dataset`` reads the tree in the requested layout (the same
   readers as ``reid train``: no second parser). What it skips becomes ``rejected``.
3. The label policy: a target (``labeled=False``) never keeps training identities; a
   source (``labeled=True``) must have them.
4. Every image is hashed (SHA-256 of its bytes) and decoded once by
   ``trainer.data.images.probe_image`` in a thread pool sized to the CPUs (hashing and
   Pillow's decoders release the GIL). Undecodable files and images over the pixel cap are
   rejected, not fatal.
5. One database transaction inserts the dataset, upserts the ``images`` rows (unique
   SHA-256: concurrent uploads of the same bytes share one row) and the ``dataset_images``
   rows, and hard-links each new image file into ``StorageLayout`` (stored once by hash).

Failure leaves nothing behind: the caller removes the work directory, and the files this
upload created in the image store are deleted *before* its transaction rolls back. That order
matters: another upload inserting the same SHA-256 waits on this transaction's uncommitted row
(PostgreSQL's unique index, SQLite's single writer), so when it proceeds the file is already
gone and it stores its own copy instead of referencing a file about to disappear.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import repeat
from pathlib import Path
from typing import TypeVar

from PIL import Image as PILImage
from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import Dataset, DatasetImage, Image, utcnow
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.datasets.archives import ArchiveError, ArchiveLimits, extract_archive
from trainer.data.images import ALLOWED_FORMATS, ImageError, probe_image
from trainer.data.readers import SPLITS, DatasetError, Item, read_dataset

__all__ = [
    "MAX_REJECTED",
    "IngestError",
    "IngestOptions",
    "Probed",
    "StoreRace",
    "archive_limits",
    "cap_rejected",
    "chunks",
    "cpu_count",
    "ingest_archive",
    "label_policy",
    "place_file",
    "probe_file",
    "probe_files",
    "reject",
    "remove_files",
    "upsert_images",
    "user_message",
]

logger = logging.getLogger(__name__)

MAX_REJECTED = 1000  # entries kept in ``rejected``; the last one says how many more there were
_CHUNK_ROWS = 1000  # rows per multi-VALUES statement (bounded bind parameters)
_PROBE_BATCH = 128  # images per thread-pool task (bounded futures for huge archives)

# Pillow format -> stored format, which is also the file extension and the MIME subtype.
# MPO is the multi-picture JPEG some cameras write: it starts with a plain JPEG.
_STORED_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}

T = TypeVar("T")


class IngestError(ArchiveError):
    """The archive was read but cannot become a dataset (message for the user)."""


@dataclass(frozen=True)
class IngestOptions:
    """What the user asked for: the dataset's name, whether it is labeled, the layout."""

    name: str
    labeled: bool
    layout: str = "auto"  # "auto" or one of trainer.data.readers.LAYOUTS


@dataclass(frozen=True, slots=True)
class Probed:
    """A decodable image: content hash, stored format and size."""

    sha256: str
    format: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class _Entry:
    path: str  # original path in the archive
    split: str
    pid: int | None
    camid: int | None
    image: Probed
    source: Path  # the extracted file


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def archive_limits(settings: Settings) -> ArchiveLimits:
    """The archive limits in force, from the service settings."""
    return ArchiveLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_members=settings.max_archive_members,
        max_total_bytes=settings.max_uncompressed_bytes,
        max_ratio=settings.max_compression_ratio,
    )


# --------------------------------------------------------------------------------------
# validating images


def probe_file(path: str | os.PathLike[str], max_pixels: int) -> Probed | str:
    """Hash and fully decode one file: a :class:`Probed`, or why it is rejected.

    The file is opened once: hashed in chunks (no whole-file buffer, whatever its size), then
    decoded by ``probe_image`` from the same handle. Messages never contain server paths.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            size = f.tell()
            f.seek(0)
            width, height = probe_image(f, max_pixels=max_pixels)
            f.seek(0)
            with PILImage.open(f, formats=ALLOWED_FORMATS) as img:  # header only: the format
                fmt = _STORED_FORMATS.get(img.format or "")
    except ImageError as exc:
        return str(exc).removeprefix(f"{name}: ")
    except OSError as exc:
        return f"unreadable file ({exc.strerror or type(exc).__name__})"
    except Exception as exc:  # Pillow can still fail on the second open; never fatal
        return f"cannot decode image ({type(exc).__name__})"
    if fmt is None:
        return "unsupported image format"
    return Probed(digest, fmt, width, height, size)


def _probe_batch(paths: Sequence[str], max_pixels: int) -> list[Probed | str]:
    return [probe_file(p, max_pixels) for p in paths]


def chunks(seq: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


def probe_files(
    paths: Sequence[str], max_pixels: int, workers: int | None = None
) -> list[Probed | str]:
    """:func:`probe_file` over many files, in order, on ``workers`` threads (default: CPUs).

    Threads rather than processes: hashing and Pillow's decoders release the GIL, threads
    cost nothing to start, and forking a server process that runs other threads is unsafe.
    Measured on the benchmark archive (12,973 256x128 JPEGs, 2 shared cores, see
    ``benchmarks/ingest.py --compare-pools``): serial 4.1-5.0 s, 2 threads 3.8-4.4 s, an
    already running 2-process pool 3.5-3.8 s, a forkserver pool started per upload 5.9 s.
    Only a pool kept warm across uploads would win, by about 10%: not worth its lifecycle.
    """
    workers = workers or cpu_count()
    if workers == 1 or len(paths) <= _PROBE_BATCH:
        return _probe_batch(paths, max_pixels)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
        batches = pool.map(_probe_batch, chunks(paths, _PROBE_BATCH), repeat(max_pixels))
        return [result for batch in batches for result in batch]


# --------------------------------------------------------------------------------------
# the image store


def place_file(src: Path, dest: Path) -> bool:
    """Put ``src``'s bytes at ``dest`` unless a file is already there; True if this created it.

    A hard link is atomic create-if-absent: of two uploads placing the same hash at once,
    exactly one creates the file, and nobody ever sees a partly written one. Where links are
    impossible (another file system), the bytes are copied to a temporary name first.
    """
    if dest.exists():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        shutil.copyfile(src, part)
        try:
            os.link(part, dest)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links at all: a rename (an identical file may be replaced)
            if dest.exists():
                return False
            os.replace(part, dest)
            return True
    finally:
        part.unlink(missing_ok=True)


def remove_files(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # never mask the error being handled
            logger.error("could not remove %s after a failed upload: %s", path, exc)


def upsert_images(session: Session, images: Sequence[Probed]) -> tuple[dict[str, int], set[str]]:
    """Insert the missing ``images`` rows; return {sha256: id} for all and the new hashes.

    ``INSERT ... ON CONFLICT (sha256) DO NOTHING RETURNING``: a row another transaction has
    committed is left alone; one it has inserted but not committed makes this statement wait
    for that transaction's outcome, so the unique-hash race never fails an upload. Rows go in
    hash order, the same in every transaction, so two uploads cannot deadlock each other.
    """
    dialect = session.get_bind().dialect.name
    make_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = Image.__table__
    now = utcnow()
    ids: dict[str, int] = {}
    inserted: set[str] = set()
    ordered = sorted(images, key=lambda p: p.sha256)
    for chunk in chunks(ordered, _CHUNK_ROWS):
        values = [
            {
                "sha256": p.sha256,
                "format": p.format,
                "width": p.width,
                "height": p.height,
                "size_bytes": p.size_bytes,
                "created_at": now,
            }
            for p in chunk
        ]
        stmt = (
            make_insert(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(table.c.id, table.c.sha256)
        )
        for image_id, sha in session.execute(stmt):
            ids[sha] = image_id
            inserted.add(sha)
    missing = [p.sha256 for p in ordered if p.sha256 not in ids]
    for chunk in chunks(missing, _CHUNK_ROWS):
        query = select(table.c.id, table.c.sha256).where(table.c.sha256.in_(chunk))
        for image_id, sha in session.execute(query):
            ids[sha] = image_id
    if len(ids) != len(ordered):  # deleted by a concurrent DELETE /datasets after our insert
        raise StoreRace("an image row disappeared while it was being referenced")
    return ids, inserted


class StoreRace(Exception):
    """A race lost to another transaction: roll back and run the store step again."""


def _store(
    factory: sessionmaker[Session],
    storage: StorageLayout,
    options: IngestOptions,
    layout: str,
    entries: Sequence[_Entry],
    rejected: list[dict[str, str]],
) -> Dataset:
    """The database transaction and the image files, retried on races (see module docs)."""
    images: dict[str, _Entry] = {}
    for entry in entries:
        images.setdefault(entry.image.sha256, entry)
    counts = {split: sum(e.split == split for e in entries) for split in SPLITS}
    train_pids = {e.pid for e in entries if e.split == "train" and e.pid is not None}
    test_pids = {e.pid for e in entries if e.split != "train" and e.pid is not None}

    def attempt() -> Dataset:
        created: list[Path] = []
        with factory() as session:
            try:
                dataset = Dataset(
                    name=options.name,
                    labeled=options.labeled,
                    layout=layout,
                    num_images=len(entries),
                    # MSMT17 and VehicleID number test identities from 0 again: count the
                    # training and the test identities separately.
                    num_identities=len(train_pids) + len(test_pids),
                    num_cameras=len({e.camid for e in entries if e.camid is not None}),
                    num_train=counts["train"],
                    num_query=counts["query"],
                    num_gallery=counts["gallery"],
                    rejected=rejected,
                    created_at=utcnow(),
                )
                session.add(dataset)
                session.flush()  # first write: on SQLite this takes the write lock now
                ids, inserted = upsert_images(session, [e.image for e in images.values()])
                for sha, entry in images.items():
                    dest = storage.image_path(sha, entry.image.format)
                    if place_file(entry.source, dest) and sha in inserted:
                        created.append(dest)
                rows = [
                    {
                        "dataset_id": dataset.id,
                        "image_id": ids[e.image.sha256],
                        "original_path": e.path,
                        "split": e.split,
                        "pid": e.pid,
                        "camid": e.camid,
                    }
                    for e in entries
                ]
                for chunk in chunks(rows, 10 * _CHUNK_ROWS):
                    session.execute(insert(DatasetImage.__table__), list(chunk))
                session.commit()
                return dataset
            except BaseException:
                remove_files(created)  # before the rollback releases our rows
                raise

    return retry_races(attempt, f"storing {options.name!r}", also=(StoreRace,))


# --------------------------------------------------------------------------------------
# the whole upload


def _printable(text: str, limit: int = 500) -> str:
    """Safe for JSON columns everywhere (PostgreSQL's JSONB refuses NUL) and for display."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return text


def reject(rejected: list[dict[str, str]], path: str, reason: str) -> None:
    rejected.append({"path": _printable(path), "reason": _printable(reason)})


def cap_rejected(rejected: list[dict[str, str]]) -> list[dict[str, str]]:
    if len(rejected) <= MAX_REJECTED:
        return rejected
    more = len(rejected) - (MAX_REJECTED - 1)
    return [
        *rejected[: MAX_REJECTED - 1],
        {"path": "…", "reason": f"{more:,} more rejected files not listed"},
    ]


def label_policy(
    items: Sequence[Item], labeled: bool, rejected: list[dict[str, str]], prefix: str
) -> list[Item]:
    """Drop target training labels; refuse unlabeled training images in a source."""
    kept: list[Item] = []
    for item in items:
        if item.split != "train":
            kept.append(item)  # query/gallery labels are kept: used only to evaluate
        elif not labeled:
            kept.append(item if item.pid is None else replace(item, pid=None))
        elif item.pid is None:
            reject(rejected, prefix + item.path, "no identity label (a labeled dataset "
                    "needs one for every training image)")  # fmt: skip
        else:
            kept.append(item)
    return kept


def _one_split_per_file(
    items: Sequence[Item], rejected: list[dict[str, str]], prefix: str
) -> list[Item]:
    """A manifest may list a file in two splits; a dataset holds each path once."""
    first: dict[str, str] = {}
    kept = []
    for item in items:
        if item.path in first:
            reject(
                rejected,
                prefix + item.path,
                f"listed in split {item.split} and in {first[item.path]}: a file can be in one "
                "split only",
            )
            continue
        first[item.path] = item.split
        kept.append(item)
    return kept


def _examples(rejected: Sequence[dict[str, str]]) -> str:
    return "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:3])


def user_message(message: str, tree: Path) -> str:
    """A reader message without the server's paths."""
    return message.replace(f"{tree}/", "").replace(str(tree), "the archive")


def ingest_archive(
    archive: Path,
    work_dir: Path,
    options: IngestOptions,
    *,
    settings: Settings,
    storage: StorageLayout,
    factory: sessionmaker[Session],
    workers: int | None = None,
) -> Dataset:
    """Turn the uploaded ``archive`` into a committed :class:`~app.core.orm.Dataset`.

    ``work_dir`` (empty, under ``storage.tmp_dir``) receives the extracted tree; the caller
    removes it afterwards, whatever happened. ``archive`` is deleted once extracted, to need
    less disk. Raises ``ArchiveError`` subclasses (4xx, message for the user) for bad input.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    tree = work_dir / "tree"
    extract_archive(archive, tree, archive_limits(settings))
    archive.unlink(missing_ok=True)
    timings["extract"] = time.perf_counter() - start

    mark = time.perf_counter()
    try:
        found = read_dataset(tree, options.layout)
    except DatasetError as exc:
        raise IngestError(user_message(str(exc), tree)) from None
    sub = found.root.relative_to(tree).as_posix()
    prefix = "" if sub == "." else f"{sub}/"
    rejected: list[dict[str, str]] = []
    for skipped in found.skipped:
        reject(rejected, prefix + skipped.path, skipped.reason)
    items = _one_split_per_file(found.items, rejected, prefix)
    items = label_policy(items, options.labeled, rejected, prefix)
    if options.labeled and not any(i.split == "train" and i.pid is not None for i in items):
        raise IngestError(
            f"labeled=true but the training split has no identity labels ({found.layout} "
            "layout); upload it with labeled=false as a target, or use a layout with labels"
        )
    timings["read"] = time.perf_counter() - mark

    mark = time.perf_counter()
    sources = [found.root / item.path for item in items]
    results = probe_files([str(p) for p in sources], settings.max_image_pixels, workers)
    entries: list[_Entry] = []
    for item, source, result in zip(items, sources, results, strict=True):
        if isinstance(result, str):
            reject(rejected, prefix + item.path, result)
        else:
            entries.append(
                _Entry(prefix + item.path, item.split, item.pid, item.camid, result, source)
            )
    timings["probe"] = time.perf_counter() - mark
    if not entries:
        raise IngestError(
            f"no usable images: all {len(items):,} were rejected, e.g. {_examples(rejected)}"
        )
    if options.labeled and not any(e.split == "train" and e.pid is not None for e in entries):
        raise IngestError(
            "labeled=true but no labeled training image could be decoded, e.g. "
            + _examples(rejected)
        )

    mark = time.perf_counter()
    dataset = _store(factory, storage, options, found.layout, entries, cap_rejected(rejected))
    timings["store"] = time.perf_counter() - mark
    logger.info(
        "dataset %d %r: %d images, %d rejected, layout %s; %s",
        dataset.id,
        dataset.name,
        len(entries),
        len(rejected),
        found.layout,
        ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
    )
    return dataset
