"""Alert rules: what an operator writes (:class:`RuleSpec`), what is evaluated (:class:`Rule`), the
rules file, and this node's copy of the rules kept current (:class:`RuleKeeper`).

Rules live in the database; every node evaluates its own copy. A node that changes them (API,
rules file at start) publishes a notice on :data:`channels.INTERNAL_ALERT_RULES` once the change
is committed, and every node reloads on it; a burst of notices costs one reload, or two. A notice
is lost for a node whose bus connection is down when it is sent, so a node also reloads once its
bus is back after a reconnect, and every ``reload_interval`` (60 s) whatever happens: the backstop,
which also picks up ``chargegrid alerts import`` run from another process (it has no bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus, Subscription
from chargegrid.store import alerts as alert_store
from chargegrid.store.queries import measurand_name

log = logging.getLogger(__name__)

Comparison = Literal["above", "below", "outside"]
Severity = Literal["info", "warning", "critical"]

# How often the keeper looks at the bus's reconnect counter (an attribute read, no I/O).
_WATCH_INTERVAL = 1.0
# After a notice, wait this long for the rest of a burst (a rules file syncs rule by rule).
_COALESCE = 0.05


class RuleSpec(BaseModel):
    """An alert rule as written in the rules file or sent to the API."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    measurand: str = Field(
        min_length=1, max_length=40, description="OCPP measurand or a scope name (power, ...)"
    )
    phase: str | None = Field(default=None, max_length=8, description="None: any phase")
    comparison: Comparison
    threshold: float | None = Field(default=None, description="for above / below")
    low: float | None = Field(default=None, description="for outside: lowest normal value")
    high: float | None = Field(default=None, description="for outside: highest normal value")
    hysteresis: float = Field(default=0.0, ge=0)
    cooldown_seconds: float = Field(default=0.0, ge=0)
    severity: Severity = "warning"
    charge_points: list[str] | None = Field(
        default=None, description="identities in scope; None: every charge point"
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _thresholds(self) -> RuleSpec:
        self.measurand = measurand_name(self.measurand)
        if self.comparison == "outside":
            if self.low is None or self.high is None or self.low > self.high:
                raise ValueError("comparison 'outside' needs low <= high")
            if self.threshold is not None:
                raise ValueError("comparison 'outside' takes low and high, not threshold")
        else:
            if self.threshold is None:
                raise ValueError(f"comparison {self.comparison!r} needs a threshold")
            if self.low is not None or self.high is not None:
                raise ValueError(f"comparison {self.comparison!r} takes threshold, not low/high")
        return self


@dataclass(frozen=True, slots=True)
class Rule:
    """A stored rule, ready to evaluate."""

    id: int
    name: str
    measurand: str
    phase: str | None
    comparison: str
    threshold: float | None
    low: float | None
    high: float | None
    hysteresis: float
    cooldown_seconds: float
    severity: str
    scope: frozenset[int] | None  # charge point ids; None: all

    def tripped(self, value: float) -> bool:
        if self.comparison == "above":
            return value > self.threshold  # type: ignore[operator]
        if self.comparison == "below":
            return value < self.threshold  # type: ignore[operator]
        return value < self.low or value > self.high  # type: ignore[operator]

    def back_in_range(self, value: float) -> bool:
        h = self.hysteresis
        if self.comparison == "above":
            return value <= self.threshold - h  # type: ignore[operator]
        if self.comparison == "below":
            return value >= self.threshold + h  # type: ignore[operator]
        return self.low + h <= value <= self.high - h  # type: ignore[operator]

    def describe(self) -> str:
        if self.comparison == "outside":
            return f"outside {self.low:g}..{self.high:g}"
        return f"{self.comparison} {self.threshold:g}"

    def payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "measurand": self.measurand,
            "phase": self.phase,
            "comparison": self.comparison,
            "threshold": self.threshold,
            "low": self.low,
            "high": self.high,
            "severity": self.severity,
        }


def rules_from_file(path: Path) -> list[RuleSpec]:
    """``[[rules]]`` tables of a TOML file, validated."""
    with path.open("rb") as file:
        document = tomllib.load(file)
    return [RuleSpec.model_validate(entry) for entry in document.get("rules", [])]


async def sync_rules_file(connection: AsyncConnection, path: Path, now: datetime) -> int:
    """Create or replace every rule of the file, by name (source ``file``)."""
    specs = rules_from_file(path)
    for spec in specs:
        await alert_store.upsert_rule(connection, spec.model_dump(), source="file", now=now)
    return len(specs)


async def load_rules(connection: AsyncConnection) -> dict[int, Rule]:
    """The enabled rules by id, their ``charge_points`` matched to charge point ids now
    (identities unknown at this moment are left out until the next load)."""
    rows = await alert_store.rules(connection)
    identities = sorted({i for r in rows for i in (r["charge_points"] or [])})
    ids = await alert_store.charge_point_ids(connection, identities) if identities else {}
    rules: dict[int, Rule] = {}
    for row in rows:
        if not row["enabled"]:
            continue
        scope = None
        if row["charge_points"] is not None:
            scope = frozenset(ids[i] for i in row["charge_points"] if i in ids)
        rules[row["id"]] = Rule(
            id=row["id"],
            name=row["name"],
            measurand=row["measurand"],
            phase=row["phase"],
            comparison=row["comparison"],
            threshold=row["threshold"],
            low=row["low"],
            high=row["high"],
            hysteresis=row["hysteresis"],
            cooldown_seconds=row["cooldown_seconds"],
            severity=row["severity"],
            scope=scope,
        )
    return rules


class RuleKeeper:
    """This node's copy of the rules: loaded from the database and handed to ``apply``, again on
    every notice from another node (coalesced), after a bus reconnect, and every
    ``reload_interval``; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        bus: Bus,
        apply: Callable[[dict[int, Rule]], None],
        *,
        reload_interval: float = 60.0,
    ) -> None:
        self._engine = engine
        self._bus = bus
        self._apply = apply
        self.reload_interval = reload_interval
        self._origin = uuid.uuid4().hex  # tells our own notices apart (both buses echo them)
        self._lock = asyncio.Lock()
        self._stale = asyncio.Event()
        self._notices: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.reloads = 0  # loads done (tests, metrics)

    async def start(self) -> None:
        """Listen for notices. Before the first load: a change committed after that load's read
        still reaches us."""
        self._notices = await self._bus.subscribe([channels.INTERNAL_ALERT_RULES], max_pending=100)
        self._tasks = [
            asyncio.create_task(self._listen(self._notices), name="alert-rules-notices"),
            asyncio.create_task(self._keep_fresh(), name="alert-rules-reload"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._notices is not None:
            await self._notices.close()
            self._notices = None

    async def reload(self) -> None:
        """Load the rules from the database now."""
        # One at a time: a slower read of older rows must not overwrite a newer one.
        async with self._lock:
            async with self._engine.connect() as connection:
                rules = await load_rules(connection)
            self._apply(rules)
        self.reloads += 1

    async def notify(self) -> None:
        """Tell every other node that the rules changed (call after the commit)."""
        await self._bus.publish(channels.INTERNAL_ALERT_RULES, {"origin": self._origin})

    async def changed(self) -> None:
        """The rules changed in the database (committed): tell every node, and reload here.

        A failed reload here is retried in the background rather than raised: the change is
        committed and the other nodes have it.
        """
        await self.notify()
        try:
            await self.reload()
        except Exception as error:
            log.warning("alerts: reloading the rules failed (%s); retrying in background", error)
            self._stale.set()

    async def _listen(self, notices: Subscription) -> None:
        async for _channel, message in notices:
            if message.get("origin") != self._origin:
                self._stale.set()

    def _bus_reconnects(self) -> int | None:
        """The bus's reconnect count while it is connected; None while it is down, or for a bus
        that never reconnects (in-process). RedisBus reports reconnects only through these two
        attributes, no callback, so they are polled."""
        if not getattr(self._bus, "connected", False):
            return None
        reconnects = getattr(self._bus, "reconnects", None)
        return reconnects if isinstance(reconnects, int) else None

    async def _keep_fresh(self) -> None:
        seen = self._bus_reconnects()
        settling: tuple[int, float] | None = None  # a new connection: its count, when first seen
        last = time.monotonic()
        delay = _WATCH_INTERVAL
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), _WATCH_INTERVAL)
            reconnects = self._bus_reconnects()
            if reconnects is not None and reconnects != seen:
                # Notices sent while the connection was down never reach us: load again, once
                # the new connection has been up for a watch interval (its SUBSCRIBE answered,
                # so no notice can fall between that read and our listening).
                if settling is None or settling[0] != reconnects:
                    settling = (reconnects, time.monotonic())
                elif time.monotonic() - settling[1] >= _WATCH_INTERVAL:
                    seen, settling = reconnects, None
                    self._stale.set()
            if time.monotonic() - last >= self.reload_interval:
                self._stale.set()
            if not self._stale.is_set():
                continue
            await asyncio.sleep(_COALESCE)
            # Cleared before reading: a notice arriving during the read means one more load.
            self._stale.clear()
            last = time.monotonic()
            try:
                await self.reload()
            except Exception as error:
                # The database may be down: try again, less and less often, logged once.
                if not failing:
                    log.warning("alerts: reloading the rules failed (%s); retrying", error)
                failing = True
                self._stale.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reload_interval)
            else:
                if failing:
                    log.info("alerts: rules reloaded again")
                failing = False
                delay = _WATCH_INTERVAL
