"""Last-seen and last-heartbeat times, coalesced (CONFORMANCE L4).

Every received message counts as liveness, but writing a row per message would put a database
round trip on the hot path. Times are kept here and written once a second per charge point.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from chargegrid.store import charge_points
from chargegrid.store.group_commit import GroupCommitter, StoreUnavailable

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, writer: GroupCommitter, interval: float, *, sqlite: bool = False) -> None:
        self._writer = writer
        self._interval = interval
        # SQLite: plain statements, which can join a batch of meter values in the writer
        # thread instead of sending it the slow way (store/group_commit.py, execute()).
        self._sqlite = sqlite
        self._seen: dict[int, datetime] = {}
        self._heartbeats: dict[int, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def seen(self, charge_point_id: int, at: datetime) -> None:
        self._seen[charge_point_id] = at

    def heartbeat(self, charge_point_id: int, at: datetime) -> None:
        self._seen[charge_point_id] = at
        self._heartbeats[charge_point_id] = at

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="liveness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if not self._seen:
            return
        seen, self._seen = self._seen, {}
        heartbeats, self._heartbeats = self._heartbeats, {}
        try:
            if self._sqlite:
                await self._writer.execute(charge_points.touch_statements(seen, heartbeats))
            else:
                await self._writer.run(lambda c: charge_points.touch(c, seen, heartbeats))
        except StoreUnavailable:
            # Keep the times for the next flush unless newer ones arrived meanwhile.
            for key, value in seen.items():
                self._seen.setdefault(key, value)
            for key, value in heartbeats.items():
                self._heartbeats.setdefault(key, value)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:
                log.exception("liveness flush failed")
