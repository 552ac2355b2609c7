"""Alert rules: raise, hysteresis, resolve, cool-down, scope, phases and totals, restart; on
SQLite and PostgreSQL.

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
from chargegrid.metering.alert_rules import RuleSpec
from chargegrid.metering.alerts import AlertEngine
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
        self.sample({phase: watts}, cp=cp)

    def sample(
        self,
        values: dict[str | None, float],
        *,
        cp: int | None = None,
        measurand: str = "Power.Active.Import",
        unit: str = "W",
    ) -> None:
        """One sampled meterValue (one batch): ``{phase: value}``, None for no phase."""
        at = self.clock.now()
        self.alerts.observe(
            [
                (cp or self.cp, 1, 7, at, measurand, phase, "Outlet", unit, value)
                for phase, value in values.items()
            ]
        )

    async def add_rule(self, **spec: Any) -> int:
        async with self.engine.begin() as connection:
            rule_id = await alert_store.add_rule(
                connection, RuleSpec(**spec).model_dump(), source="api", now=T0
            )
        await self.alerts.reload()
        return rule_id

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
    # Currents do not add up across phases: a rule without a phase checks each one.
    await rig.add_rule(name="i", measurand="current", comparison="above", threshold=80)
    rig.sample({"L1": 90, "L2": 90, "L3": 10}, measurand="Current.Import", unit="A")
    stored = await rig.stored()
    assert [(a["rule_name"], a["phase"]) for a in stored] == [("i", "L1"), ("i", "L2")]
    # A restarted engine picks the open alerts up and resolves them.
    await rig.alerts.stop()
    rig.alerts = AlertEngine(rig.engine, rig.writer, rig.bus, rig.clock)
    await rig.alerts.start()
    rig.sample({"L1": 10}, measurand="Current.Import", unit="A")
    stored = await rig.stored()
    assert [a["resolved_at"] is not None for a in stored] == [True, False]


async def test_per_phase_power_is_summed_into_the_total(rig: Rig) -> None:
    """A charge point that reports power only per phase: the 50 kW rule (no phase) checks the
    sum of the phases of each sampled meterValue."""
    rig.sample({"L1": 20_000, "L2": 20_000, "L3": 15_000})  # 55 kW in total, no phase above 50
    [alert] = await rig.stored()
    assert alert["phase"] is None and alert["value"] == 55_000
    assert alert["message"] == "Power.Active.Import L1+L2+L3 55000 W above 50000 (p)"
    rig.sample({"L1": 17_000, "L2": 17_000, "L3": 15_500})  # 49.5 kW: inside the hysteresis
    assert (await rig.stored())[0]["resolved_at"] is None
    rig.clock.at += timedelta(seconds=5)
    rig.sample({"L1-N": 16_000, "L2-N": 16_000, "L3-N": 16_000})  # 48 kW: resolved
    [alert] = await rig.stored()
    assert alert["resolved_at"] == rig.clock.at and alert["resolved_value"] == 48_000
    rig.clock.at += timedelta(seconds=61)  # past the cool-down
    # A reported total is the total, whatever the phases say (here they would sum to 60 kW).
    rig.sample({None: 40_000, "L1": 20_000, "L2": 20_000, "L3": 20_000})
    # One line reported twice (L1 and L1-N) counts once; N and line-to-line values never.
    rig.sample({"L1": 30_000, "L1-N": 30_000, "N": 30_000, "L1-L2": 30_000})
    # Values in different units are not added up (a unit chargegrid does not convert).
    at = rig.clock.now()
    rig.alerts.observe(
        [
            (rig.cp, 1, 7, at, "Power.Active.Import", "L1", "Outlet", "W", 30_000),
            (rig.cp, 1, 7, at, "Power.Active.Import", "L2", "Outlet", "hp", 30_000),
        ]
    )
    # Values of one charge point at one instant, in separate meterValues, are not added up
    # across batches (each is a complete sample).
    rig.power(30_000, phase="L1")
    rig.power(30_000, phase="L2")
    assert len(await rig.stored()) == 1


async def test_a_phase_rule_on_power_still_checks_that_phase(rig: Rig) -> None:
    await rig.add_rule(
        name="l1", measurand="power", phase="L1", comparison="above", threshold=20_000
    )
    rig.sample({"L1": 25_000, "L2": 5_000, "L3": 5_000})  # L1 over 20 kW; the total is 35 kW
    [alert] = await rig.stored()
    assert (alert["rule_name"], alert["phase"], alert["value"]) == ("l1", "L1", 25_000)
    assert alert["message"] == "Power.Active.Import L1 25000 W above 20000 (l1)"


async def test_a_per_phase_alert_of_a_total_rule_can_still_resolve(rig: Rig) -> None:
    """Alerts raised per phase by the 50 kW rule before totals were checked resolve when that
    phase is back in range, and no new per-phase alert is raised."""
    async with rig.engine.begin() as connection:
        rule_id = await connection.scalar(select(alert_rules.c.id).where(alert_rules.c.name == "p"))
        await alert_store.add_alert(
            connection,
            {
                "rule_id": rule_id,
                "rule_name": "p",
                "charge_point_id": rig.cp,
                "connector_id": 1,
                "measurand": "Power.Active.Import",
                "phase": "L1",
                "severity": "critical",
                "value": 55_000.0,
                "unit": "W",
                "value_at": T0,
                "message": "old",
                "raised_at": T0,
            },
        )
    await rig.alerts.stop()
    rig.alerts = AlertEngine(rig.engine, rig.writer, rig.bus, rig.clock)
    await rig.alerts.start()
    rig.sample({"L1": 52_000, "L2": 0, "L3": 0})  # the total (52 kW) raises; L1 stays open
    rig.sample({"L1": 1_000, "L2": 0, "L3": 0})  # L1 back in range: the old alert resolves
    stored = await rig.stored()
    assert [(a["phase"], a["resolved_value"]) for a in stored] == [("L1", 1_000), (None, 1_000)]


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        RuleSpec(name="x", measurand="Voltage", comparison="outside", low=253, high=207)
    with pytest.raises(ValueError):
        RuleSpec(name="x", measurand="Voltage", comparison="above")
    spec = RuleSpec(name="x", measurand="temperature", comparison="outside", low=-10, high=70)
    assert spec.measurand == "Temperature"
