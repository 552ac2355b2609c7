"""meter values: one index fewer; the unique sample index serves per-series queries

The unique index that makes a replayed sample a no-op (DESIGN.md guarantee 2) now leads with
(charge point, measurand, timestamp), so it also serves every "this charge point's measurand over
a time range" query that ``ix_meter_values_cp_measurand_ts`` served; that index goes. Every value
then touches one B-tree keyed by charge point instead of two: each commit rewrites the tail page of
every such tree for every charge point in the batch, which was most of SQLite's cost per value
(docs/benchmarks.md, "Where the time goes").

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_IDENTITY: list[Any] = [
    "connector_id",
    sa.text("coalesce(transaction_id, 0)"),
    sa.text("coalesce(phase, '')"),
    "location",
    "format",
    "context",
]


def upgrade() -> None:
    op.drop_index("uq_meter_values_sample", table_name="meter_values")
    op.create_index(
        "uq_meter_values_sample",
        "meter_values",
        ["charge_point_id", "measurand", "timestamp", *_IDENTITY],
        unique=True,
    )
    op.drop_index("ix_meter_values_cp_measurand_ts", table_name="meter_values")


def downgrade() -> None:
    op.create_index(
        "ix_meter_values_cp_measurand_ts",
        "meter_values",
        ["charge_point_id", "measurand", "timestamp"],
        unique=False,
    )
    op.drop_index("uq_meter_values_sample", table_name="meter_values")
    op.create_index(
        "uq_meter_values_sample",
        "meter_values",
        [
            "charge_point_id",
            "connector_id",
            sa.text("coalesce(transaction_id, 0)"),
            "timestamp",
            "measurand",
            sa.text("coalesce(phase, '')"),
            "location",
            "format",
            "context",
        ],
        unique=True,
    )
