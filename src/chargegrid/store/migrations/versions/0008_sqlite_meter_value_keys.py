"""SQLite: the sample index led by time, charge points' values found through meter_value_keys

On SQLite a commit wrote one page of the unique sample index per charge point in the batch (the
index led with the charge point since 0006/0007): at 500 charge points, ~500 pages per commit,
most of the insert's cost. Led by the timestamp, the index takes a commit's values on one tail
(it then also serves retention, so ix_meter_values_timestamp goes). Which values belong to which
charge point is kept in meter_value_keys (charge point, timestamp, id), filled in bulk and sorted
when the rollup watermark advances (about once a second): raw sqlite3 at ~1M rows, 500 charge
points, 3 values per message: 21-32 -> 12-13 us of CPU per value (benchmarks/sqlite_index.py,
docs/benchmarks.md). Reads by charge point take the keys up to the watermark plus the values
above it (store/value_keys.py).

PostgreSQL is left as it is (no watermark there: several nodes write at once).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

import chargegrid.store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_REST: list[Any] = [
    "connector_id",
    sa.text("coalesce(transaction_id, 0)"),
    sa.text("coalesce(phase, '')"),
    "location",
    "format",
    "context",
]


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _sample_index(leading: list[str]) -> None:
    op.drop_index("uq_meter_values_sample", table_name="meter_values")
    op.create_index("uq_meter_values_sample", "meter_values", [*leading, *_REST], unique=True)


def upgrade() -> None:
    if not _sqlite():
        return
    op.create_table(
        "meter_value_keys",
        sa.Column("charge_point_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_point_id"],
            ["charge_points.id"],
            name=op.f("fk_meter_value_keys_charge_point_id_charge_points"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "charge_point_id", "timestamp", "id", name=op.f("pk_meter_value_keys")
        ),
        sqlite_with_rowid=False,
    )
    # Values above the watermark are keyed when it next advances (at the latest by the crash
    # recovery at start-up).
    op.execute(
        "INSERT INTO meter_value_keys (charge_point_id, timestamp, id) "
        "SELECT charge_point_id, timestamp, id FROM meter_values "
        "WHERE id <= (SELECT coalesce(max(raw_id), 0) FROM rollup_watermark) ORDER BY 1, 2, 3"
    )
    _sample_index(["timestamp", "charge_point_id", "measurand"])
    op.drop_index("ix_meter_values_timestamp", table_name="meter_values")


def downgrade() -> None:
    if not _sqlite():
        return
    op.create_index("ix_meter_values_timestamp", "meter_values", ["timestamp"])
    _sample_index(["charge_point_id", "timestamp", "measurand"])
    op.drop_table("meter_value_keys")
