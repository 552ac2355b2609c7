"""Alert rules: raise, hysteresis, resolve, cool-down, scope, restart; on SQLite and PostgreSQL.

The engine is driven with committed-row tuples and a clock the test moves; storage goes through
the real group-commit writer into the real database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select

from chargegrid import admin
from chargegrid.bus import channels
from chargegrid.bus.memory import MemoryBus
from chargegrid.metering.alerts import AlertEngine, RuleSpec
from chargegrid.store import alerts as alert_store
from chargegrid.store.database import create_engine
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.migrate import upgrade
from chargegrid.store.tables import alert_rules, alerts

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> datetime:
        return self.at


@dataclass
class Rig:
    engine: Any
    writer: GroupCommitter
    bus: MemoryBus
    clock: FakeClock
    alerts: AlertEngine
    cp: int
    other: int

    def power(self, watts: float, *, cp: int | None = None, phase: str | None = None) -> None:
        at = self.clock.now()
        row = (cp or self.cp, 1, 7, at, "Power.Active.Import", phase, "Outlet", "W", watts)
        self.alerts.observe([row])

    async def stored(self) -> list[dict[str, Any]]:
        await self.alerts.drain()
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(alerts).order_by(alerts.c.id))
            return [dict(r) for r in rows.mappings()]


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    engine = create_engine(database_url)
    await upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(delete(alert_rules))  # only this test's rules
        cp = await admin.add_charge_point(connection, "ALERT1", now=T0, hash_iterations=1000)
        other = await admin.add_charge_point(connection, "ALERT2", now=T0, hash_iterations=1000)
        spec = RuleSpec(
            name="p",
            measurand="power",
            comparison="above",
            threshold=50_000,
            hysteresis=1_000,
            cooldown_seconds=60,
            severity="critical",
            charge_points=["ALERT1"],
        )
        await alert_store.add_rule(connection, spec.model_dump(), source="api", now=T0)
    writer = GroupCommitter(engine, interval=0.001)
    await writer.start()
    bus = MemoryBus()
    await bus.start()
    clock = FakeClock()
    engine_ = AlertEngine(engine, writer, bus, clock)
    await engine_.start()
    try:
        yield Rig(engine, writer, bus, clock, engine_, cp, other)
    finally:
        await engine_.stop()
        await writer.stop()
        await bus.stop()
        await engine.dispose()


async def test_raise_hysteresis_resolve_and_cooldown(rig: Rig) -> None:
    subscription = await rig.bus.subscribe([channels.fleet(channels.ALERTS)])
    rig.power(49_000)
    assert await rig.stored() == []
    rig.power(50_500)  # above 50 kW: raised
    rig.power(60_000)  # still above: no second alert
    rig.power(49_500)  # below the threshold but inside the hysteresis band: still open
    [alert] = await rig.stored()
    assert alert["value"] == 50_500 and alert["resolved_at"] is None
    assert alert["severity"] == "critical" and alert["rule_name"] == "p"
    rig.clock.at += timedelta(seconds=10)
    rig.power(48_999)  # at least 1 kW below: resolved
    [alert] = await rig.stored()
    assert alert["resolved_at"] == rig.clock.at and alert["resolved_value"] == 48_999
    rig.clock.at += timedelta(seconds=30)
    rig.power(70_000)  # within the 60 s cool-down: no new alert
    assert len(await rig.stored()) == 1
    rig.clock.at += timedelta(seconds=31)
    rig.power(70_000)  # cool-down over: a new alert
    stored = await rig.stored()
    assert len(stored) == 2 and stored[1]["resolved_at"] is None
    # The bus saw raised, resolved, raised, with the reference-style payload.
    events = []
    async for _channel, message in subscription:
        events.append(message)
        if len(events) == 3:
            break
    assert [e["state"] for e in events] == ["raised", "resolved", "raised"]
    assert events[0]["charge_point"] == "ALERT1" and events[0]["rule"]["name"] == "p"
    assert events[0]["value"] == 50_500 and events[0]["unit"] == "W"
    await subscription.close()


async def test_scope_phase_and_restart(rig: Rig) -> None:
    rig.power(90_000, cp=rig.other)  # not in scope
    assert await rig.stored() == []
    rig.power(90_000, phase="L1")
    rig.power(90_000, phase="L2")  # per phase: two alerts
    assert len(await rig.stored()) == 2
    # A restarted engine picks the open alerts up and resolves them.
    await rig.alerts.stop()
    rig.alerts = AlertEngine(rig.engine, rig.writer, rig.bus, rig.clock)
    await rig.alerts.start()
    rig.power(1_000, phase="L1")
    stored = await rig.stored()
    assert [a["resolved_at"] is not None for a in stored] == [True, False]


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        RuleSpec(name="x", measurand="Voltage", comparison="outside", low=253, high=207)
    with pytest.raises(ValueError):
        RuleSpec(name="x", measurand="Voltage", comparison="above")
    spec = RuleSpec(name="x", measurand="temperature", comparison="outside", low=-10, high=70)
    assert spec.measurand == "Temperature"
