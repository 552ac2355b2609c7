"""Alert rules stay current on every engine sharing a database and a bus: notices after a
change (coalesced), our own notices ignored, a periodic reload as the backstop; on SQLite and
PostgreSQL, through the real group-commit writer and the in-process bus. Across real nodes on
Redis (and a Redis outage): tests/cluster/test_cluster_alert_rules.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete

from chargegrid.bus import channels
from chargegrid.bus.memory import MemoryBus
from chargegrid.clock import SystemClock
from chargegrid.metering.alert_rules import RuleSpec, sync_rules_file
from chargegrid.metering.alerts import AlertEngine
from chargegrid.store import alerts as alert_store
from chargegrid.store.database import create_engine
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.migrate import upgrade
from chargegrid.store.tables import alert_rules

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def names(engine: AlertEngine) -> set[str]:
    return {rule.name for rule in engine.rules}


class Nodes:
    """Alert engines as several nodes would have them: one database, one bus."""

    def __init__(self, database: Any, writer: GroupCommitter, bus: MemoryBus) -> None:
        self.database = database
        self.writer = writer
        self.bus = bus
        self.started: list[AlertEngine] = []

    async def engine(self, **options: Any) -> AlertEngine:
        engine = AlertEngine(self.database, self.writer, self.bus, SystemClock(), **options)
        await engine.start()
        self.started.append(engine)
        return engine

    async def add_rule(self, name: str) -> None:
        spec = RuleSpec(name=name, measurand="SoC", comparison="below", threshold=10)
        await self.writer.run(
            lambda c: alert_store.add_rule(c, spec.model_dump(), source="api", now=NOW)
        )


@pytest.fixture
async def nodes(database_url: str) -> AsyncIterator[Nodes]:
    database = create_engine(database_url)
    await upgrade(database)
    async with database.begin() as connection:
        await connection.execute(delete(alert_rules))  # only this test's rules
    writer = GroupCommitter(database, interval=0.001)
    await writer.start()
    bus = MemoryBus()
    await bus.start()
    made = Nodes(database, writer, bus)
    try:
        yield made
    finally:
        for engine in made.started:
            await engine.stop()
        await writer.stop()
        await bus.stop()
        await database.dispose()


async def test_a_change_reloads_the_other_engines_and_a_burst_is_coalesced(nodes: Nodes) -> None:
    a = await nodes.engine()
    b = await nodes.engine()
    await nodes.add_rule("soc-low")
    assert names(b) == set()
    await a.rules_changed()
    assert names(a) == {"soc-low"}  # the node that made the change: at once
    await eventually(lambda: names(b) == {"soc-low"})

    # A burst of notices (several nodes syncing a rules file, a script hammering the API):
    # one reload, or two if the burst straddles one, not one per notice.
    await asyncio.sleep(0.2)
    before = b.reloads
    await nodes.add_rule("soc-very-low")
    for n in range(50):
        await nodes.bus.publish(channels.INTERNAL_ALERT_RULES, {"origin": f"node-{n}"})
    await eventually(lambda: names(b) == {"soc-low", "soc-very-low"})
    await asyncio.sleep(0.3)
    assert 1 <= b.reloads - before <= 2


async def test_an_engine_ignores_its_own_notices(nodes: Nodes) -> None:
    a = await nodes.engine()
    listener = await nodes.bus.subscribe([channels.INTERNAL_ALERT_RULES])
    before = a.reloads
    await a.rules_changed()
    _, notice = await asyncio.wait_for(anext(aiter(listener)), 2)
    assert set(notice) == {"origin"}  # small: the rules themselves are read from the database
    await asyncio.sleep(0.3)
    assert a.reloads == before + 1  # the direct reload only
    await listener.close()


async def test_a_rules_file_synced_at_start_reloads_the_running_engines(
    nodes: Nodes, tmp_path: Path
) -> None:
    running = await nodes.engine()
    rules_file = tmp_path / "alerts.toml"
    rules_file.write_text(
        '[[rules]]\nname = "hot"\nmeasurand = "temperature"\ncomparison = "above"\nthreshold = 60\n'
    )
    starting = await nodes.engine(rules_file=rules_file)
    assert names(starting) == {"hot"}
    await eventually(lambda: names(running) == {"hot"})


async def test_without_a_notice_the_periodic_reload_picks_a_change_up(
    nodes: Nodes, tmp_path: Path
) -> None:
    """``chargegrid alerts import`` runs in another process, without a bus: the backstop."""
    engine = await nodes.engine(reload_interval=0.5)
    rules_file = tmp_path / "alerts.toml"
    rules_file.write_text(
        '[[rules]]\nname = "cold"\nmeasurand = "temperature"\ncomparison = "below"\n'
        "threshold = -20\n"
    )
    await nodes.writer.run(lambda c: sync_rules_file(c, rules_file, NOW))
    await eventually(lambda: names(engine) == {"cold"}, within=3)
