"""The subscriber outbox: ordered, bounded, meter values coalesced or throttled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chargegrid.live.outbox import Outbox, TooSlow


def _meter(value: float, measurand: str = "Power.Active.Import", cp: str = "CP1") -> dict[str, Any]:
    return {
        "topic": "meter_values",
        "charge_point": cp,
        "data": {"connector_id": 1, "measurand": measurand, "phase": None, "value": value},
    }


def _status(status: str) -> dict[str, Any]:
    return {"topic": "status", "charge_point": "CP1", "data": {"status": status}}


async def test_order_is_kept_and_meter_values_coalesce_in_place() -> None:
    outbox = Outbox(limit=10)
    outbox.put(_status("Preparing"))
    outbox.put(_meter(1.0))
    outbox.put(_meter(10.0, "Voltage"))
    outbox.put(_meter(2.0))  # replaces 1.0, keeping its place before Voltage
    outbox.put(_status("Charging"))
    got = [await outbox.get() for _ in range(4)]
    assert [(e["topic"], e["data"].get("value", e["data"].get("status"))) for e in got] == [
        ("status", "Preparing"),
        ("meter_values", 2.0),
        ("meter_values", 10.0),
        ("status", "Charging"),
    ]
    assert outbox.coalesced == 1
    assert len(outbox) == 0


async def test_too_many_pending_events_end_the_subscriber() -> None:
    outbox = Outbox(limit=3)
    for status in ("A", "B", "C", "D"):
        outbox.put(_status(status))
    assert outbox.overflowed
    with pytest.raises(TooSlow):
        await outbox.get()


async def test_throttled_meter_values_are_released_once_per_interval() -> None:
    outbox = Outbox(limit=100, meter_interval=0.2)
    outbox.put(_meter(1.0))  # the first is released at once
    assert (await asyncio.wait_for(outbox.get(), 1))["data"]["value"] == 1.0
    for value in (2.0, 3.0, 4.0):
        outbox.put(_meter(value))
    loop = asyncio.get_running_loop()
    started = loop.time()
    released = await asyncio.wait_for(outbox.get(), 1)
    assert released["data"]["value"] == 4.0  # only the latest of the interval
    assert loop.time() - started >= 0.15
    assert outbox.coalesced == 2
