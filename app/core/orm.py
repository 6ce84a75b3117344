"""ORM models (SQLAlchemy 2.0 typed declarative). The schema itself is owned by Alembic.

Every change here needs a migration in ``migrations/versions``; the test suite compares the
migrated schema with this metadata on SQLite and PostgreSQL, so a forgotten migration fails.

Images are content-addressed and shared: a ``DatasetImage`` row places one stored ``Image``
in one dataset (with its original path, split and labels). Deleting a dataset cascades to its
``DatasetImage`` rows in the database; unreferenced ``Image`` rows and files are collected
separately, because other datasets may hold the same bytes.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.mutable import MutableDict, MutableList
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ACTIVE_STATUSES",
    "Base",
    "Dataset",
    "DatasetImage",
    "DatasetStatus",
    "Image",
    "Job",
    "JobPhase",
    "JobStatus",
    "Model",
    "SearchIndex",
    "SearchIndexStatus",
    "Split",
    "UTCDateTime",
    "as_utc",
    "utcnow",
]

# Deterministic constraint names: Alembic's batch mode (SQLite) can only drop or alter
# constraints it can name, and the names then match across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one (what a client sends without a zone) is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as UTC
    and get ``tzinfo=UTC`` back on load. Naive datetimes are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: use an aware one (e.g. utcnow())")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere; in-place edits are tracked.
JSONList = MutableList.as_mutable(JSON().with_variant(JSONB(), "postgresql"))
JSONDict = MutableDict.as_mutable(JSON().with_variant(JSONB(), "postgresql"))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class DatasetStatus(enum.StrEnum):
    READY = "ready"


class Split(enum.StrEnum):
    TRAIN = "train"
    QUERY = "query"
    GALLERY = "gallery"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Dataset(Base):
    """An uploaded image dataset, labeled (source / evaluation) or not (target)."""

    __tablename__ = "datasets"
    __table_args__ = (
        CheckConstraint(_in("status", DatasetStatus), name="status"),
        CheckConstraint(
            "num_images >= 0 AND num_identities >= 0 AND num_cameras >= 0 "
            "AND num_train >= 0 AND num_query >= 0 AND num_gallery >= 0",
            name="counts_non_negative",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    labeled: Mapped[bool]
    # how the archive was read: market1501, msmt17, veri776, csv, folders, flat, ...
    layout: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(
        String(16), default=DatasetStatus.READY.value, server_default=DatasetStatus.READY.value
    )
    num_images: Mapped[int] = mapped_column(default=0, server_default="0")
    num_identities: Mapped[int] = mapped_column(default=0, server_default="0")
    num_cameras: Mapped[int] = mapped_column(default=0, server_default="0")
    num_train: Mapped[int] = mapped_column(default=0, server_default="0")
    num_query: Mapped[int] = mapped_column(default=0, server_default="0")
    num_gallery: Mapped[int] = mapped_column(default=0, server_default="0")
    # files left out of the archive: [{"path": ..., "reason": ...}]
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONList, default=list, server_default="[]"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    # bumped by every append or delete of members: an index behind it needs a sync
    revision: Mapped[int] = mapped_column(default=0, server_default="0")
    # the index searches by collection use (an alias switched atomically); no foreign key,
    # to keep the datasets/indexes tables free of a cycle: deleting the index clears it
    live_index_id: Mapped[int | None]

    members: Mapped[list[DatasetImage]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        passive_deletes=True,  # the database's ON DELETE CASCADE does the work
        order_by="DatasetImage.id",
    )

    def __repr__(self) -> str:
        return f"Dataset(id={self.id!r}, name={self.name!r}, status={self.status!r})"


class Image(Base):
    """One stored file, identified by the SHA-256 of its bytes (stored once, shared)."""

    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("width > 0 AND height > 0", name="positive_size"),
        CheckConstraint("size_bytes >= 0", name="size_bytes_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(16))  # jpeg, png, ... (also the file extension)
    width: Mapped[int]
    height: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    # set when the last dataset let go of it while a running job or index sync might still
    # read the file: app.datasets.removal collects it once those readers are done
    orphaned_at: Mapped[datetime | None]

    memberships: Mapped[list[DatasetImage]] = relationship(back_populates="image")

    def __repr__(self) -> str:
        return f"Image(id={self.id!r}, sha256={self.sha256[:12]!r}...)"


class DatasetImage(Base):
    """An image's place in a dataset: original path, split, identity and camera labels."""

    __tablename__ = "dataset_images"
    __table_args__ = (
        UniqueConstraint("dataset_id", "original_path"),
        CheckConstraint(_in("split", Split), name="split"),
        Index("ix_dataset_images_dataset_id_split", "dataset_id", "split"),
        Index("ix_dataset_images_dataset_id_pid", "dataset_id", "pid"),
        Index("ix_dataset_images_dataset_id_camid", "dataset_id", "camid"),
        Index("ix_dataset_images_image_id", "image_id"),  # FK lookups and orphan dataset
        Index("ix_dataset_images_dataset_id_captured_at", "dataset_id", "captured_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="RESTRICT"))
    original_path: Mapped[str] = mapped_column(String(1024))
    split: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None]
    camid: Mapped[int | None]
    captured_at: Mapped[datetime | None]  # when the camera took it (appended images)

    dataset: Mapped[Dataset] = relationship(back_populates="members")
    image: Mapped[Image] = relationship(back_populates="memberships")

    def __repr__(self) -> str:
        return (
            f"DatasetImage(dataset_id={self.dataset_id!r}, path={self.original_path!r}, "
            f"split={self.split!r})"
        )


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)  # a worker holds or awaits it


class JobPhase(enum.StrEnum):
    INITIALISING = "initialising"
    CLUSTERING = "clustering"
    TRAINING = "training"
    EVALUATING = "evaluating"
    INDEXING = "indexing"


class Job(Base):
    """One adaptation run. The row is the source of truth: the broker only delivers its id.

    A worker owns a running job while it keeps ``heartbeat_at`` fresh; a lapsed heartbeat
    lets another worker claim it again (resuming from the run directory's checkpoint).
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(f"phase IS NULL OR {_in('phase', JobPhase)}", name="phase"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_target_dataset_id", "target_dataset_id"),
        Index("ix_jobs_source_dataset_id", "source_dataset_id"),
        Index("ix_jobs_eval_dataset_id", "eval_dataset_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(
        String(16), default=JobStatus.QUEUED.value, server_default=JobStatus.QUEUED.value
    )
    phase: Mapped[str | None] = mapped_column(String(16))
    # SET NULL, not RESTRICT: a finished job must not pin its datasets forever. While a
    # job is queued or running, ``dataset_in_use`` refuses the delete (409); null target on
    # an unfinished job therefore only results from a lost race, and the worker fails it.
    target_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    source_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    eval_dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL")
    )
    # the full TrainConfig (defaults filled in) the run uses
    config: Mapped[dict[str, Any]] = mapped_column(JSONDict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    epochs: Mapped[int] = mapped_column(default=0, server_default="0")
    iteration: Mapped[int] = mapped_column(default=0, server_default="0")
    iterations: Mapped[int] = mapped_column(default=0, server_default="0")
    # one entry per epoch: losses, clusters, unclustered, threshold, images_per_s, mAP, ...
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONList, default=list, server_default="[]"
    )
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    worker: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(default=False, server_default=false())
    heartbeat_at: Mapped[datetime | None]
    # Celery profile: when the id was last handed to the broker (NULL: not yet, or the send
    # failed); see app.jobs.outbox
    dispatched_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # no foreign key: models.job_id already points here, and a cycle would complicate DDL
    model_id: Mapped[int | None]

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, phase={self.phase!r})"


class Model(Base):
    """A trained encoder: the ``model.pt`` a succeeded job wrote (path relative to data_dir)."""

    __tablename__ = "models"
    __table_args__ = (CheckConstraint("size_bytes >= 0", name="size_bytes_non_negative"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="RESTRICT"), unique=True)
    arch: Mapped[str] = mapped_column(String(64))
    height: Mapped[int]
    width: Mapped[int]
    feature_dim: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict, server_default="{}")
    path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())

    def __repr__(self) -> str:
        return f"Model(id={self.id!r}, job_id={self.job_id!r}, arch={self.arch!r})"


# trainer.index.KINDS (not imported: the ORM stays free of faiss)
_INDEX_KINDS = "'flat', 'flat16', 'ivf', 'ivfpq'"


class SearchIndexStatus(enum.StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class SearchIndex(Base):
    """A FAISS index of one dataset (all splits) embedded by one model.

    The row is the work item too: a ``building`` row without a ``worker`` waits for a worker
    (the embedded one polls, the Celery task is sent its id), and so does a ``ready`` one
    whose ``revision`` is behind its dataset's (images were appended or deleted: a sync); a
    claim older than the ``index_claim_timeout_s`` setting may be taken again (its worker
    died). Files live in ``DATA_DIR/indexes/<id>/`` (``version`` 0) or its ``v<version>/``.
    """

    __tablename__ = "indexes"
    __table_args__ = (
        CheckConstraint(_in("status", SearchIndexStatus), name="status"),
        CheckConstraint(f"kind IS NULL OR kind IN ({_INDEX_KINDS})", name="kind"),
        CheckConstraint("size >= 0", name="size_non_negative"),
        Index("ix_indexes_model_id", "model_id"),
        Index("ix_indexes_dataset_id", "dataset_id"),
        Index("ix_indexes_status", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    # the job whose last phase built it (None: requested through POST /indexes)
    job_id: Mapped[int | None]
    status: Mapped[str] = mapped_column(
        String(16),
        default=SearchIndexStatus.BUILDING.value,
        server_default=SearchIndexStatus.BUILDING.value,
    )
    kind: Mapped[str | None] = mapped_column(String(8))
    size: Mapped[int] = mapped_column(default=0, server_default="0")
    dim: Mapped[int | None]
    build_seconds: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None]
    dispatched_at: Mapped[datetime | None]  # as Job.dispatched_at
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    finished_at: Mapped[datetime | None]
    revision: Mapped[int] = mapped_column(default=0, server_default="0")  # of its dataset
    version: Mapped[int] = mapped_column(default=0, server_default="0")  # its files' folder

    def __repr__(self) -> str:
        return f"SearchIndex(id={self.id!r}, model_id={self.model_id!r}, status={self.status!r})"
