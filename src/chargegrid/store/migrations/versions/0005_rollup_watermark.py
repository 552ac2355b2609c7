"""rollup watermark: rollups merged every second on SQLite, recounted from raw after a crash

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_watermark",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("raw_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_rollup_watermark_one_row"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_watermark")),
    )
    # Until now every value's rollups were merged in its own transaction: all are counted.
    op.execute(
        "INSERT INTO rollup_watermark (id, raw_id) SELECT 1, coalesce(max(id), 0) FROM meter_values"
    )


def downgrade() -> None:
    op.drop_table("rollup_watermark")
