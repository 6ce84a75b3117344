"""datasets.status holds only 'ready': the 'deleting' state was never used

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _status_check(values: str) -> None:
    with op.batch_alter_table("datasets", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_datasets_status"), type_="check")
        batch.create_check_constraint("status", f"status IN ({values})")


def upgrade() -> None:
    _status_check("'ready'")


def downgrade() -> None:
    _status_check("'ready', 'deleting'")
