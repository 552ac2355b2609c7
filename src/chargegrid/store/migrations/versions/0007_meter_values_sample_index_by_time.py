"""meter values: the unique sample index ordered (charge point, timestamp, measurand, ...)

0006 led the index with (charge point, measurand, timestamp): every series of every charge point
then has a tail page of its own, and each commit writes one page per series in the batch (three
for a message of three measurands, ten for ten). Led by (charge point, timestamp), a message's
values land next to each other on the charge point's one tail page: raw SQLite at 900k rows,
N=500, 3 values per message, 45 -> 20 us of CPU per value (with the 64 MiB page cache the engine
now asks for; docs/benchmarks.md, "Where the time goes"). Range queries of one charge point's
measurand over a time range still use the index (the measurand is filtered inside the index
entries); "the latest value of a measurand" is bounded by the series' rollups
(store/queries.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
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


def _sample_index(leading: list[str]) -> None:
    op.drop_index("uq_meter_values_sample", table_name="meter_values")
    op.create_index("uq_meter_values_sample", "meter_values", [*leading, *_REST], unique=True)


def upgrade() -> None:
    _sample_index(["charge_point_id", "timestamp", "measurand"])


def downgrade() -> None:
    _sample_index(["charge_point_id", "measurand", "timestamp"])
