"""datasets, images (content-addressed) and dataset_images

Revision ID: 0001
Revises:
Create Date: 2025-11-27

Types are spelled out here rather than imported from app.core.orm, so this revision keeps
meaning what it meant when later revisions change the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def upgrade() -> None:
    counts = (
        "num_images",
        "num_identities",
        "num_cameras",
        "num_train",
        "num_query",
        "num_gallery",
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("labeled", sa.Boolean(), nullable=False),
        sa.Column("layout", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), server_default="ready", nullable=False),
        *(sa.Column(c, sa.Integer(), server_default="0", nullable=False) for c in counts),
        sa.Column("rejected", _JSON, server_default="[]", nullable=False),
        _created_at(),
        sa.CheckConstraint("status IN ('ready', 'deleting')", name=op.f("ck_datasets_status")),
        sa.CheckConstraint(
            "num_images >= 0 AND num_identities >= 0 AND num_cameras >= 0 "
            "AND num_train >= 0 AND num_query >= 0 AND num_gallery >= 0",
            name=op.f("ck_datasets_counts_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        _created_at(),
        sa.CheckConstraint("width > 0 AND height > 0", name=op.f("ck_images_positive_size")),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_images_size_bytes_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("sha256", name=op.f("uq_images_sha256")),
    )
    op.create_table(
        "dataset_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("original_path", sa.String(1024), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("camid", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "split IN ('train', 'query', 'gallery')", name=op.f("ck_dataset_images_split")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_dataset_images_dataset_id_datasets"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_dataset_images_image_id_images"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_images")),
        sa.UniqueConstraint(
            "dataset_id", "original_path", name=op.f("uq_dataset_images_dataset_id_original_path")
        ),
    )
    with op.batch_alter_table("dataset_images") as batch:
        for name, columns in _INDEXES.items():
            batch.create_index(name, columns)


_INDEXES = {
    "ix_dataset_images_dataset_id_split": ["dataset_id", "split"],
    "ix_dataset_images_dataset_id_pid": ["dataset_id", "pid"],
    "ix_dataset_images_dataset_id_camid": ["dataset_id", "camid"],
    "ix_dataset_images_image_id": ["image_id"],
}


def downgrade() -> None:
    op.drop_table("dataset_images")  # its indexes go with it
    op.drop_table("images")
    op.drop_table("datasets")
