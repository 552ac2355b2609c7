"""The relational schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it.

Core rather than ORM: the hot path inserts plain dicts in batches, and the API reads rows into
response models, so identity maps and unit-of-work tracking would be pure overhead.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
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
    # What the charge point last told about requests it was sent (tracked for the API).
    Column("local_list_version", Integer),
    Column("firmware_status", String(32)),
    Column("firmware_status_at", UTCDateTime),
    Column("diagnostics_status", String(32)),
    Column("diagnostics_status_at", UTCDateTime),
    # OCPP message trace for debugging one charger: "off" | "errors" | "all"; NULL = node default.
    Column("trace_level", String(8)),
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
    # PostgreSQL only; SQLite has meter_value_transaction_keys instead (migration 0009).
    Index("ix_meter_values_transaction", "transaction_id", "timestamp"),
)

# DESIGN.md guarantee 2: a replayed sample is stored once; inserts use ON CONFLICT DO NOTHING.
# transaction_id and phase are nullable, and NULLs never collide in a unique index, hence coalesce.
# On PostgreSQL it leads with (charge point, timestamp) (declared here); on SQLite with
# (timestamp, charge point) since migration 0008, see meter_value_keys.
# It leads with (charge point, timestamp) so that it also serves a charge point's range queries
# (one B-tree keyed by charge point per value, not two: migration 0006), and so that a message's
# values sit side by side on the charge point's one tail page: each commit writes one page per
# charge point in the batch, not one per series (migration 0007).
Index(
    "uq_meter_values_sample",
    meter_values.c.charge_point_id,
    meter_values.c.timestamp,
    meter_values.c.measurand,
    meter_values.c.connector_id,
    func.coalesce(meter_values.c.transaction_id, 0),
    func.coalesce(meter_values.c.phase, ""),
    meter_values.c.location,
    # A Raw reading and its SignedData twin, or one reading in two contexts, are two samples.
    meter_values.c.format,
    meter_values.c.context,
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


# --- Operators: users, tokens, groups of charge points (issue 3) ------------------------------

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255)),  # argon2id; NULL: token-only user
    Column("role", String(16), nullable=False),  # admin | operator | viewer
    # True: sees every charge point; False: only those in its groups.
    Column("all_charge_points", Boolean, nullable=False, server_default="1"),
    Column("disabled", Boolean, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    # Tokens are 32 random bytes, so SHA-256 of the token is safe to store and fast to look up.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("last_used_at", UTCDateTime),
)

groups = Table(
    "groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

group_charge_points = Table(
    "group_charge_points",
    metadata,
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

user_groups = Table(
    "user_groups",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", Integer, ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)

# --- CSMS-initiated operations and their effects (issue 3) ------------------------------------

operations = Table(
    "operations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("action", String(40), nullable=False),
    # pending -> sent -> accepted | rejected | error | timeout; not_connected if never sent
    Column("status", String(16), nullable=False),
    Column("request", JSON, nullable=False),
    Column("response", JSON),
    Column("error_code", String(40)),
    Column("error_description", Text),
    Column("requested_by", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Index("ix_operations_cp_created", "charge_point_id", "created_at"),
)

configuration = Table(
    "configuration",
    metadata,
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", String(50), primary_key=True),
    Column("value", String(500)),
    Column("readonly", Boolean),
    Column("updated_at", UTCDateTime, nullable=False),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", Integer, primary_key=True),  # the OCPP reservationId
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("connector_id", Integer, nullable=False),
    Column("id_tag", String(20), nullable=False),
    Column("parent_id_tag", String(20)),
    Column("expiry_date", UTCDateTime, nullable=False),
    # requested | Accepted | Faulted | Occupied | Rejected | Unavailable | cancelled
    Column("status", String(16), nullable=False),
    Column("operation_id", Integer, ForeignKey("operations.id", ondelete="SET NULL")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

charging_profiles = Table(
    "charging_profiles",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("connector_id", Integer, nullable=False),
    Column("charging_profile_id", Integer, nullable=False),  # the OCPP chargingProfileId
    Column("stack_level", Integer, nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("profile", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # installed | cleared
    Column("operation_id", Integer, ForeignKey("operations.id", ondelete="SET NULL")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("charge_point_id", "charging_profile_id"),
)

message_trace = Table(
    "message_trace",
    metadata,
    Column("id", BigIntId, primary_key=True),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("direction", String(3), nullable=False),  # "in" (from the CP) | "out"
    Column("frame", Text, nullable=False),
    Index("ix_message_trace_cp_ts", "charge_point_id", "timestamp"),
)

# --- Meter-value pipeline: rollups, alert rules, alerts (issue 4) -----------------------------

# Hourly and daily rollups per charge point, connector, measurand, phase and location, kept
# incrementally in the same transaction as the raw insert (metering/rollups.py). ``phase`` is ""
# when the sampled value names none (NULLs never collide in a primary key). The primary key leads
# with what a chart asks for: one charge point, one measurand, one resolution, a range of buckets.
meter_rollups = Table(
    "meter_rollups",
    metadata,
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("measurand", String(40), primary_key=True),
    Column("resolution", String(4), primary_key=True),  # "hour" | "day"
    Column("bucket", UTCDateTime, primary_key=True),  # start of the hour or UTC day
    Column("connector_id", Integer, primary_key=True),
    Column("phase", String(8), primary_key=True),
    Column("location", String(8), primary_key=True),
    Column("unit", String(12), nullable=False),
    Column("count", Integer, nullable=False),
    Column("sum", Float, nullable=False),  # avg = sum / count
    Column("min", Float),
    Column("max", Float),
    # first/last by (timestamp, value): a total order, so out-of-order arrivals merge exactly.
    Column("first_at", UTCDateTime),
    Column("first_value", Float),
    Column("last_at", UTCDateTime),
    Column("last_value", Float),
    # Registers (*.Register) only: the reset-aware increase attributed to this bucket, i.e. for
    # each reading in it the step from the series' previous reading (CONFORMANCE M8).
    Column("energy", Float),
    Index("ix_meter_rollups_resolution_bucket", "resolution", "bucket"),
)

# SQLite only (metering/rollups.py, "Deferred merging"): every meter value with an id up to
# ``raw_id`` is counted in meter_rollups; later ones are still in the writer's memory and are
# recounted from raw after a crash. Every one up to ``keyed_id`` is in meter_value_keys and, if
# it has a transaction id, meter_value_transaction_keys (migration 0010, store/value_keys.py).
# While a merge round is under way (migration 0011, store/rollups.Counted), also those up to
# ``merge_round_up_to`` of the charge points whose id modulo ``merge_round_slices`` is below
# ``merge_round_done``. One row.
rollup_watermark = Table(
    "rollup_watermark",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("raw_id", BigInteger, nullable=False),
    Column("keyed_id", BigInteger, nullable=False, server_default="0"),
    Column("merge_round_up_to", BigInteger),
    Column("merge_round_slices", Integer, nullable=False, server_default="0"),
    Column("merge_round_done", Integer, nullable=False, server_default="0"),
    CheckConstraint("id = 1", name="ck_rollup_watermark_one_row"),
)

# SQLite only (migration 0008): which meter values belong to which charge point, for values up
# to the rollup watermark. On SQLite the unique sample index leads with the timestamp, so a
# commit appends to one tail of it instead of writing one index page per charge point; this
# table is filled in bulk, sorted, when the watermark advances (about once a second), so each
# charge point's page is written once a second rather than once per commit. Reads by charge
# point (store/value_keys.py) take these keys plus the few values above the
# watermark. PostgreSQL has no such table: its sample index still leads with the charge point.
meter_value_keys = Table(
    "meter_value_keys",
    metadata,
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("timestamp", UTCDateTime, primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# SQLite only (migration 0009): the same for sessions. ix_meter_values_transaction had a tail
# page per open session, i.e. per charging charge point, written at every commit; these keys
# are written with meter_value_keys, once a second. The charge point is carried only so that
# deleting one deletes its keys (the values' transaction ids have no foreign key).
meter_value_transaction_keys = Table(
    "meter_value_transaction_keys",
    metadata,
    Column("transaction_id", Integer, primary_key=True, autoincrement=False),
    Column("timestamp", UTCDateTime, primary_key=True),
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sqlite_with_rowid=False,
)

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("measurand", String(40), nullable=False),
    Column("phase", String(8)),  # NULL: any phase
    Column("comparison", String(8), nullable=False),  # "above" | "below" | "outside"
    Column("threshold", Float),  # above / below
    Column("low", Float),  # outside: the range [low, high] is normal
    Column("high", Float),
    Column("hysteresis", Float, nullable=False, server_default="0"),
    Column("cooldown_seconds", Float, nullable=False, server_default="0"),
    Column("severity", String(10), nullable=False, server_default="warning"),
    Column("charge_points", JSON),  # NULL: every charge point; else a list of identities
    Column("enabled", Boolean, nullable=False, server_default="1"),
    Column("source", String(8), nullable=False, server_default="api"),  # api | file | default
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigIntId, primary_key=True),
    Column("rule_id", Integer, ForeignKey("alert_rules.id", ondelete="SET NULL")),
    Column("rule_name", String(64), nullable=False),  # kept if the rule is deleted
    Column(
        "charge_point_id",
        Integer,
        ForeignKey("charge_points.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("connector_id", Integer, nullable=False),
    Column("transaction_id", Integer),
    Column("measurand", String(40), nullable=False),
    Column("phase", String(8)),
    Column("severity", String(10), nullable=False),
    Column("value", Float, nullable=False),  # the value that raised it
    Column("unit", String(12), nullable=False),
    Column("value_at", UTCDateTime, nullable=False),  # the sampled value's timestamp
    Column("message", Text, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime),
    Column("resolved_value", Float),
    Column("acknowledged_at", UTCDateTime),
    Column("acknowledged_by", String(64)),
    Index("ix_alerts_cp_raised", "charge_point_id", "raised_at"),
    Index("ix_alerts_resolved", "resolved_at"),
)

# Retention (metering/retention.py) deletes raw values by age in small batches. PostgreSQL
# only since migration 0008: on SQLite the sample index leads with the timestamp and serves.
Index("ix_meter_values_timestamp", meter_values.c.timestamp)
