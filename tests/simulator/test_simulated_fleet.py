"""The simulator against the real server: what it says it did is what the database holds."""

from __future__ import annotations

import asyncio
from typing import Any

from chargegrid.simulator import Fleet, SimConfig, SimulatedChargePoint
from support import RunningServer

TAGS = tuple(f"SIMT{n:02d}" for n in range(1, 21))


async def _provision(server: RunningServer, count: int, prefix: str = "SIM") -> None:
    for n in range(1, count + 1):
        await server.add_charge_point(f"{prefix}{n:05d}")
    for tag in TAGS:
        await server.add_id_tag(tag)


def _config(server: RunningServer, **overrides: Any) -> SimConfig:
    # Time-lapse (120 simulated seconds per second) so a few real seconds hold whole sessions,
    # faults and outages.
    base: dict[str, Any] = {
        "url": server.ws_url.rstrip("/"),
        "id_tags": TAGS,
        "seed": 7,
        "speed": 120.0,
        "meter_interval": 10.0,
        "idle_mean": 30.0,
        "session_min": 60.0,
        "session_max": 400.0,
        "fault_rate": 6.0,
        "offline_rate": 30.0,
        "offline_mean": 60.0,
        "call_timeout": 10.0,
    }
    base.update(overrides)
    return SimConfig(**base)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (database state has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_fleet_summary_matches_database(server: RunningServer) -> None:
    await _provision(server, 5)
    fleet = Fleet(_config(server), 5)
    summary = await fleet.run(5.0)

    assert summary["errors"]["total"] == 0, summary["errors"]
    assert summary["undelivered"] == {}
    sessions = summary["sessions"]
    assert sessions["started"] > 0 and sessions["stopped"] > 0
    assert await server.scalar("SELECT count(*) FROM transactions") == sessions["started"]
    stopped = await server.scalar("SELECT count(*) FROM transactions WHERE stopped_at IS NOT NULL")
    assert stopped == sessions["stopped"]
    for record in sessions["stopped_list"]:
        energy = await server.scalar(
            "SELECT energy_wh FROM transactions WHERE id = :id", id=record["transaction_id"]
        )
        assert abs(energy - record["energy_wh"]) < 0.5, record
    assert summary["sampled_values_stored"] > 0
    assert (
        await server.scalar("SELECT count(*) FROM meter_values") == summary["sampled_values_stored"]
    )
    # Every charge point reported energy, and the fleet total is the sum of sessions' energy
    # plus what the sessions still open at the end delivered.
    assert set(summary["energy_wh"]) == {f"SIM{n:05d}" for n in range(1, 6)}
    assert summary["energy_total_wh"] >= sum(r["energy_wh"] for r in sessions["stopped_list"])


async def test_remote_start_starts_a_session(server: RunningServer) -> None:
    await _provision(server, 1, prefix="RS")
    # No sessions of its own (drivers never arrive), no faults, no outages.
    config = _config(
        server, id_prefix="RS", idle_mean=1e9, fault_rate=0.0, offline_rate=0.0, connectors=2
    )
    fleet = Fleet(config, 1)
    run = asyncio.create_task(fleet.run(30.0))
    cp: SimulatedChargePoint = fleet.charge_points[0]
    try:

        async def booted() -> bool:
            return cp.registered

        await _until(booted)
        operation = await server.node.commands.perform_now(
            "RS00001", "RemoteStartTransaction", {"connectorId": 2, "idTag": TAGS[0]}
        )
        assert operation.status == "accepted", operation

        async def started() -> bool:
            rows = await server.rows("SELECT connector_id, id_tag FROM transactions")
            return bool(rows)

        await _until(started)
        rows = await server.rows("SELECT connector_id, id_tag, stopped_at FROM transactions")
        assert [(r["connector_id"], r["id_tag"]) for r in rows] == [(2, TAGS[0])]
        transaction_id = await server.scalar("SELECT id FROM transactions")

        operation = await server.node.commands.perform_now(
            "RS00001", "RemoteStopTransaction", {"transactionId": transaction_id}
        )
        assert operation.status == "accepted", operation

        async def stopped() -> bool:
            reason = await server.scalar(
                "SELECT stop_reason FROM transactions WHERE id = :id", id=transaction_id
            )
            return reason == "Remote"

        await _until(stopped)
    finally:
        fleet.stop()
        summary = await run
    assert summary["messages"]["received"]["RemoteStartTransaction"] == 1
    assert summary["errors"]["total"] == 0, summary["errors"]


async def test_offline_replay_is_stored_once(server: RunningServer) -> None:
    await _provision(server, 1, prefix="OFF")
    config = _config(
        server,
        id_prefix="OFF",
        connectors=1,
        idle_mean=0.1,
        session_min=1e6,
        session_max=2e6,
        meter_interval=20.0,
        fault_rate=0.0,
        offline_rate=0.0,
    )
    fleet = Fleet(config, 1)
    run = asyncio.create_task(fleet.run(30.0))
    cp = fleet.charge_points[0]
    try:

        async def charging() -> bool:
            return fleet.stats.sessions_started == 1 and fleet.stats.answered["MeterValues"] > 2

        await _until(charging)
        # Offline for a second with the answer to a meter reading lost on the way: the reading
        # is replayed, and the readings taken meanwhile follow it.
        cp.go_offline(1.0, lose_ack=True)

        async def replayed() -> bool:
            return fleet.stats.replayed > 0 and not cp.queue and cp.registered

        await _until(replayed)
    finally:
        fleet.stop()
        summary = await run
    assert summary["lost_acks"] == 1
    assert summary["errors"]["total"] == 0, summary["errors"]
    assert summary["undelivered"] == {}
    assert (
        await server.scalar("SELECT count(*) FROM meter_values") == summary["sampled_values_stored"]
    )
    assert await server.scalar("SELECT count(*) FROM transactions") == 1
