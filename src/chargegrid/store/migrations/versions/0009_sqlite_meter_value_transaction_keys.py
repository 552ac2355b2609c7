"""SQLite: sessions' values found through meter_value_transaction_keys, not a transaction index

ix_meter_values_transaction (transaction id, timestamp) has a tail page per open session: in a
fleet that sends values with a transaction id (every charging charge point), a commit wrote one
page of it per charging charge point in the batch, the cost 0008 took off the sample index.
Like meter_value_keys, meter_value_transaction_keys (transaction, timestamp, id) is filled in
bulk and sorted when the rollup watermark advances: raw sqlite3, 500 charge points each in a
session, 3 values per message, ~1M rows: 25.4 -> 16.0 us of CPU per value
(benchmarks/sqlite_index.py ts+keys ts+keys+tx --transactions, docs/benchmarks.md). Session reads
take the keys up to the watermark plus the values above it (store/value_keys.py).

PostgreSQL keeps its index (no watermark there: several nodes write at once).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import chargegrid.store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def upgrade() -> None:
    if not _sqlite():
        return
    op.create_table(
        "meter_value_transaction_keys",
        sa.Column("transaction_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("charge_point_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_point_id"],
            ["charge_points.id"],
            name=op.f("fk_meter_value_transaction_keys_charge_point_id_charge_points"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "transaction_id", "timestamp", "id", name=op.f("pk_meter_value_transaction_keys")
        ),
        sqlite_with_rowid=False,
    )
    # Values above the watermark are keyed when it next advances (at the latest by the crash
    # recovery at start-up).
    op.execute(
        "INSERT INTO meter_value_transaction_keys (transaction_id, timestamp, id, charge_point_id) "
        "SELECT transaction_id, timestamp, id, charge_point_id FROM meter_values "
        "WHERE transaction_id IS NOT NULL "
        "AND id <= (SELECT coalesce(max(raw_id), 0) FROM rollup_watermark) ORDER BY 1, 2, 3"
    )
    op.drop_index("ix_meter_values_transaction", table_name="meter_values")


def downgrade() -> None:
    if not _sqlite():
        return
    op.create_index("ix_meter_values_transaction", "meter_values", ["transaction_id", "timestamp"])
    op.drop_table("meter_value_transaction_keys")
