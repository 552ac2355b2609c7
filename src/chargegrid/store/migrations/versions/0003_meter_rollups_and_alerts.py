"""meter-value pipeline: rollups, alert rules (with the reference's defaults), alerts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import chargegrid.store.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The reference pipeline's thresholds (shared/reference/meter-values-summary.md), in base units.
DEFAULT_RULES: list[dict[str, object]] = [
    {"name": "power-above-50kW", "measurand": "Power.Active.Import", "comparison": "above",
     "threshold": 50_000.0, "low": None, "high": None, "hysteresis": 1_000.0,
     "cooldown_seconds": 300.0, "severity": "warning"},
    {"name": "temperature-outside-range", "measurand": "Temperature", "comparison": "outside",
     "threshold": None, "low": -10.0, "high": 70.0, "hysteresis": 2.0,
     "cooldown_seconds": 300.0, "severity": "critical"},
    {"name": "voltage-outside-range", "measurand": "Voltage", "comparison": "outside",
     "threshold": None, "low": 207.0, "high": 253.0, "hysteresis": 2.0,
     "cooldown_seconds": 300.0, "severity": "warning"},
    {"name": "current-above-80A", "measurand": "Current.Import", "comparison": "above",
     "threshold": 80.0, "low": None, "high": None, "hysteresis": 2.0,
     "cooldown_seconds": 300.0, "severity": "warning"},
]  # fmt: skip


def upgrade() -> None:
    rules = op.create_table(
        "alert_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("measurand", sa.String(length=40), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=True),
        sa.Column("comparison", sa.String(length=8), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("low", sa.Float(), nullable=True),
        sa.Column("high", sa.Float(), nullable=True),
        sa.Column("hysteresis", sa.Float(), server_default="0", nullable=False),
        sa.Column("cooldown_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("severity", sa.String(length=10), server_default="warning", nullable=False),
        sa.Column("charge_points", sa.JSON(), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default="1", nullable=False),
        sa.Column("source", sa.String(length=8), server_default="api", nullable=False),
        sa.Column("created_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_alert_rules_name")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("rule_name", sa.String(length=64), nullable=False),
        sa.Column("charge_point_id", sa.Integer(), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.Integer(), nullable=True),
        sa.Column("measurand", sa.String(length=40), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=True),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(length=12), nullable=False),
        sa.Column("value_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("raised_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_value", sa.Float(), nullable=True),
        sa.Column(
            "acknowledged_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["charge_point_id"],
            ["charge_points.id"],
            name=op.f("fk_alerts_charge_point_id_charge_points"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["alert_rules.id"],
            name=op.f("fk_alerts_rule_id_alert_rules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_cp_raised", ["charge_point_id", "raised_at"], unique=False)
        batch_op.create_index("ix_alerts_resolved", ["resolved_at"], unique=False)

    op.create_table(
        "meter_rollups",
        sa.Column("charge_point_id", sa.Integer(), nullable=False),
        sa.Column("measurand", sa.String(length=40), nullable=False),
        sa.Column("resolution", sa.String(length=4), nullable=False),
        sa.Column("bucket", chargegrid.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("connector_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("location", sa.String(length=8), nullable=False),
        sa.Column("unit", sa.String(length=12), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("sum", sa.Float(), nullable=False),
        sa.Column("min", sa.Float(), nullable=True),
        sa.Column("max", sa.Float(), nullable=True),
        sa.Column("first_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("first_value", sa.Float(), nullable=True),
        sa.Column("last_at", chargegrid.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_value", sa.Float(), nullable=True),
        sa.Column("energy", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["charge_point_id"],
            ["charge_points.id"],
            name=op.f("fk_meter_rollups_charge_point_id_charge_points"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "charge_point_id",
            "measurand",
            "resolution",
            "bucket",
            "connector_id",
            "phase",
            "location",
            name=op.f("pk_meter_rollups"),
        ),
    )
    with op.batch_alter_table("meter_rollups", schema=None) as batch_op:
        batch_op.create_index(
            "ix_meter_rollups_resolution_bucket", ["resolution", "bucket"], unique=False
        )

    # Only an index is added: batch mode creates it in place and never rebuilds meter_values (a
    # rebuild would drop its expression index uq_meter_values_sample, which reflection cannot see).
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.create_index("ix_meter_values_timestamp", ["timestamp"], unique=False)

    now = datetime.now(UTC)
    op.bulk_insert(
        rules,
        [
            {
                **rule,
                "phase": None,
                "charge_points": None,
                "enabled": True,
                "source": "default",
                "created_at": now,
                "updated_at": now,
            }
            for rule in DEFAULT_RULES
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("meter_values", schema=None) as batch_op:
        batch_op.drop_index("ix_meter_values_timestamp")
    with op.batch_alter_table("meter_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_meter_rollups_resolution_bucket")
    op.drop_table("meter_rollups")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_resolved")
        batch_op.drop_index("ix_alerts_cp_raised")
    op.drop_table("alerts")
    op.drop_table("alert_rules")
