"""CONFORMANCE T1-T8: StartTransaction / StopTransaction, replays, anomalies, offline queues."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.v16 import call

from support import RecordingChargePoint, RunningServer, charge_point

T0 = "2024-05-01T10:00:00Z"
T0_UTC = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


class FrameRecorder(RecordingChargePoint):
    """Keeps every frame the server sent, decoded, to check payloads exactly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[list[Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(json.loads(raw_msg))
        await super().route_message(raw_msg)

    @property
    def last_payload(self) -> Any:
        frame = self.frames[-1]
        assert frame[0] == 3, frame  # a CALLRESULT
        return frame[2]


async def send(cp: Any, payload: Any) -> Any:
    """A call whose CALLERROR raises instead of turning into ``None``."""
    return await cp.call(payload, suppress=False)


async def boot(cp: Any) -> None:
    result = await send(cp, call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
    assert result.status == "Accepted"


async def start(
    cp: Any, connector: int = 1, id_tag: str = "TAG1", meter: int = 1000, timestamp: str = T0
) -> Any:
    return await send(
        cp,
        call.StartTransaction(
            connector_id=connector, id_tag=id_tag, meter_start=meter, timestamp=timestamp
        ),
    )


def utc(value: Any) -> datetime | None:
    """A stored time as aware UTC: raw SQL gets naive UTC text from SQLite, datetimes from PG."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso_z(value: datetime) -> str:
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


async def transactions(server: RunningServer) -> list[dict[str, Any]]:
    rows = await server.rows(
        "SELECT id, connector_id, id_tag, id_tag_status, meter_start, started_at, started_at_raw, "
        "meter_stop, stopped_at, stopped_at_raw, stop_reason, stop_id_tag, energy_wh "
        "FROM transactions ORDER BY id"
    )
    return [
        {**r, "started_at": utc(r["started_at"]), "stopped_at": utc(r["stopped_at"])} for r in rows
    ]


async def anomalies(server: RunningServer, identity: str) -> list[dict[str, Any]]:
    rows = await server.rows(
        "SELECT e.type, e.message, e.payload FROM events e "
        "JOIN charge_points c ON c.id = e.charge_point_id "
        "WHERE c.identity = :identity AND e.category = 'anomaly' ORDER BY e.id",
        identity=identity,
    )
    return [
        {
            **r,
            "payload": json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"],
        }
        for r in rows
    ]


async def test_t1_start_with_valid_tag(server: RunningServer) -> None:
    # CONFORMANCE T1 (TC_003, TC_004_1): a unique integer transactionId, Accepted, row stored.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    await server.add_id_tag("TAG2")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        first = await start(cp, 1, "TAG1", 1000, T0)
        assert set(cp.last_payload) == {"transactionId", "idTagInfo"}
        assert cp.last_payload["idTagInfo"] == {"status": "Accepted"}
        second = await start(cp, 2, "TAG2", 77, "2024-05-01T10:00:05.250Z")
    for result in (first, second):
        assert type(result.transaction_id) is int
        assert result.id_tag_info == {"status": "Accepted"}
    assert first.transaction_id != second.transaction_id
    assert await transactions(server) == [
        {
            "id": first.transaction_id,
            "connector_id": 1,
            "id_tag": "TAG1",
            "id_tag_status": "Accepted",
            "meter_start": 1000,
            "started_at": T0_UTC,
            "started_at_raw": T0,
            "meter_stop": None,
            "stopped_at": None,
            "stopped_at_raw": None,
            "stop_reason": None,
            "stop_id_tag": None,
            "energy_wh": None,
        },
        {
            "id": second.transaction_id,
            "connector_id": 2,
            "id_tag": "TAG2",
            "id_tag_status": "Accepted",
            "meter_start": 77,
            "started_at": datetime(2024, 5, 1, 10, 0, 5, 250000, tzinfo=UTC),
            "started_at_raw": "2024-05-01T10:00:05.250Z",
            "meter_stop": None,
            "stopped_at": None,
            "stopped_at_raw": None,
            "stop_reason": None,
            "stop_id_tag": None,
            "energy_wh": None,
        },
    ]


@pytest.mark.parametrize(
    ("provision", "expected"),
    [
        (None, "Invalid"),
        ({"status": "Blocked"}, "Blocked"),
        ({"expiry": "2020-01-01T00:00:00Z"}, "Expired"),
    ],
    ids=["unknown", "blocked", "expired"],
)
async def test_t2_start_with_bad_tag_still_gets_transaction_id(
    server: RunningServer, provision: dict[str, Any] | None, expected: str
) -> None:
    # CONFORMANCE T2 (TC_037_3): a transactionId with status Invalid/Blocked/Expired, never a
    # CALLERROR (send() would raise on one).
    await server.add_charge_point("CP1")
    if provision is not None:
        await server.add_id_tag("BADTAG", **provision)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        result = await start(cp, 1, "BADTAG")
        assert set(cp.last_payload) == {"transactionId", "idTagInfo"}
    assert type(result.transaction_id) is int
    assert result.id_tag_info["status"] == expected
    rows = await transactions(server)
    assert [(r["id"], r["id_tag"], r["id_tag_status"]) for r in rows] == [
        (result.transaction_id, "BADTAG", expected)
    ]


async def test_t3_start_replayed_after_reconnect_gets_same_id(server: RunningServer) -> None:
    # CONFORMANCE T3 / guarantee 2: the identical StartTransaction on a new connection returns the
    # same transactionId and stores no second row.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        first = await start(cp, 2, "TAG1", 4321, "2024-05-01T10:00:00.123Z")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        replay = await start(cp, 2, "TAG1", 4321, "2024-05-01T10:00:00.123Z")
    assert replay.transaction_id == first.transaction_id
    assert replay.id_tag_info == first.id_tag_info == {"status": "Accepted"}
    rows = await transactions(server)
    assert [(r["id"], r["connector_id"], r["stopped_at"]) for r in rows] == [
        (first.transaction_id, 2, None)
    ]
    assert await anomalies(server, "CP1") == []


async def test_t4_stop_without_reason_or_id_tag(server: RunningServer) -> None:
    # CONFORMANCE T4 (TC_005_1): reason omitted -> Local; idTag omitted -> no idTagInfo;
    # energy = meterStop - meterStart.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", 1000, T0)
        stopped = await send(
            cp,
            call.StopTransaction(
                meter_stop=3345,
                timestamp="2024-05-01T11:30:00Z",
                transaction_id=started.transaction_id,
            ),
        )
        assert cp.last_payload == {}
    assert stopped.id_tag_info is None
    [row] = await transactions(server)
    assert row["meter_stop"] == 3345
    assert row["stopped_at"] == datetime(2024, 5, 1, 11, 30, tzinfo=UTC)
    assert row["stopped_at_raw"] == "2024-05-01T11:30:00Z"
    assert row["stop_reason"] == "Local"
    assert row["stop_id_tag"] is None
    assert row["energy_wh"] == 2345.0


async def test_t4_stop_with_id_tag_and_reason(server: RunningServer) -> None:
    # CONFORMANCE T4 (TC_012): the given reason and idTag are stored; idTagInfo answered.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    await server.add_id_tag("STOPPER", status="Blocked")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", 0, T0)
        stopped = await send(
            cp,
            call.StopTransaction(
                meter_stop=10,
                timestamp="2024-05-01T10:10:00Z",
                transaction_id=started.transaction_id,
                id_tag="STOPPER",
                reason="EVDisconnected",
            ),
        )
        assert cp.last_payload == {"idTagInfo": {"status": "Blocked"}}
    assert stopped.id_tag_info == {"status": "Blocked"}
    [row] = await transactions(server)
    assert (row["stop_reason"], row["stop_id_tag"], row["energy_wh"]) == (
        "EVDisconnected",
        "STOPPER",
        10.0,
    )


async def test_t4_transaction_data_stored_as_meter_values(server: RunningServer) -> None:
    # CONFORMANCE T4: transactionData becomes meter values of the transaction and its connector.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        started = await start(cp, 2, "TAG1", 1000, T0)
        await send(
            cp,
            call.StopTransaction(
                meter_stop=1800,
                timestamp="2024-05-01T10:20:00Z",
                transaction_id=started.transaction_id,
                transaction_data=[
                    {
                        "timestamp": T0,
                        "sampledValue": [
                            {"value": "1000", "context": "Transaction.Begin"},
                            {"value": "16.0", "measurand": "Current.Import", "unit": "A"},
                        ],
                    },
                    {
                        "timestamp": "2024-05-01T10:20:00Z",
                        "sampledValue": [
                            {"value": "1.8", "unit": "kWh", "context": "Transaction.End"}
                        ],
                    },
                ],
            ),
        )
    rows = await server.rows(
        "SELECT connector_id, transaction_id, timestamp_raw, measurand, context, unit, value "
        "FROM meter_values ORDER BY timestamp_raw, measurand"
    )
    tx = started.transaction_id
    assert [dict(r) for r in rows] == [
        {
            "connector_id": 2,
            "transaction_id": tx,
            "timestamp_raw": T0,
            "measurand": "Current.Import",
            "context": "Sample.Periodic",
            "unit": "A",
            "value": 16.0,
        },
        {
            "connector_id": 2,
            "transaction_id": tx,
            "timestamp_raw": T0,
            "measurand": "Energy.Active.Import.Register",
            "context": "Transaction.Begin",
            "unit": "Wh",
            "value": 1000.0,
        },
        {
            "connector_id": 2,
            "transaction_id": tx,
            "timestamp_raw": "2024-05-01T10:20:00Z",
            "measurand": "Energy.Active.Import.Register",
            "context": "Transaction.End",
            "unit": "Wh",
            "value": 1800.0,
        },
    ]
    [row] = await transactions(server)
    assert row["energy_wh"] == 800.0


async def test_t5_stop_for_unknown_transaction_is_answered(server: RunningServer) -> None:
    # CONFORMANCE T5 / guarantee 2: answered (no CALLERROR), anomaly recorded, nothing created.
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        await send(cp, call.StopTransaction(meter_stop=500, timestamp=T0, transaction_id=424242))
        assert cp.last_payload == {}
    assert await server.scalar("SELECT count(*) FROM transactions") == 0
    [anomaly] = await anomalies(server, "CP1")
    assert anomaly["payload"]["transaction_id"] == 424242
    assert "424242" in anomaly["message"]


async def test_t5_second_stop_for_stopped_transaction_is_answered(server: RunningServer) -> None:
    # CONFORMANCE T5: a second stop is answered, recorded as an anomaly, and changes nothing.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", 100, T0)
        tx = started.transaction_id
        await send(
            cp,
            call.StopTransaction(
                meter_stop=600, timestamp="2024-05-01T10:30:00Z", transaction_id=tx
            ),
        )
        assert await anomalies(server, "CP1") == []
        before = await transactions(server)
        await send(
            cp,
            call.StopTransaction(
                meter_stop=9999,
                timestamp="2024-05-01T12:00:00Z",
                transaction_id=tx,
                reason="Reboot",
            ),
        )
        assert cp.last_payload == {}
    assert await transactions(server) == before
    assert before[0]["meter_stop"] == 600
    assert before[0]["energy_wh"] == 500.0
    [anomaly] = await anomalies(server, "CP1")
    assert anomaly["payload"]["transaction_id"] == tx


async def test_t5_stop_for_another_charge_points_transaction(server: RunningServer) -> None:
    # CONFORMANCE T5: CP2 cannot stop CP1's transaction; to CP2 it is unknown.
    await server.add_charge_point("CP1")
    await server.add_charge_point("CP2")
    await server.add_id_tag("TAG1")
    async with (
        charge_point(server, "CP1") as cp1,
        charge_point(server, "CP2", cls=FrameRecorder) as cp2,
    ):
        await boot(cp1)
        await boot(cp2)
        started = await start(cp1, 1, "TAG1", 100, T0)
        await send(
            cp2,
            call.StopTransaction(
                meter_stop=600, timestamp=T0, transaction_id=started.transaction_id
            ),
        )
        assert cp2.last_payload == {}
    [row] = await transactions(server)
    assert (row["stopped_at"], row["meter_stop"]) == (None, None)
    assert await anomalies(server, "CP1") == []
    [anomaly] = await anomalies(server, "CP2")
    assert anomaly["payload"]["transaction_id"] == started.transaction_id


async def test_t6_offline_queue_replay_keeps_sent_times(server: RunningServer) -> None:
    # CONFORMANCE T6 (TC_037_1, TC_039): Start an hour ago, MeterValues, Stop, sent in order after
    # reconnecting; stored times are the sent ones (guarantee 4: UTC, raw kept beside).
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    started_raw = iso_z(hour_ago)
    sample_at = hour_ago + timedelta(minutes=20)
    sample_raw = iso_z(sample_at)
    stopped_at = hour_ago + timedelta(minutes=40)
    # Same instant, written with the charge point's +02:00 offset.
    stopped_raw = (stopped_at + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S") + "+02:00"
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", 20_000, started_raw)
        await send(
            cp,
            call.MeterValues(
                connector_id=1,
                transaction_id=started.transaction_id,
                meter_value=[{"timestamp": sample_raw, "sampledValue": [{"value": "21000"}]}],
            ),
        )
        await send(
            cp,
            call.StopTransaction(
                meter_stop=23_000, timestamp=stopped_raw, transaction_id=started.transaction_id
            ),
        )
    [row] = await transactions(server)
    assert row["started_at"] == hour_ago
    assert row["started_at_raw"] == started_raw
    assert row["stopped_at"] == stopped_at
    assert row["stopped_at_raw"] == stopped_raw
    assert row["energy_wh"] == 3000.0
    [sample] = await server.rows(
        "SELECT timestamp, timestamp_raw, transaction_id, value FROM meter_values"
    )
    assert utc(sample["timestamp"]) == sample_at
    assert sample["timestamp_raw"] == sample_raw
    assert sample["transaction_id"] == started.transaction_id
    assert sample["value"] == 21000.0


async def test_t7_power_loss_stop_after_reboot(server: RunningServer) -> None:
    # CONFORMANCE T7 (TC_032_1): after a power loss the CP boots, reports Finishing and stops the
    # transaction with reason PowerLoss; all accepted.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", 500, T0)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        await send(
            cp, call.StatusNotification(connector_id=1, error_code="NoError", status="Finishing")
        )
        assert cp.last_payload == {}
        await send(
            cp,
            call.StopTransaction(
                meter_stop=1250,
                timestamp="2024-05-01T10:45:00Z",
                transaction_id=started.transaction_id,
                reason="PowerLoss",
            ),
        )
        assert cp.last_payload == {}
    [row] = await transactions(server)
    assert row["stop_reason"] == "PowerLoss"
    assert row["stopped_at"] == datetime(2024, 5, 1, 10, 45, tzinfo=UTC)
    assert row["energy_wh"] == 750.0
    status = await server.scalar("SELECT status FROM connectors WHERE connector_id = 1")
    assert status == "Finishing"
    assert await anomalies(server, "CP1") == []


async def test_t8_start_on_busy_connector_closes_the_open_one(server: RunningServer) -> None:
    # CONFORMANCE T8: the open transaction is closed as an anomaly; never two open per connector.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    await server.add_id_tag("TAG2")
    async with charge_point(server, "CP1") as cp:
        await boot(cp)
        old = await start(cp, 1, "TAG1", 100, T0)
        other = await start(cp, 2, "TAG2", 100, T0)
        new = await start(cp, 1, "TAG1", 900, "2024-05-01T11:00:00Z")
    assert new.transaction_id not in (old.transaction_id, other.transaction_id)
    # Not ConcurrentTx: the tag's only other transaction was on this very connector.
    assert new.id_tag_info == {"status": "Accepted"}
    rows = {r["id"]: r for r in await transactions(server)}
    closed = rows[old.transaction_id]
    assert closed["stopped_at"] is not None
    assert T0_UTC <= closed["stopped_at"] <= datetime(2024, 5, 1, 11, 0, tzinfo=UTC)
    assert rows[new.transaction_id]["stopped_at"] is None
    assert rows[other.transaction_id]["stopped_at"] is None  # another connector: untouched
    open_on_1 = await server.scalar(
        "SELECT count(*) FROM transactions WHERE connector_id = 1 AND stopped_at IS NULL"
    )
    assert open_on_1 == 1
    [anomaly] = await anomalies(server, "CP1")
    assert anomaly["payload"]["closed_transaction_id"] == old.transaction_id
