"""The handshake's reads of the charge point row (gateway/admission.py), on SQLite and PostgreSQL.

Concurrent handshakes are read together (a connection storm), each still gets its own answer, a
database error fails only the handshakes waiting on that read, and one that gave up (timed out)
does not disturb the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid import admin
from chargegrid.clock import SystemClock
from chargegrid.config import Settings
from chargegrid.gateway.admission import Admission, Admitted, Handshake, Refused
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url, sqlite_synchronous="NORMAL")
    await upgrade(engine)
    async with writing(engine).begin() as connection:
        for n in range(40):
            await admin.add_charge_point(connection, f"CP{n:03d}", now=NOW)
        await admin.add_charge_point(connection, "PENDING", now=NOW, registration_status="Pending")
        await cp_store.update_fields(connection, "CP007", now=NOW, trace_level="all")
    yield engine
    await engine.dispose()


def handshake(identity: str) -> Handshake:
    return Handshake(identity=identity, subprotocols=["ocpp1.6"], authorization=None, tls=False)


def count_charge_point_reads(engine: AsyncEngine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def note(_c: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "charge_points" in statement:
            seen.append(statement)

    return seen


async def test_concurrent_handshakes_are_read_together(
    engine: AsyncEngine, settings: Settings
) -> None:
    admission = Admission(engine, settings, SystemClock())
    reads = count_charge_point_reads(engine)
    identities = [f"CP{n:03d}" for n in range(40)] + ["PENDING", "UNKNOWN", "CP001"]
    decisions = await asyncio.gather(*(admission.admit(handshake(i)) for i in identities))

    assert len(reads) <= 2  # the first handshake's read, then everyone who came meanwhile
    by_identity = dict(zip(identities, decisions, strict=True))
    for identity in [f"CP{n:03d}" for n in range(40)]:
        decision = by_identity[identity]
        assert isinstance(decision, Admitted) and decision.identity == identity
        assert decision.registration_status == "Accepted"
    assert isinstance(by_identity["CP007"], Admitted) and by_identity["CP007"].trace_level == "all"
    assert isinstance(by_identity["CP001"], Admitted) and by_identity["CP001"].trace_level is None
    pending = by_identity["PENDING"]
    assert isinstance(pending, Admitted) and pending.registration_status == "Pending"
    assert by_identity["UNKNOWN"] == Refused(404, "unknown charge point")
    ids = {d.charge_point_id for d in decisions if isinstance(d, Admitted)}
    assert len(ids) == 41  # every charge point got its own row (CP001 twice)

    # A handshake on its own is read at once.
    reads.clear()
    assert isinstance(await admission.admit(handshake("CP002")), Admitted)
    assert len(reads) == 1


async def test_a_failed_read_fails_its_handshakes_and_the_next_read_works(
    engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    admission = Admission(engine, settings, SystemClock())
    real = cp_store.get_auth_many
    failures = [OSError("database unreachable (injected)")]

    async def failing_once(connection: Any, identities: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(connection, identities)

    monkeypatch.setattr(cp_store, "get_auth_many", failing_once)
    results = await asyncio.gather(
        *(admission.admit(handshake(f"CP{n:03d}")) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, OSError) for r in results)  # the gateway answers these with 503
    decisions = await asyncio.gather(*(admission.admit(handshake(f"CP{n:03d}")) for n in range(5)))
    assert all(isinstance(d, Admitted) for d in decisions)


async def test_a_handshake_that_gave_up_does_not_disturb_the_others(
    engine: AsyncEngine, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    admission = Admission(engine, settings, SystemClock())
    real = cp_store.get_auth_many
    release = asyncio.Event()

    async def slow(connection: Any, identities: Any) -> Any:
        await release.wait()  # stands in for a slow database
        return await real(connection, identities)

    monkeypatch.setattr(cp_store, "get_auth_many", slow)
    gave_up = asyncio.create_task(admission.admit(handshake("CP001")))
    stays = asyncio.create_task(admission.admit(handshake("CP002")))
    await asyncio.sleep(0.05)
    gave_up.cancel()  # the gateway's handshake_timeout
    release.set()
    decision = await asyncio.wait_for(stays, 5)
    assert isinstance(decision, Admitted) and decision.identity == "CP002"
    with pytest.raises(asyncio.CancelledError):
        await gave_up
