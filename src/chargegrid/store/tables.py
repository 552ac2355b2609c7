"""The relational schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it.

Core rather than ORM: the hot path inserts plain dicts in batches, and the API reads rows into
response models, so identity maps and unit-of-work tracking would be pure overhead.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

from chargegrid.store.types import BigIntId, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

charge_points = Table(
    "charge_points",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("identity", String(255), nullable=False, unique=True),
    # Security Profile 1/2 AuthorizationKey, as "pbkdf2_sha256$iterations$salt$hash"; never the key.
    Column("auth_key_hash", String(255)),
    Column("security_profile", Integer, nullable=False, server_default="0"),
    # What the next BootNotification is answered with (OCPP 1.6 §4.2).
    Column("registration_status", String(16), nullable=False, server_default="Accepted"),
    Column("vendor", String(20)),
    Column("model", String(20)),
    Column("serial_number", String(25)),
    Column("charge_box_serial_number", String(25)),
    Column("firmware_version", String(50)),
    Column("iccid", String(20)),
    Column("imsi", String(20)),
    Column("meter_type", String(25)),
    Column("meter_serial_number", String(25)),
    # Connector 0 is the charge point as a whole (OCPP 1.6 §4.9).
    Column("status", String(20)),
    Column("error_code", String(30)),
    Column("connected", Boolean, nullable=False, server_default="0"),
    Column("last_seen_at", UTCDateTime),
    Column("last_heartbeat_at", UTCDateTime),
    Column("last_boot_at", UTCDateTime),
    Column("connected_at", UTCDateTime),
    Column("disconnected_at", UTCDateTime),
    Column("metadata", JSON, nullable=False, default=dict),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

connectors = Table(
    "connectors",
    metadata,
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("connector_id", Integer, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("error_code", String(30), nullable=False),
    Column("info", String(50)),
    Column("vendor_id", String(255)),
    Column("vendor_error_code", String(50)),
    Column("status_at", UTCDateTime),  # the CP's timestamp, when it sent one
    Column("status_at_raw", String(64)),
    Column("updated_at", UTCDateTime, nullable=False),
)

id_tags = Table(
    "id_tags",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("id_tag", String(20), nullable=False, unique=True),
    Column("status", String(16), nullable=False, server_default="Accepted"),
    Column("expiry_date", UTCDateTime),
    Column("parent_id_tag", String(20)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

transactions = Table(
    "transactions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("connector_id", Integer, nullable=False),
    Column("id_tag", String(20), nullable=False),
    Column("id_tag_status", String(16), nullable=False),  # the idTagInfo answered at start
    Column("reservation_id", Integer),
    Column("meter_start", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("started_at_raw", String(64), nullable=False),
    Column("meter_stop", Integer),
    Column("stopped_at", UTCDateTime),
    Column("stopped_at_raw", String(64)),
    Column("stop_reason", String(20)),
    Column("stop_id_tag", String(20)),
    # Wh; the register difference, falling back to meterStop - meterStart.
    Column("energy_wh", Float),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # DESIGN.md guarantee 2: a StartTransaction replayed after a reconnect finds its first row.
    UniqueConstraint("charge_point_id", "connector_id", "started_at", "meter_start", "id_tag"),
    Index("ix_transactions_cp_stopped", "charge_point_id", "stopped_at"),
    Index("ix_transactions_started_at", "started_at"),
)

meter_values = Table(
    "meter_values",
    metadata,
    Column("id", BigIntId, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("connector_id", Integer, nullable=False),
    # No foreign key: a CP may report values for a transaction id we never issued; they are kept.
    Column("transaction_id", Integer),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("timestamp_raw", String(64), nullable=False),
    Column("measurand", String(40), nullable=False),
    Column("phase", String(8)),
    Column("location", String(8), nullable=False),
    Column("context", String(24), nullable=False),
    Column("unit", String(12), nullable=False),
    Column("value", Float),  # numeric, normalised to the base unit (Wh, W, ...); NULL if unparsable
    Column("raw_value", Text, nullable=False),  # exactly as sent (SignedData kept verbatim)
    Column("raw_unit", String(12), nullable=False),
    Column("format", String(12), nullable=False),
    Index("ix_meter_values_cp_measurand_ts", "charge_point_id", "measurand", "timestamp"),
    Index("ix_meter_values_transaction", "transaction_id", "timestamp"),
)

# DESIGN.md guarantee 2: a replayed sample is stored once; inserts use ON CONFLICT DO NOTHING.
# transaction_id and phase are nullable, and NULLs never collide in a unique index, hence coalesce.
Index(
    "uq_meter_values_sample",
    meter_values.c.charge_point_id,
    meter_values.c.connector_id,
    func.coalesce(meter_values.c.transaction_id, 0),
    meter_values.c.timestamp,
    meter_values.c.measurand,
    func.coalesce(meter_values.c.phase, ""),
    meter_values.c.location,
    unique=True,
)

events = Table(
    "events",
    metadata,
    Column("id", BigIntId, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("timestamp", UTCDateTime, nullable=False),
    # "anomaly" | "notification" | "data_transfer" | "security" | "connection"
    Column("category", String(20), nullable=False),
    Column("type", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("payload", JSON, nullable=False, default=dict),
    Index("ix_events_cp_ts", "charge_point_id", "timestamp"),
)
