"""Living collections: appended and deleted images, capture times, index syncs, live aliases

datasets.revision counts the changes of a dataset's members (every append or delete bumps it);
indexes.revision is the dataset revision an index reflects and indexes.version names its folder
(a sync writes the next version beside the current one); datasets.live_index_id is the index
searches by collection use; dataset_images.captured_at is when a camera took the image;
images.orphaned_at marks an image no dataset holds any more whose file a running reader may
still need (the sweeper removes it later).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_COUNTERS = (("datasets", "revision"), ("indexes", "revision"), ("indexes", "version"))


def _kind_check(values: str) -> None:
    with op.batch_alter_table("indexes", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_indexes_kind"), type_="check")
        batch.create_check_constraint("kind", f"kind IS NULL OR kind IN ({values})")


def upgrade() -> None:
    for table, column in _COUNTERS:
        op.add_column(table, sa.Column(column, sa.Integer(), nullable=False, server_default="0"))
    op.add_column("datasets", sa.Column("live_index_id", sa.Integer(), nullable=True))
    op.add_column(
        "dataset_images", sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        op.f("ix_dataset_images_dataset_id_captured_at"),
        "dataset_images",
        ["dataset_id", "captured_at"],
    )
    op.add_column("images", sa.Column("orphaned_at", sa.DateTime(timezone=True), nullable=True))
    _kind_check("'flat', 'flat16', 'ivf', 'ivfpq'")
    # a finished build now releases its claim: a claimed ready index is being synced
    op.execute("UPDATE indexes SET worker = NULL, claimed_at = NULL WHERE status <> 'building'")


def downgrade() -> None:
    op.execute("DELETE FROM indexes WHERE kind IN ('flat16', 'ivfpq')")
    _kind_check("'flat', 'ivf'")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("orphaned_at")
    op.drop_index(op.f("ix_dataset_images_dataset_id_captured_at"), table_name="dataset_images")
    with op.batch_alter_table("dataset_images") as batch:
        batch.drop_column("captured_at")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("live_index_id")
    for table, column in _COUNTERS:
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
