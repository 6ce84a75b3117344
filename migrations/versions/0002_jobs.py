"""jobs (adaptation runs) and models (their results)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Types are spelled out here rather than imported from app.core.orm (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIME = sa.DateTime(timezone=True)


def _fk(column: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["datasets.id"], name=op.f(f"fk_jobs_{column}_datasets"), ondelete="SET NULL"
    )


def upgrade() -> None:
    counters = ("epoch", "epochs", "iteration", "iterations", "attempts")
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), server_default="queued", nullable=False),
        sa.Column("phase", sa.String(16), nullable=True),
        sa.Column("target_dataset_id", sa.Integer(), nullable=True),
        sa.Column("source_dataset_id", sa.Integer(), nullable=True),
        sa.Column("eval_dataset_id", sa.Integer(), nullable=True),
        sa.Column("config", _JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        *(sa.Column(c, sa.Integer(), server_default="0", nullable=False) for c in counters[:4]),
        sa.Column("metrics", _JSON, server_default="[]", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("heartbeat_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, server_default=sa.func.now(), nullable=False),
        sa.Column("started_at", _TIME, nullable=True),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.CheckConstraint(
            "phase IS NULL OR phase IN "
            "('initialising', 'clustering', 'training', 'evaluating', 'indexing')",
            name=op.f("ck_jobs_phase"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_non_negative")),
        _fk("target_dataset_id"),
        _fk("source_dataset_id"),
        _fk("eval_dataset_id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    with op.batch_alter_table("jobs") as batch:
        for name, columns in _JOB_INDEXES.items():
            batch.create_index(name, columns)
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("feature_dim", sa.Integer(), nullable=False),
        sa.Column("metrics", _JSON, server_default="{}", nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _TIME, server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_models_size_bytes_non_negative")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_models_job_id_jobs"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("job_id", name=op.f("uq_models_job_id")),
    )


_JOB_INDEXES = {
    "ix_jobs_status": ["status"],
    "ix_jobs_target_dataset_id": ["target_dataset_id"],
    "ix_jobs_source_dataset_id": ["source_dataset_id"],
    "ix_jobs_eval_dataset_id": ["eval_dataset_id"],
}


def downgrade() -> None:
    op.drop_table("models")
    op.drop_table("jobs")  # its indexes go with it
