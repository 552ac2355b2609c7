"""Charge points that keep their unanswered messages and resend them, as OCPP 1.6 asks of
transaction-related messages (TransactionMessageAttempts, TransactionMessageRetryInterval).

Each wraps the ``ocpp`` package's ChargePoint (an independent OCPP implementation) and records
what the central system acknowledged to it, so a test can compare that with what was stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from clustersupport import Node
from ocpp.exceptions import InternalError
from ocpp.v16 import call

from support import RecordingChargePoint

# A CALLERROR for a message that cannot be stored must come back well within this; a charge
# point waiting longer would time out itself and could not tell a hang from a lost frame.
ANSWER_BOUND = 5.0
# Everything else waits at most this long (readiness flipping, retries succeeding).
SETTLE = 20.0


@dataclass
class Message:
    """One CALL as the charge point keeps it in its queue: resent with the same unique id."""

    payload: Any
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def action(self) -> str:
        return type(self.payload).__name__


@dataclass
class Charger:
    """A charge point on one node, and what the central system acknowledged to it."""

    identity: str
    node: Node
    index: int  # the seconds of its timestamps: makes every timestamp string unique
    cp: RecordingChargePoint | None = None
    ws: Any = None
    transaction_id: int | None = None
    meter_start: int | None = None
    meter_stop: int | None = None
    started_raw: str | None = None
    stopped_raw: str | None = None
    values: list[tuple[str, float]] = field(default_factory=list)  # (timestamp_raw, Wh)
    status: str | None = None
    patience: float = SETTLE  # how long it waits for an answer before giving up

    @property
    def tag(self) -> str:
        return f"TAG-{self.identity}"

    def at(self, minute: int) -> str:
        return f"2026-11-01T10:{minute:02d}:{self.index:02d}Z"

    # -- messages (built once, so a resend is byte-for-byte the same CALL) -----------------

    def start(self, minute: int, meter: int) -> Message:
        return Message(
            call.StartTransaction(
                connector_id=1, id_tag=self.tag, meter_start=meter, timestamp=self.at(minute)
            )
        )

    def meter(self, minute: int, wh: int) -> Message:
        assert self.transaction_id is not None
        return Message(
            call.MeterValues(
                connector_id=1,
                transaction_id=self.transaction_id,
                meter_value=[
                    {
                        "timestamp": self.at(minute),
                        "sampledValue": [
                            {
                                "value": str(wh),
                                "measurand": "Energy.Active.Import.Register",
                                "unit": "Wh",
                            }
                        ],
                    }
                ],
            )
        )

    def state(self, minute: int, status: str) -> Message:
        return Message(
            call.StatusNotification(
                connector_id=1, error_code="NoError", status=status, timestamp=self.at(minute)
            )
        )

    def stop(self, minute: int, meter: int) -> Message:
        assert self.transaction_id is not None
        return Message(
            call.StopTransaction(
                meter_stop=meter,
                timestamp=self.at(minute),
                transaction_id=self.transaction_id,
                id_tag=self.tag,
            )
        )

    # -- sending -------------------------------------------------------------------------------

    async def answer(self, message: Message) -> Any:
        """Send (or resend) ``message``; the CALLRESULT, or InternalError for a CALLERROR."""
        assert self.cp is not None
        try:
            return await self.cp.call(message.payload, suppress=False, unique_id=message.uid)
        except TimeoutError:
            pytest.fail(f"{self.identity}: no answer to {message.action} in {self.patience} s")

    async def acknowledged(self, message: Message) -> Any:
        """Send ``message``; it must be acknowledged. Records what that acknowledges."""
        result = await self.answer(message)
        self.record(message, result)
        return result

    async def refused(self, message: Message) -> None:
        """Send ``message`` while the database is down: a prompt CALLERROR InternalError."""
        started = time.monotonic()
        with pytest.raises(InternalError):
            await self.answer(message)
        elapsed = time.monotonic() - started
        assert elapsed < ANSWER_BOUND, f"{self.identity} {message.action}: {elapsed:.1f} s"

    async def resend_until_acknowledged(self, message: Message) -> int:
        """What a charge point does with a transaction-related message that got a CALLERROR:
        resend it until it is answered. Returns the attempts it took."""
        deadline = time.monotonic() + SETTLE
        attempts = 0
        while True:
            attempts += 1
            try:
                result = await self.answer(message)
            except InternalError:
                assert time.monotonic() < deadline, f"{self.identity} {message.action} refused"
                await asyncio.sleep(0.2)
                continue
            self.record(message, result)
            return attempts

    def record(self, message: Message, result: Any) -> None:
        payload = message.payload
        if isinstance(payload, call.StartTransaction):
            assert result.id_tag_info["status"] == "Accepted"
            if self.transaction_id is not None:  # a resend: the same transaction (T3)
                assert result.transaction_id == self.transaction_id
            self.transaction_id = int(result.transaction_id)
            self.meter_start, self.started_raw = payload.meter_start, payload.timestamp
        elif isinstance(payload, call.StopTransaction):
            self.meter_stop, self.stopped_raw = payload.meter_stop, payload.timestamp
        elif isinstance(payload, call.MeterValues):
            for value in payload.meter_value:
                for sampled in value["sampledValue"]:
                    self.values.append((value["timestamp"], float(sampled["value"])))
        elif isinstance(payload, call.StatusNotification):
            self.status = payload.status


@contextlib.asynccontextmanager
async def connected(charger: Charger, timeout: float = SETTLE) -> AsyncIterator[Charger]:
    async with websockets.connect(
        f"{charger.node.ws_base}/ocpp/{charger.identity}",
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        compression=None,
    ) as ws:
        charger.ws = ws
        charger.patience = timeout
        charger.cp = RecordingChargePoint(charger.identity, ws, response_timeout=timeout)
        task = asyncio.create_task(charger.cp.start())
        try:
            yield charger
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
