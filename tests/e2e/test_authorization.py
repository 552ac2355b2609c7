"""CONFORMANCE A1-A3: Authorize answers Accepted / Invalid / Expired / Blocked / ConcurrentTx."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.v16 import call

from chargegrid.config import Settings
from support import RecordingChargePoint, RunningServer, charge_point, running_server


class FrameRecorder(RecordingChargePoint):
    """Keeps every frame the server sent, decoded, to check payloads exactly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[list[Any]] = []

    async def route_message(self, raw_msg: str) -> None:
        self.frames.append(json.loads(raw_msg))
        await super().route_message(raw_msg)


async def send(cp: Any, payload: Any) -> Any:
    """A call whose CALLERROR raises instead of turning into ``None``."""
    return await cp.call(payload, suppress=False)


async def authorize(cp: FrameRecorder, id_tag: str) -> dict[str, Any]:
    """The idTagInfo exactly as sent on the wire."""
    await send(cp, call.Authorize(id_tag=id_tag))
    frame = cp.frames[-1]
    assert frame[0] == 3, frame
    assert set(frame[2]) == {"idTagInfo"}
    info: dict[str, Any] = frame[2]["idTagInfo"]
    return info


async def boot(cp: Any) -> None:
    result = await send(cp, call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
    assert result.status == "Accepted"


async def start(cp: Any, connector: int, id_tag: str, timestamp: str) -> Any:
    return await send(
        cp,
        call.StartTransaction(
            connector_id=connector, id_tag=id_tag, meter_start=0, timestamp=timestamp
        ),
    )


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


async def test_a1_known_valid_tag_is_accepted_with_expiry_and_parent(
    server: RunningServer,
) -> None:
    # CONFORMANCE A1: Accepted, with expiryDate and parentIdTag when set.
    await server.add_charge_point("CP1")
    expiry = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    await server.add_id_tag(
        "TAG-FULL", expiry=expiry.isoformat().replace("+00:00", "Z"), parent="FLEET-7"
    )
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        info = await authorize(cp, "TAG-FULL")
    assert set(info) == {"status", "expiryDate", "parentIdTag"}
    assert info["status"] == "Accepted"
    assert info["parentIdTag"] == "FLEET-7"
    assert parse_utc(info["expiryDate"]) == expiry


async def test_a1_plain_tag_is_accepted_without_extras(server: RunningServer) -> None:
    # CONFORMANCE A1: no expiry, no parent -> just the status.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        assert await authorize(cp, "TAG1") == {"status": "Accepted"}


async def test_a2_unknown_tag_is_invalid(server: RunningServer) -> None:
    # CONFORMANCE A2: unknown -> Invalid (a CALLRESULT, not a CALLERROR).
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        assert await authorize(cp, "NOBODY") == {"status": "Invalid"}
        # Tags are matched exactly: another case is another tag.
        assert (await authorize(cp, "tag1"))["status"] == "Invalid"


async def test_a2_expired_tag_is_expired(server: RunningServer) -> None:
    # CONFORMANCE A2: an Accepted tag whose expiry lies in the past -> Expired.
    await server.add_charge_point("CP1")
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    await server.add_id_tag("OLD", expiry=past.isoformat().replace("+00:00", "Z"))
    await server.add_id_tag("MARKED", status="Expired")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        old = await authorize(cp, "OLD")
        marked = await authorize(cp, "MARKED")
    assert old["status"] == "Expired"
    assert parse_utc(old["expiryDate"]) == past
    assert marked == {"status": "Expired"}


async def test_a2_blocked_tag_is_blocked(server: RunningServer) -> None:
    # CONFORMANCE A2: blocked -> Blocked; a stored Invalid stays Invalid.
    await server.add_charge_point("CP1")
    await server.add_id_tag("STOLEN", status="Blocked")
    await server.add_id_tag("BAD", status="Invalid")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        assert await authorize(cp, "STOLEN") == {"status": "Blocked"}
        assert await authorize(cp, "BAD") == {"status": "Invalid"}


async def test_a3_tag_in_transaction_on_another_charge_point_is_concurrent_tx(
    server: RunningServer,
) -> None:
    # CONFORMANCE A3: the tag is in an open transaction on CP1 -> ConcurrentTx at CP2; once that
    # transaction stops the tag is Accepted again.
    await server.add_charge_point("CP1")
    await server.add_charge_point("CP2")
    await server.add_id_tag("TAG1")
    async with (
        charge_point(server, "CP1") as cp1,
        charge_point(server, "CP2", cls=FrameRecorder) as cp2,
    ):
        await boot(cp1)
        await boot(cp2)
        started = await start(cp1, 1, "TAG1", "2024-05-01T10:00:00Z")
        assert started.id_tag_info["status"] == "Accepted"
        assert await authorize(cp2, "TAG1") == {"status": "ConcurrentTx"}
        await send(
            cp1,
            call.StopTransaction(
                meter_stop=10,
                timestamp="2024-05-01T11:00:00Z",
                transaction_id=started.transaction_id,
            ),
        )
        assert await authorize(cp2, "TAG1") == {"status": "Accepted"}


async def test_a3_tag_in_transaction_on_another_connector_is_concurrent_tx(
    server: RunningServer,
) -> None:
    # CONFORMANCE A3: busy on connector 1 -> Authorize is ConcurrentTx, and a StartTransaction on
    # connector 2 of the same CP answers ConcurrentTx too (still with a transactionId, T2).
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1")
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        first = await start(cp, 1, "TAG1", "2024-05-01T10:00:00Z")
        assert first.id_tag_info["status"] == "Accepted"
        assert await authorize(cp, "TAG1") == {"status": "ConcurrentTx"}
        second = await start(cp, 2, "TAG1", "2024-05-01T10:05:00Z")
    assert second.id_tag_info["status"] == "ConcurrentTx"
    assert isinstance(second.transaction_id, int)
    assert second.transaction_id != first.transaction_id
    rows = await server.rows(
        "SELECT id, connector_id, id_tag_status FROM transactions ORDER BY connector_id"
    )
    assert [dict(r) for r in rows] == [
        {"id": first.transaction_id, "connector_id": 1, "id_tag_status": "Accepted"},
        {"id": second.transaction_id, "connector_id": 2, "id_tag_status": "ConcurrentTx"},
    ]


async def test_a3_concurrent_tx_can_be_switched_off(settings: Settings) -> None:
    # CONFORMANCE A3 "(configurable)": authorize_concurrent_tx=False -> Accepted.
    lenient = settings.model_copy(update={"authorize_concurrent_tx": False})
    async with running_server(lenient) as server:
        await server.add_charge_point("CP1")
        await server.add_charge_point("CP2")
        await server.add_id_tag("TAG1")
        async with (
            charge_point(server, "CP1") as cp1,
            charge_point(server, "CP2", cls=FrameRecorder) as cp2,
        ):
            await boot(cp1)
            await boot(cp2)
            started = await start(cp1, 1, "TAG1", "2024-05-01T10:00:00Z")
            assert started.id_tag_info["status"] == "Accepted"
            assert await authorize(cp2, "TAG1") == {"status": "Accepted"}
            second = await start(cp2, 1, "TAG1", "2024-05-01T10:01:00Z")
        assert second.id_tag_info["status"] == "Accepted"


@pytest.mark.parametrize("stored", ["Blocked", "Invalid"])
async def test_a3_concurrent_tx_never_masks_a_bad_tag(server: RunningServer, stored: str) -> None:
    # CONFORMANCE A2 over A3: a blocked/invalid tag in an open transaction is still reported as
    # Blocked/Invalid, not ConcurrentTx.
    await server.add_charge_point("CP1")
    await server.add_id_tag("TAG1", status=stored)
    async with charge_point(server, "CP1", cls=FrameRecorder) as cp:
        await boot(cp)
        started = await start(cp, 1, "TAG1", "2024-05-01T10:00:00Z")
        assert started.id_tag_info["status"] == stored
        assert await authorize(cp, "TAG1") == {"status": stored}
