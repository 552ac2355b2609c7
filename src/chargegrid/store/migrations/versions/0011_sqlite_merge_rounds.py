"""SQLite: deferred rollup merges a slice of charge points per commit, the progress recorded

The deferred merge of a second's rollups (3,000 rows for 500 charge points) took 23-57 ms in one
commit at 5,000 messages/s, and every charge point's next acknowledgement waited for it. Now a
round merges them a slice of charge points (id modulo slices) per commit (metering/rollups.py).
Merges add to what is stored, so a crash in the middle of a round must know which slices are in:
values up to ``merge_round_up_to`` of the charge points whose id modulo ``merge_round_slices`` is
below ``merge_round_done`` are counted, besides every value up to ``raw_id``; recovery and
rebuilds count by that (store/rollups.Counted). No round is under way here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollup_watermark", sa.Column("merge_round_up_to", sa.BigInteger()))
    op.add_column(
        "rollup_watermark",
        sa.Column("merge_round_slices", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "rollup_watermark",
        sa.Column("merge_round_done", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    # 0010 knows only the watermark: a round under way is given up, and the next start's
    # recovery counts its values again from raw... except those of the slices already merged,
    # which would then count twice. Refuse instead; a clean stop ends every round.
    bind = op.get_bind()
    running = bind.exec_driver_sql(
        "SELECT count(*) FROM rollup_watermark WHERE merge_round_up_to IS NOT NULL"
    ).scalar()
    if running:
        raise RuntimeError(
            "a rollup merge round is under way (the server did not stop cleanly): start and "
            "stop the server once, then downgrade"
        )
    with op.batch_alter_table("rollup_watermark") as batch:
        batch.drop_column("merge_round_done")
        batch.drop_column("merge_round_slices")
        batch.drop_column("merge_round_up_to")
