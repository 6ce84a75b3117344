"""Appending images to a stored dataset: a camera network's collection keeps growing.

Each file part of ``POST /datasets/{id}/images`` is one image, or an archive of them (read
with the same safe extraction and layout readers as an upload, so a Market-style archive
brings its camera ids). Every image is hashed and decoded once, like an upload; what cannot
be used is listed in ``rejected``. One transaction then adds the new members, recounts the
dataset and bumps its revision (its ready indexes are synced by the worker); an image whose
bytes the dataset already holds is not added twice (a retried request adds nothing).
Failure leaves nothing behind, by the same order of file and row writes as an upload
(:mod:`app.datasets.ingest`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.db import retry_races
from app.core.orm import Dataset, DatasetImage, DatasetStatus, Image
from app.core.settings import Settings
from app.core.storage import StorageLayout
from app.datasets.archives import NotAnArchive, archive_format, extract_archive
from app.datasets.ingest import (
    IngestError,
    Probed,
    StoreRace,
    archive_limits,
    cap_rejected,
    chunks,
    label_policy,
    place_file,
    probe_files,
    reject,
    remove_files,
    upsert_images,
    user_message,
)
from app.datasets.members import members_changed
from app.datasets.service import DatasetNotFound
from trainer.data.readers import DatasetError, Item, read_dataset

__all__ = ["AppendOptions", "Appended", "Upload", "append_images"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """One received file part: where it was written and the name the client gave it."""

    path: Path
    filename: str | None


@dataclass(frozen=True)
class AppendOptions:
    """The form fields: each applies to every image of the request when given; without
    them an archive's layout decides split and camera (``train`` and none for an image)."""

    split: str | None = None
    camid: int | None = None
    captured_at: datetime | None = None


@dataclass(frozen=True)
class Appended:
    """The outcome: the members (new ones, and those the dataset already held), how many
    were new, and the files left out."""

    members: list[DatasetImage]
    images: dict[int, Image]
    added: int
    rejected: list[dict[str, str]]


@dataclass(frozen=True)
class _Candidate:
    item: Item  # path: its name in the dataset (the part's file name, or archive/member)
    source: Path

    @property
    def path(self) -> str:
        return self.item.path


def _clean_name(filename: str | None, index: int) -> str:
    """The client's file name without any folder part; a neutral one when unusable."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable())[:200].strip()
    return name if name not in ("", ".", "..") else f"upload-{index}"


def _candidates(
    uploads: Sequence[Upload],
    work_dir: Path,
    labeled: bool,
    options: AppendOptions,
    settings: Settings,
    rejected: list[dict[str, str]],
) -> list[_Candidate]:
    """The images of every part (the part itself, or the usable members of its archive),
    with the form's split and the dataset's label policy applied."""
    found_items: list[tuple[Item, Path]] = []
    for i, upload in enumerate(uploads):
        name = _clean_name(upload.filename, i)
        try:
            archive_format(upload.path)
        except NotAnArchive:
            found_items.append((Item(name, None, None, "train"), upload.path))
            continue
        tree = work_dir / f"tree-{i}"
        extract_archive(upload.path, tree, archive_limits(settings))
        upload.path.unlink(missing_ok=True)
        try:
            found = read_dataset(tree, "auto")
        except DatasetError as exc:
            reject(rejected, name, user_message(str(exc), tree))
            continue
        sub = found.root.relative_to(tree).as_posix()
        prefix = f"{name}/" if sub == "." else f"{name}/{sub}/"
        for skipped in found.skipped:
            reject(rejected, prefix + skipped.path, skipped.reason)
        found_items.extend(
            (replace(item, path=prefix + item.path), found.root / item.path) for item in found.items
        )
    out: list[_Candidate] = []
    for item, source in found_items:
        if options.split is not None:
            item = replace(item, split=options.split)
        out.extend(_Candidate(item, source) for item in label_policy([item], labeled, rejected, ""))
    return out


def append_images(
    uploads: Sequence[Upload],
    work_dir: Path,
    dataset_id: int,
    options: AppendOptions,
    *,
    settings: Settings,
    storage: StorageLayout,
    factory: sessionmaker[Session],
) -> Appended:
    """Add the images of ``uploads`` to dataset ``dataset_id`` (see the module docs).

    ``work_dir`` (empty, under ``storage.tmp_dir``) receives extracted archives; the caller
    removes it. Raises :class:`~app.datasets.service.DatasetNotFound`, or ``ArchiveError``
    subclasses (4xx) for bad input, :class:`~app.datasets.ingest.IngestError` when nothing
    is usable.
    """
    with factory() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.status != DatasetStatus.READY:
            raise DatasetNotFound(dataset_id)
        labeled = dataset.labeled
    rejected: list[dict[str, str]] = []
    candidates = _candidates(uploads, work_dir, labeled, options, settings, rejected)
    probed = probe_files([str(c.source) for c in candidates], settings.max_image_pixels)
    entries: list[tuple[_Candidate, Probed]] = []
    for candidate, result in zip(candidates, probed, strict=True):
        if isinstance(result, str):
            reject(rejected, candidate.path, result)
        else:
            entries.append((candidate, result))
    if not entries:
        example = "; ".join(f"{r['path']}: {r['reason']}" for r in rejected[:3])
        raise IngestError(f"no usable images{': ' + example if example else ''}")
    appended = _store(factory, storage, dataset_id, options, entries)
    result = Appended(appended[0], appended[1], appended[2], cap_rejected(rejected))
    logger.info(
        "dataset %d: %d images appended (%d already held), %d rejected",
        dataset_id,
        result.added,
        len(result.members) - result.added,
        len(rejected),
    )
    return result


def _unique_path(path: str, sha256: str, taken: set[str]) -> str:
    """``path``, or with the content hash before the extension when the name is taken."""
    if path not in taken:
        return path
    stem, ext = os.path.splitext(path)
    return f"{stem}~{sha256[:12]}{ext}"


def _store(
    factory: sessionmaker[Session],
    storage: StorageLayout,
    dataset_id: int,
    options: AppendOptions,
    entries: Sequence[tuple[_Candidate, Probed]],
) -> tuple[list[DatasetImage], dict[int, Image], int]:
    """The transaction: lock the dataset, upsert images, add the members it lacks."""
    unique: dict[str, tuple[_Candidate, Probed]] = {}
    for candidate, probed in entries:
        unique.setdefault(probed.sha256, (candidate, probed))

    def attempt() -> tuple[list[DatasetImage], dict[int, Image], int]:
        created: list[Path] = []
        with factory() as session:
            try:
                # the first write: takes the dataset's row lock (SQLite: the write lock), so
                # appends and deletes of one dataset run one after the other
                locked = session.execute(
                    update(Dataset)
                    .where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.READY.value)
                    .values(revision=Dataset.revision)
                    .execution_options(synchronize_session=False)
                )
                if getattr(locked, "rowcount", 0) != 1:
                    raise DatasetNotFound(dataset_id)
                ids, inserted = upsert_images(session, [p for _, p in unique.values()])
                for sha, (candidate, probed) in unique.items():
                    dest = storage.image_path(sha, probed.format)
                    if place_file(candidate.source, dest) and sha in inserted:
                        created.append(dest)
                held = _present(session, dataset_id, DatasetImage.image_id, list(ids.values()))
                paths = [c.path for c, _ in unique.values()]
                taken = _present(session, dataset_id, DatasetImage.original_path, paths)
                rows = []
                for sha, (candidate, _) in unique.items():
                    if ids[sha] in held:
                        continue
                    path = _unique_path(candidate.path, sha, taken)
                    taken.add(path)
                    rows.append(
                        {
                            "dataset_id": dataset_id,
                            "image_id": ids[sha],
                            "original_path": path,
                            "split": candidate.item.split,
                            "pid": candidate.item.pid,
                            "camid": (
                                options.camid if options.camid is not None else candidate.item.camid
                            ),
                            "captured_at": options.captured_at,
                        }
                    )
                for chunk in chunks(rows, 1000):
                    session.execute(insert(DatasetImage.__table__), list(chunk))
                image_ids = sorted(set(ids.values()))
                for chunk in chunks(image_ids, 1000):  # referenced again: not garbage any more
                    session.execute(
                        update(Image)
                        .where(Image.id.in_(chunk), Image.orphaned_at.is_not(None))
                        .values(orphaned_at=None)
                        .execution_options(synchronize_session=False)
                    )
                if rows:
                    members_changed(session, dataset_id)
                members = _members_of(session, dataset_id, image_ids)
                images = {
                    row.id: row
                    for chunk in chunks(image_ids, 1000)
                    for row in session.scalars(select(Image).where(Image.id.in_(chunk)))
                }
                session.commit()
                for row in (*members, *images.values()):
                    session.expunge(row)
                return members, images, len(rows)
            except BaseException:
                remove_files(created)  # before the rollback releases our rows
                raise

    return retry_races(attempt, f"appending to dataset {dataset_id}", also=(StoreRace,))


def _present(session: Session, dataset_id: int, column: Any, values: list[Any]) -> set[Any]:
    """Which of ``values`` the dataset's members already have in ``column``."""
    found: set[Any] = set()
    for chunk in chunks(sorted(set(values)), 1000):
        found.update(
            session.scalars(
                select(column).where(DatasetImage.dataset_id == dataset_id, column.in_(chunk))
            )
        )
    return found


def _members_of(session: Session, dataset_id: int, image_ids: list[int]) -> list[DatasetImage]:
    """The dataset's first member of each image (an upload may hold the same bytes twice)."""
    first: dict[int, DatasetImage] = {}
    for chunk in chunks(image_ids, 1000):
        query = (
            select(DatasetImage)
            .where(DatasetImage.dataset_id == dataset_id, DatasetImage.image_id.in_(chunk))
            .order_by(DatasetImage.id)
        )
        for member in session.scalars(query):
            first.setdefault(member.image_id, member)
    return sorted(first.values(), key=lambda m: m.id)
