"""SQLite: a key watermark of its own, so that the keys can be filled a slice at a time

Until now the keys (meter_value_keys, meter_value_transaction_keys) were filled up to the rollup
watermark in the transaction that advanced it, about once a second: at 2,500 messages/s that one
commit took 80-250 ms and every charge point's next acknowledgement waited for it. Now they are
filled a slice of charge points at a time, one slice per commit (store/value_keys.fill_step), and
``keyed_id`` says up to which id they are complete; reads take the keys up to it and the values
above it. It starts where the rollup watermark is, up to which 0008 and 0009 keyed every value.

The column exists on PostgreSQL too (one schema), unused there like the rest of the row.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "rollup_watermark",
        sa.Column("keyed_id", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute("UPDATE rollup_watermark SET keyed_id = raw_id")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # 0009's reads take keys up to the rollup watermark: key what the slices had not yet.
        for table, columns, having in (
            ("meter_value_keys", "charge_point_id, timestamp, id", ""),
            (
                "meter_value_transaction_keys",
                "transaction_id, timestamp, id, charge_point_id",
                " AND transaction_id IS NOT NULL",
            ),
        ):
            op.execute(
                f"INSERT OR IGNORE INTO {table} ({columns}) SELECT {columns} FROM meter_values "
                "WHERE id > (SELECT coalesce(max(keyed_id), 0) FROM rollup_watermark) "
                f"AND id <= (SELECT coalesce(max(raw_id), 0) FROM rollup_watermark){having} "
                "ORDER BY 1, 2, 3"
            )
    with op.batch_alter_table("rollup_watermark") as batch:
        batch.drop_column("keyed_id")
