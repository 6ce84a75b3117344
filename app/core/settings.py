"""Service configuration: one ``Settings`` object read from ``REID_*`` variables and ``.env``.

Every knob of the service lives here so that the HTTP app, the CLI and (later) the worker read
the same values the same way. Add a field to extend it: ``REID_<FIELD>`` then sets it.
Precedence (pydantic-settings): keyword arguments (the CLI's flags) > environment > ``.env``
in the working directory > defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["GIB", "LOG_LEVELS", "Settings", "configure_logging", "load_settings"]

GIB = 1024**3
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
DATABASE_FILENAME = "reid.db"


class Settings(BaseSettings):
    """All service settings; ``REID_<NAME>`` in the environment or ``.env`` sets ``<name>``."""

    model_config = SettingsConfigDict(
        env_prefix="REID_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",  # a shared .env may hold other programs' variables
        validate_default=True,
    )

    # --- storage and database
    data_dir: Path = Field(
        default=Path("reid-data"),
        description="root of images, artifacts and the default SQLite database",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset: a SQLite file reid.db in data_dir",
    )

    # --- HTTP
    host: str = Field(default="127.0.0.1", description="address `reid serve` binds")
    port: int = Field(default=8000, ge=0, le=65535, description="port `reid serve` binds")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="accepted API keys, comma-separated in REID_API_KEYS, each [SCOPE=]KEY: "
        "scope read (listings, images, downloads, search), write (also uploads, jobs, "
        "deletes) or admin (the default); KEY the key or sha256:<hex> of it (`reid keys new` "
        "prints one); empty: no auth",
    )

    # --- upload limits (enforced by the dataset upload)
    max_upload_bytes: int = Field(default=10 * GIB, gt=0, description="largest request body")
    max_archive_members: int = Field(
        default=500_000, gt=0, description="most entries in an uploaded archive"
    )
    max_uncompressed_bytes: int = Field(
        default=50 * GIB, gt=0, description="most bytes an archive may expand to"
    )
    max_compression_ratio: float = Field(
        default=100.0, gt=1.0, description="largest uncompressed/compressed ratio (zip bombs)"
    )
    max_image_pixels: int = Field(
        default=40_000_000, gt=0, description="largest width x height of one image"
    )

    # --- jobs and workers
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (e.g. redis://host:6379/0); unset: the embedded worker of "
        "`reid serve` runs the jobs, the database being the queue",
    )
    worker_queue: str = Field(
        default="gpu", min_length=1, max_length=200, description="Celery queue of training tasks"
    )
    broker_visibility_timeout_s: int = Field(
        default=7 * 24 * 3600,
        gt=0,
        description="Redis redelivers an unacknowledged task after this long; far above a job "
        "(a redelivered message of a running or finished job is ignored anyway)",
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="how often a worker proves it still runs a job"
    )
    heartbeat_timeout_s: float = Field(
        default=120.0, gt=0, description="a running job silent this long is claimable again"
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="starts of a job before a lost worker fails it"
    )
    progress_interval_s: float = Field(
        default=1.0, ge=0, description="least time between two progress writes of a job"
    )
    cancel_check_interval_s: float = Field(
        default=2.0, gt=0, description="how often a running job looks for a cancel request"
    )
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="embedded worker: how often it looks for queued jobs"
    )
    loader_workers: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="data-loading processes per job (overrides the job's `workers`)",
    )

    # --- search indexes and /search
    index_ivf_threshold: int = Field(
        default=1_000_000,
        ge=1,
        description="datasets this large or larger get an IVF index, smaller ones exact flat",
    )
    index_type: Literal["auto", "flat", "flat16", "ivf", "ivfpq"] = Field(
        default="auto",
        description="auto: exact flat below index_ivf_threshold (fp16 codes when fp32 passes "
        "index_memory_bytes), IVF beyond (PQ codes re-scored from stored fp16 features when "
        "fp32 vectors pass it); or force one kind",
    )
    index_memory_bytes: int = Field(
        default=8 * GIB,
        gt=0,
        description="RAM one index may hold; past it auto picks the compressed kinds",
    )
    index_nprobe: int = Field(
        default=32, ge=1, le=65536, description="IVF lists visited per query (speed vs recall)"
    )
    index_cache_bytes: int = Field(
        default=4 * GIB,
        ge=0,
        description="memory bound of the API's loaded indexes (LRU by bytes; the newest one is "
        "always kept)",
    )
    index_claim_timeout_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        description="a build claimed this long ago whose index is still building may be taken "
        "again (its worker died)",
    )
    search_max_image_bytes: int = Field(
        default=20 * 1024 * 1024, gt=0, description="largest query image accepted by /search (413)"
    )
    search_rate_per_minute: int = Field(
        default=0,
        ge=0,
        description="POST /search requests per minute per API key (or address), per API "
        "process, bursts up to that; 0: unlimited (429 with Retry-After past it)",
    )
    upload_rate_per_minute: int = Field(
        default=0,
        ge=0,
        description="uploads and appends per minute per API key (or address), per API "
        "process; 0: unlimited",
    )
    search_max_images: int = Field(
        default=64, ge=1, le=1024, description="most query images in one /search request"
    )
    search_batch_size: int = Field(
        default=32, ge=1, le=1024, description="most queries in one micro-batched model forward"
    )
    search_batch_wait_ms: float = Field(
        default=3.0,
        ge=0,
        le=1000,
        description="after a forward, how long at least the next one waits for the clients just "
        "answered to send more queries (0: never wait; a lone query never waits)",
    )
    search_models_cached: int = Field(
        default=2, ge=1, le=64, description="encoders kept loaded by the API (LRU)"
    )
    inference_engine: Literal["auto", "torch", "onnx"] = Field(
        default="auto",
        description="what embeds for /search and index builds: torch, onnx (ONNX Runtime on "
        "the CPU, the model's own export) or auto (on a CPU, the faster of the two as timed "
        "when a model is loaded; on a GPU, torch)",
    )

    # --- logging
    log_level: str = Field(default="INFO", description="one of " + ", ".join(LOG_LEVELS))

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """Absolute, so a later chdir (or a worker started elsewhere) finds the same files."""
        return value.expanduser().absolute()

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        """Empty means unset; bare ``postgresql://`` gets the installed psycopg 3 driver."""
        if value is None or not value.strip():
            return None
        value = value.strip()
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("broker_url")
    @classmethod
    def _blank_broker(cls, value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: Any) -> Any:
        """``"a, b,,c"`` -> ``["a", "b", "c"]``: blanks never become a key that matches."""
        if value is None:
            return []
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            keys = [str(key).strip() for key in value if str(key).strip()]
            from app.core.api_keys import parse_keys

            parse_keys(tuple(keys))  # a malformed entry fails at start, not per request
            return keys
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        text = str(value).strip().upper()
        if text not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return text

    @property
    def effective_database_url(self) -> str:
        """The URL actually used: ``database_url`` or the SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / DATABASE_FILENAME).as_posix()}"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)


def load_settings(**overrides: Any) -> Settings:
    """Settings with explicit overrides (``None`` values ignored), errors as one readable line.

    pydantic's multi-line ``ValidationError`` becomes a ``ValueError`` naming the variable,
    which the CLI prints as ``reid serve: error: ...`` with exit status 2.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"REID_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ValueError(f"invalid settings: {problems}") from None


def configure_logging(level: str) -> None:
    """One stderr handler on the root logger; uvicorn and alembic propagate to it."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also when a handler was already installed
    # Alembic announces each of its plugins at INFO on every run: noise unless debugging.
    logging.getLogger("alembic.runtime.plugins").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.WARNING
    )
