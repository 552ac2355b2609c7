"""Charge point rows: provisioning, lookup, boot data, connection state."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import CTE, ColumnClause, Integer, column, delete, insert, select, update, values
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.store.records import ChargePoint
from chargegrid.store.tables import charge_points
from chargegrid.store.types import UTCDateTime, sqlite_text

# BootNotification field -> column (OCPP 1.6 §6.2, CONFORMANCE L6)
BOOT_FIELDS = {
    "chargePointVendor": "vendor",
    "chargePointModel": "model",
    "chargePointSerialNumber": "serial_number",
    "chargeBoxSerialNumber": "charge_box_serial_number",
    "firmwareVersion": "firmware_version",
    "iccid": "iccid",
    "imsi": "imsi",
    "meterType": "meter_type",
    "meterSerialNumber": "meter_serial_number",
}


class ChargePointExists(Exception):
    pass


async def get(connection: AsyncConnection, identity: str) -> ChargePoint | None:
    row = (
        (
            await connection.execute(
                select(charge_points).where(charge_points.c.identity == identity)
            )
        )
        .mappings()
        .first()
    )
    return ChargePoint.from_row(row) if row else None


class AuthRecord(NamedTuple):
    """What the handshake needs of a charge point: the one read per connection."""

    id: int
    security_profile: int
    registration_status: str
    auth_key_hash: str | None
    trace_level: str | None  # observability/trace.py (None: the node's default)


_AUTH_COLUMNS = (
    charge_points.c.id,
    charge_points.c.security_profile,
    charge_points.c.registration_status,
    charge_points.c.auth_key_hash,
    charge_points.c.trace_level,
)


async def get_auth(connection: AsyncConnection, identity: str) -> AuthRecord | None:
    """The charge point's :class:`AuthRecord` for the handshake, or None."""
    row = (
        await connection.execute(select(*_AUTH_COLUMNS).where(charge_points.c.identity == identity))
    ).first()
    return AuthRecord(row[0], row[1], row[2], row[3], row[4]) if row else None


async def get_auth_many(
    connection: AsyncConnection, identities: Collection[str]
) -> dict[str, AuthRecord]:
    """:func:`get_auth` for many charge points in one query per chunk: the handshakes of a
    connection storm (gateway/admission.py)."""
    found: dict[str, AuthRecord] = {}
    wanted = list(identities)
    for start in range(0, len(wanted), _AUTH_CHUNK):
        chunk = wanted[start : start + _AUTH_CHUNK]
        rows = await connection.execute(
            select(charge_points.c.identity, *_AUTH_COLUMNS).where(
                charge_points.c.identity.in_(chunk)
            )
        )
        for row in rows:
            found[row[0]] = AuthRecord(row[1], row[2], row[3], row[4], row[5])
    return found


# Identities per query of get_auth_many: far below SQLite's 32,766 parameters and PostgreSQL's
# 32,767.
_AUTH_CHUNK = 500


async def add(
    connection: AsyncConnection,
    identity: str,
    *,
    now: datetime,
    auth_key_hash: str | None = None,
    security_profile: int = 0,
    registration_status: str = "Accepted",
    metadata: dict[str, Any] | None = None,
) -> int:
    if await get_auth(connection, identity) is not None:
        raise ChargePointExists(identity)
    result = await connection.execute(
        insert(charge_points)
        .values(
            identity=identity,
            auth_key_hash=auth_key_hash,
            security_profile=security_profile,
            registration_status=registration_status,
            connected=False,
            metadata=metadata or {},
            created_at=now,
            updated_at=now,
        )
        .returning(charge_points.c.id)
    )
    return int(result.scalar_one())


async def update_fields(
    connection: AsyncConnection, identity: str, *, now: datetime, **values: Any
) -> bool:
    result = await connection.execute(
        update(charge_points)
        .where(charge_points.c.identity == identity)
        .values(updated_at=now, **values)
    )
    return result.rowcount > 0


async def remove(connection: AsyncConnection, identity: str) -> bool:
    result = await connection.execute(
        delete(charge_points).where(charge_points.c.identity == identity)
    )
    return result.rowcount > 0


async def list_all(connection: AsyncConnection) -> list[ChargePoint]:
    rows = (
        await connection.execute(select(charge_points).order_by(charge_points.c.identity))
    ).mappings()
    return [ChargePoint.from_row(row) for row in rows]


async def record_boot(
    connection: AsyncConnection, charge_point_id: int, request: dict[str, Any], now: datetime
) -> None:
    values: dict[str, Any] = {column: request.get(field) for field, column in BOOT_FIELDS.items()}
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.id == charge_point_id)
        .values(last_boot_at=now, last_seen_at=now, updated_at=now, **values)
    )


async def set_connected(
    connection: AsyncConnection, charge_point_id: int, connected: bool, now: datetime
) -> None:
    stamp = {"connected_at": now} if connected else {"disconnected_at": now}
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.id == charge_point_id)
        .values(connected=connected, updated_at=now, **stamp)
    )


# The same writes as plain SQLite statements (store/group_commit.GroupCommitter.execute): a
# batch of nothing but these commits in one trip to the writer's thread, where units cost
# several each. 5,000 charge points connecting at once wrote their connection state and boot
# data through units at ~0.5 ms of CPU each (docs/benchmarks.md, connection storm).
# Timestamps in SQLAlchemy's storage format, booleans as 1/0, as the ORM path writes them.
Statements = list[tuple[str, tuple[Any, ...]]]

_BOOT_SQL = (
    "UPDATE charge_points SET last_boot_at = ?, last_seen_at = ?, updated_at = ?, "
    + ", ".join(f"{column} = ?" for column in BOOT_FIELDS.values())
    + " WHERE id = ?"
)


def boot_statements(
    charge_point_id: int, request: dict[str, Any], now: datetime, decided: str | None
) -> Statements:
    """:func:`record_boot`, the application's decision if it took one, then a read of the
    registration status (the last statement's row)."""
    at = sqlite_text(now)
    fields = tuple(request.get(field) for field in BOOT_FIELDS)
    statements: Statements = [(_BOOT_SQL, (at, at, at, *fields, charge_point_id))]
    if decided is not None:
        statements.append(
            (
                "UPDATE charge_points SET registration_status = ? WHERE id = ?",
                (decided, charge_point_id),
            )
        )
    statements.append(
        ("SELECT registration_status FROM charge_points WHERE id = ?", (charge_point_id,))
    )
    return statements


def connected_statements(charge_point_id: int, connected: bool, now: datetime) -> Statements:
    """:func:`set_connected`."""
    stamp = "connected_at" if connected else "disconnected_at"
    at = sqlite_text(now)
    return [
        (
            f"UPDATE charge_points SET connected = ?, updated_at = ?, {stamp} = ? WHERE id = ?",
            (int(connected), at, at, charge_point_id),
        )
    ]


async def mark_all_disconnected(connection: AsyncConnection, now: datetime) -> None:
    """At start-up of a single node nothing can be connected yet."""
    await connection.execute(
        update(charge_points)
        .where(charge_points.c.connected.is_(True))
        .values(connected=False, disconnected_at=now, updated_at=now)
    )


async def touch(
    connection: AsyncConnection,
    seen: dict[int, datetime],
    heartbeats: dict[int, datetime],
) -> None:
    """Coalesced liveness (CONFORMANCE L4): one UPDATE per flush, not one per message.

    One statement per chunk of charge points (``UPDATE .. FROM (VALUES ..)``), not an
    executemany: the sqlite3 module steps an executemany once per row and hands the GIL over
    and back each time, and under load each handover waits for the busy event loop (a flush
    of 500 charge points took ~40 ms, every charge point's acknowledgement waiting with it)."""
    c = charge_points.c
    beats = [(cp_id, seen.get(cp_id, at), at) for cp_id, at in heartbeats.items()]
    others = [(cp_id, at) for cp_id, at in seen.items() if cp_id not in heartbeats]
    for start in range(0, len(beats), _TOUCH_CHUNK):
        rows = _touched(beats[start : start + _TOUCH_CHUNK], "seen", "beat")
        await connection.execute(
            update(charge_points)
            .where(c.id == rows.c.cp_id)
            .values(last_seen_at=rows.c.seen, last_heartbeat_at=rows.c.beat)
        )
    for start in range(0, len(others), _TOUCH_CHUNK):
        rows = _touched(others[start : start + _TOUCH_CHUNK], "seen")
        await connection.execute(
            update(charge_points).where(c.id == rows.c.cp_id).values(last_seen_at=rows.c.seen)
        )


def _touched(rows: list[tuple[Any, ...]], *times: str) -> CTE:
    """``rows`` (charge point id, then ``times``) as a VALUES list named by a CTE: SQLite
    names a VALUES list's columns only there."""
    columns: list[ColumnClause[Any]] = [column("cp_id", Integer)]
    columns += [column(name, UTCDateTime()) for name in times]
    return values(*columns, name="touched").data(rows).cte("touched")


def touch_statements(
    seen: dict[int, datetime], heartbeats: dict[int, datetime]
) -> list[tuple[str, tuple[Any, ...]]]:
    """:func:`touch` as plain SQLite statements (store/group_commit.GroupCommitter.execute):
    timestamps in SQLAlchemy's storage format, as the ORM path writes them."""
    beats = [(cp_id, seen.get(cp_id, at), at) for cp_id, at in heartbeats.items()]
    others = [(cp_id, at) for cp_id, at in seen.items() if cp_id not in heartbeats]
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for start in range(0, len(beats), _TOUCH_CHUNK):
        chunk = beats[start : start + _TOUCH_CHUNK]
        statements.append(
            (
                f"WITH touched (cp_id, seen, beat) AS (VALUES {_marks(len(chunk), 3)}) "
                "UPDATE charge_points SET last_seen_at = touched.seen, "
                "last_heartbeat_at = touched.beat FROM touched "
                "WHERE charge_points.id = touched.cp_id",
                tuple(
                    v
                    for cp_id, at, beat in chunk
                    for v in (cp_id, sqlite_text(at), sqlite_text(beat))
                ),
            )
        )
    for start in range(0, len(others), _TOUCH_CHUNK):
        pairs = others[start : start + _TOUCH_CHUNK]
        statements.append(
            (
                f"WITH touched (cp_id, seen) AS (VALUES {_marks(len(pairs), 2)}) "
                "UPDATE charge_points SET last_seen_at = touched.seen FROM touched "
                "WHERE charge_points.id = touched.cp_id",
                tuple(v for cp_id, at in pairs for v in (cp_id, sqlite_text(at))),
            )
        )
    return statements


def _marks(rows: int, columns: int) -> str:
    row = "(" + ", ".join("?" * columns) + ")"
    return ", ".join([row] * rows)


# Rows per statement of touch(): three parameters each, far below SQLite's 32,766 and
# PostgreSQL's 32,767.
_TOUCH_CHUNK = 5000
