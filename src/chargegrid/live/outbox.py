"""One subscriber's pending events: ordered, bounded, meter values coalesced.

A subscriber that reads slower than events arrive must never make the server's memory grow.
Meter values are keyed by (charge point, connector, measurand, phase, location): a newer value
replaces a pending older one in place, so a slow reader gets the latest value of each series
rather than a backlog. Other events (status, sessions, alerts, ...) are never dropped silently:
if more than ``limit`` of them wait, the subscriber is told it is too slow and disconnected.
With a throttle interval, meter values are held back and released at most once per interval per
series (the reference guide throttles to one broadcast every 5 s; ours keeps the latest value).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

Envelope = dict[str, Any]


class TooSlow(Exception):
    """The subscriber fell more than ``limit`` events behind."""


class Outbox:
    def __init__(self, *, limit: int = 1000, meter_interval: float = 0.0) -> None:
        self._items: OrderedDict[object, Envelope] = OrderedDict()
        self._held: dict[object, Envelope] = {}
        self._limit = limit
        self._meter_interval = meter_interval
        self._last_release = 0.0
        self._ready = asyncio.Event()
        self._seq = 0
        self.overflowed = False
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._items) + len(self._held)

    def put(self, envelope: Envelope) -> None:
        if self.overflowed:
            return
        if envelope["topic"] == "meter_values":
            data = envelope["data"]
            key = (
                envelope.get("charge_point"),
                data.get("connector_id"),
                data.get("measurand"),
                data.get("phase"),
                data.get("location"),
            )
            if self._meter_interval > 0:
                if key in self._held:
                    self.coalesced += 1
                self._held[key] = envelope
                self._release_due()
                return
            if key in self._items:
                self.coalesced += 1
            self._items[key] = envelope  # an existing key keeps its place: coalesced in place
        else:
            if len(self._items) >= self._limit:
                self.overflowed = True
                self._ready.set()
                return
            self._seq += 1
            self._items[self._seq] = envelope
        self._ready.set()

    def _release_due(self) -> None:
        now = time.monotonic()
        if self._held and now - self._last_release >= self._meter_interval:
            self._last_release = now
            for key, envelope in self._held.items():
                self._items[("m", key)] = envelope
            self._held.clear()
            self._ready.set()

    async def get(self) -> Envelope:
        """The next event; raises TooSlow once the subscriber overflowed."""
        while True:
            if self.overflowed:
                raise TooSlow("subscriber too slow")
            if self._items:
                return self._items.popitem(last=False)[1]
            self._ready.clear()
            if self._held:
                wait = self._meter_interval - (time.monotonic() - self._last_release)
                try:
                    await asyncio.wait_for(self._ready.wait(), max(wait, 0.0))
                except TimeoutError:
                    self._release_due()
            else:
                await self._ready.wait()
