"""search indexes (one collection embedded by one model)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Types are spelled out here rather than imported from app.core.orm (see 0001).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_TIME = sa.DateTime(timezone=True)

_INDEXES = {
    "ix_indexes_model_id": ["model_id"],
    "ix_indexes_dataset_id": ["dataset_id"],
    "ix_indexes_status": ["status"],
}


def upgrade() -> None:
    op.create_table(
        "indexes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), server_default="building", nullable=False),
        sa.Column("kind", sa.String(8), nullable=True),
        sa.Column("size", sa.Integer(), server_default="0", nullable=False),
        sa.Column("dim", sa.Integer(), nullable=True),
        sa.Column("build_seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("claimed_at", _TIME, nullable=True),
        sa.Column("created_at", _TIME, server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", _TIME, nullable=True),
        sa.CheckConstraint(
            "status IN ('building', 'ready', 'failed')", name=op.f("ck_indexes_status")
        ),
        sa.CheckConstraint("kind IS NULL OR kind IN ('flat', 'ivf')", name=op.f("ck_indexes_kind")),
        sa.CheckConstraint("size >= 0", name=op.f("ck_indexes_size_non_negative")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_indexes_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_indexes_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_indexes")),
    )
    with op.batch_alter_table("indexes") as batch:
        for name, columns in _INDEXES.items():
            batch.create_index(name, columns)


def downgrade() -> None:
    op.drop_table("indexes")
