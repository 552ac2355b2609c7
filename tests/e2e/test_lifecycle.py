"""CONFORMANCE L1-L6: boot, registration status, heartbeat, liveness, connector 0, vendor data.

Not covered: L2/L3 "the CSMS sends no RemoteStart/Stop while Pending / no calls while Rejected"
needs the CSMS-initiated call API, which does not exist yet.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.exceptions import SecurityError
from ocpp.v16 import call

from chargegrid import admin
from chargegrid.config import Settings
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import writing
from support import RecordingChargePoint, RunningServer, charge_point, running_server

HEARTBEAT_INTERVAL = 137
BOOT_RETRY_INTERVAL = 23


class FrameRecorder(RecordingChargePoint):
    """Keeps every frame the server sent, decoded, to check payloads byte for byte."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[list[Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(json.loads(raw_msg))
        await super().route_message(raw_msg)

    def payload_of(self, message_id: str) -> Any:
        [frame] = [f for f in self.frames if f[1] == message_id]
        return frame


async def send(cp: Any, payload: Any) -> Any:
    """A call whose CALLERROR raises instead of turning into ``None``."""
    return await cp.call(payload, suppress=False)


def boot_request() -> call.BootNotification:
    return call.BootNotification(charge_point_vendor="VendorX", charge_point_model="ModelY")


def parse_utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0), text
    return parsed


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], within: float = 2.0
) -> Any:
    """Poll ``probe`` until ``accept`` holds for its result (liveness is written in batches)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if accept(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


def utc(value: Any) -> datetime | None:
    """A stored time as aware UTC: raw SQL gets naive UTC text from SQLite, datetimes from PG."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def stored_time(server: RunningServer, sql: str) -> datetime | None:
    return utc(await server.scalar(sql))


def custom(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "boot_retry_interval": BOOT_RETRY_INTERVAL,
        }
    )


async def test_l1_cold_boot(settings: Settings) -> None:
    # CONFORMANCE L1 (TC_001): Boot -> Accepted, UTC currentTime, interval = heartbeat_interval;
    # StatusNotification for connectors 0..2 -> {}; Heartbeat -> currentTime, stored.
    async with running_server(custom(settings)) as server:
        await server.add_charge_point("CP1")
        async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
            before = datetime.now(UTC)
            boot = await send(cp, boot_request())
            assert boot.status == "Accepted"
            assert type(boot.interval) is int
            assert boot.interval == HEARTBEAT_INTERVAL
            current = parse_utc(boot.current_time)
            assert (
                before - timedelta(seconds=5) <= current <= datetime.now(UTC) + timedelta(seconds=5)
            )

            for connector in (0, 1, 2):
                message_id = f"status-{connector}"
                await cp.call(
                    call.StatusNotification(
                        connector_id=connector,
                        error_code="NoError",
                        status="Available",
                        timestamp="2024-05-01T10:00:00Z",
                    ),
                    suppress=False,
                    unique_id=message_id,
                )
                assert cp.payload_of(message_id) == [3, message_id, {}]

            heartbeat_sent = datetime.now(UTC)
            beat = await send(cp, call.Heartbeat())
            beat_time = parse_utc(beat.current_time)
            assert heartbeat_sent - timedelta(seconds=1) <= beat_time
            assert beat_time <= datetime.now(UTC) + timedelta(seconds=1)

            stored = await eventually(
                lambda: stored_time(
                    server, "SELECT last_heartbeat_at FROM charge_points WHERE identity = 'CP1'"
                ),
                lambda value: value is not None,
            )
        assert stored is not None
        assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
        assert abs(stored - beat_time) < timedelta(seconds=1)

        rows = await server.rows(
            "SELECT connector_id, status, error_code, status_at_raw FROM connectors "
            "ORDER BY connector_id"
        )
        assert [dict(r) for r in rows] == [
            {
                "connector_id": n,
                "status": "Available",
                "error_code": "NoError",
                "status_at_raw": "2024-05-01T10:00:00Z",
            }
            for n in (0, 1, 2)
        ]
        last_boot = await stored_time(server, "SELECT last_boot_at FROM charge_points")
        assert last_boot is not None
        assert abs(last_boot - current) < timedelta(seconds=1)


@pytest.mark.parametrize("registration", ["Pending", "Rejected"])
async def test_l2_l3_not_accepted_boot_answers_status_and_retry_interval(
    settings: Settings, registration: str
) -> None:
    # CONFORMANCE L2 (TC_002) / L3: Boot answers Pending / Rejected with the boot retry interval;
    # any other CALL before acceptance gets SecurityError (errata §3.8, R10).
    async with running_server(custom(settings)) as server:
        await server.add_charge_point("CP1", registration_status=registration)
        async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
            boot = await send(cp, boot_request())
            assert boot.status == registration
            assert type(boot.interval) is int
            assert boot.interval == BOOT_RETRY_INTERVAL
            parse_utc(boot.current_time)

            with pytest.raises(SecurityError) as caught:
                await cp.call(call.Heartbeat(), suppress=False, unique_id="hb-1")
            assert type(caught.value) is SecurityError
            frame = cp.payload_of("hb-1")
            assert frame[0] == 4
            assert frame[2] == "SecurityError"

            # Still not accepted: a transaction start is refused too, and nothing is stored.
            with pytest.raises(SecurityError):
                await send(
                    cp,
                    call.StartTransaction(
                        connector_id=1,
                        id_tag="TAG1",
                        meter_start=0,
                        timestamp="2024-05-01T10:00:00Z",
                    ),
                )
        assert await server.scalar("SELECT count(*) FROM transactions") == 0
        assert await server.scalar("SELECT last_heartbeat_at FROM charge_points") is None


async def test_l2_pending_then_accepted_on_next_boot(server: RunningServer) -> None:
    # CONFORMANCE L2: once an operator accepts a Pending charge point, its next boot is Accepted
    # and its calls are served.
    await server.add_charge_point("CP1", registration_status="Pending")
    async with charge_point(server, "CP1") as cp:
        assert (await send(cp, boot_request())).status == "Pending"
        async with writing(server.node.engine).begin() as connection:
            await admin.update_charge_point(
                connection, "CP1", now=datetime.now(UTC), registration_status="Accepted"
            )
        boot = await send(cp, boot_request())
        assert boot.status == "Accepted"
        assert boot.interval == server.node.settings.heartbeat_interval
        beat = await send(cp, call.Heartbeat())
        parse_utc(beat.current_time)


async def test_l2_a_charge_point_removed_while_connected_boots_rejected(
    server: RunningServer,
) -> None:
    # Removed from the database by another process (the CLI's `charge-points remove`) while its
    # socket stays up: it is no longer registered, so its next boot is Rejected (OCPP 1.6
    # §4.2: the Central System does not accept it), with the retry interval.
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1") as cp:
        assert (await send(cp, boot_request())).status == "Accepted"
        async with writing(server.node.engine).begin() as connection:
            assert await cp_store.remove(connection, "CP1")
        boot = await send(cp, boot_request())
        assert boot.status == "Rejected"
        assert boot.interval == server.node.settings.boot_retry_interval


async def test_l4_any_message_counts_as_liveness(server: RunningServer) -> None:
    # CONFORMANCE L4: a message other than Heartbeat (here Authorize) advances last_seen_at.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    query = "SELECT last_seen_at FROM charge_points WHERE identity = 'CP1'"
    async with charge_point(server, "CP1") as cp:
        await send(cp, boot_request())
        after_boot = await eventually(lambda: stored_time(server, query), lambda v: v is not None)
        assert after_boot is not None
        await asyncio.sleep(0.3)
        sent_at = datetime.now(UTC)
        result = await send(cp, call.Authorize(id_tag="TAG1"))
        assert result.id_tag_info["status"] == "Accepted"
        seen = await eventually(lambda: stored_time(server, query), lambda v: v > after_boot)
    assert seen > after_boot
    assert seen >= sent_at - timedelta(milliseconds=50)
    assert await server.scalar("SELECT last_heartbeat_at FROM charge_points") is None


async def test_l4_refused_call_still_counts_as_liveness(server: RunningServer) -> None:
    # CONFORMANCE L4: "any received message" - even one answered with a CALLERROR.
    await server.add_charge_point("CP1", registration_status="Rejected")
    query = "SELECT last_seen_at FROM charge_points WHERE identity = 'CP1'"
    async with charge_point(server, "CP1") as cp:
        await send(cp, boot_request())
        after_boot = await eventually(lambda: stored_time(server, query), lambda v: v is not None)
        assert after_boot is not None
        await asyncio.sleep(0.3)
        with pytest.raises(SecurityError):
            await send(cp, call.Heartbeat())
        seen = await eventually(lambda: stored_time(server, query), lambda v: v > after_boot)
    assert seen > after_boot


async def test_l5_status_of_connector_zero_is_the_charge_points(server: RunningServer) -> None:
    # CONFORMANCE L5: StatusNotification for connector 0 is accepted and is the whole CP's status.
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1") as cp:
        await send(cp, boot_request())
        await send(
            cp,
            call.StatusNotification(connector_id=0, error_code="GroundFailure", status="Faulted"),
        )
        await send(
            cp,
            call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"),
        )
        cp_row = (await server.rows("SELECT status, error_code FROM charge_points"))[0]
        assert dict(cp_row) == {"status": "Faulted", "error_code": "GroundFailure"}

        await send(
            cp, call.StatusNotification(connector_id=0, error_code="NoError", status="Available")
        )
    cp_row = (await server.rows("SELECT status, error_code FROM charge_points"))[0]
    assert dict(cp_row) == {"status": "Available", "error_code": "NoError"}
    rows = await server.rows(
        "SELECT connector_id, status, error_code FROM connectors ORDER BY connector_id"
    )
    assert [(r["connector_id"], r["status"], r["error_code"]) for r in rows] == [
        (0, "Available", "NoError"),
        (1, "Charging", "NoError"),
    ]
    # The connector-1 message must not have touched the charge point's status.
    charging = await server.scalar("SELECT count(*) FROM charge_points WHERE status = 'Charging'")
    assert charging == 0


async def test_l5_connector_zero_details_stored(server: RunningServer) -> None:
    # CONFORMANCE L5 (+ guarantee 4): info, vendor fields and the CP's timestamp, raw and UTC.
    await server.add_charge_point("CP1")
    async with charge_point(server, "CP1") as cp:
        await send(cp, boot_request())
        await send(
            cp,
            call.StatusNotification(
                connector_id=0,
                error_code="GroundFailure",
                status="Faulted",
                info="earth leak",
                vendor_id="VendorX",
                vendor_error_code="E42",
                timestamp="2024-05-01T10:00:00+02:00",
            ),
        )
    [row] = await server.rows(
        "SELECT connector_id, status, error_code, info, vendor_id, vendor_error_code, "
        "status_at, status_at_raw FROM connectors"
    )
    assert {**row, "status_at": utc(row["status_at"])} == {
        "connector_id": 0,
        "status": "Faulted",
        "error_code": "GroundFailure",
        "info": "earth leak",
        "vendor_id": "VendorX",
        "vendor_error_code": "E42",
        "status_at": datetime(2024, 5, 1, 8, 0, tzinfo=UTC),
        "status_at_raw": "2024-05-01T10:00:00+02:00",
    }


async def test_l6_vendor_data_recorded(server: RunningServer) -> None:
    # CONFORMANCE L6: every BootNotification field stored, at the schema's maximum lengths.
    await server.add_charge_point("CP1")
    sent = {
        "vendor": "V" * 19 + "é",  # CiString20
        "model": "M" * 20,  # CiString20
        "serial_number": "S" * 25,  # CiString25
        "charge_box_serial_number": "B" * 25,  # CiString25
        "firmware_version": "F" * 50,  # CiString50
        "iccid": "8931" + "0" * 16,  # CiString20
        "imsi": "2040" + "1" * 16,  # CiString20
        "meter_type": "T" * 25,  # CiString25
        "meter_serial_number": "N" * 25,  # CiString25
    }
    async with charge_point(server, "CP1") as cp:
        boot = await send(
            cp,
            call.BootNotification(
                charge_point_vendor=sent["vendor"],
                charge_point_model=sent["model"],
                charge_point_serial_number=sent["serial_number"],
                charge_box_serial_number=sent["charge_box_serial_number"],
                firmware_version=sent["firmware_version"],
                iccid=sent["iccid"],
                imsi=sent["imsi"],
                meter_type=sent["meter_type"],
                meter_serial_number=sent["meter_serial_number"],
            ),
        )
        assert boot.status == "Accepted"
    [row] = await server.rows(
        "SELECT vendor, model, serial_number, charge_box_serial_number, firmware_version, "
        "iccid, imsi, meter_type, meter_serial_number FROM charge_points WHERE identity = 'CP1'"
    )
    assert dict(row) == sent
