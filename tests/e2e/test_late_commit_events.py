"""Live events of writes that commit after their CALL was answered with a CALLERROR.

When the database stalls past ``commit_wait_timeout`` the charge point is answered with a
CALLERROR and the write stays queued (DESIGN.md guarantee 1); when it commits after all, the
live event it carries is still published, once. A fleet check lost exactly these in session 12
(docs/benchmarks.md: a "session started" and a connector status never published).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from ocpp.exceptions import InternalError
from ocpp.v16 import call
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid.bus import channels
from chargegrid.config import Settings
from chargegrid.store.group_commit import StoreUnavailable
from support import RunningServer, charge_point, running_server


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with running_server(settings.model_copy(update={"commit_wait_timeout": 0.5})) as s:
        yield s


async def events(subscription: Any, count: int, within: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    async def collect() -> None:
        async for _channel, message in subscription:
            got.append(message)
            if len(got) == count:
                return

    await asyncio.wait_for(collect(), within)
    return got


async def test_status_and_session_events_of_late_commits_are_published_once(
    server: RunningServer,
) -> None:
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    bus = server.node.bus
    subscription = await bus.subscribe(
        [channels.fleet(channels.STATUS), channels.fleet(channels.SESSIONS)]
    )
    release = asyncio.Event()

    async def stalled(_connection: AsyncConnection) -> None:
        await release.wait()  # stands in for a database that stops answering

    async with charge_point(server, "CP1") as cp:
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        blocker = asyncio.create_task(server.node.writer.run(stalled))
        await asyncio.sleep(0.05)  # the writer is inside the stalled batch
        now = datetime.now(UTC).isoformat()
        with pytest.raises(InternalError):
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"),
                suppress=False,
            )
        with pytest.raises(InternalError):
            await cp.call(
                call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp=now),
                suppress=False,
            )
        release.set()
        with pytest.raises(StoreUnavailable):
            await blocker  # its own caller timed out as well
        got = await events(subscription, 2)
        statuses = [m for m in got if "status" in m and "event" not in m]
        sessions = [m for m in got if m.get("event") == "started"]
        assert [s["status"] for s in statuses] == ["Charging"]
        assert len(sessions) == 1
        tx_id = sessions[0]["session"]["id"]
        # The resend (OCPP: a transaction message is retried) is recognised: same id, no
        # second event.
        again = await cp.call(
            call.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp=now)
        )
        assert again.transaction_id == tx_id
        with pytest.raises(TimeoutError):
            await events(subscription, 1, within=0.5)
    await subscription.close()
