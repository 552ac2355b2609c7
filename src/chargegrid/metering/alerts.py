"""Threshold alerts on meter values (CONFORMANCE M7: the CALLRESULT stays ``{}``).

A rule names a measurand (optional phase), a comparison (``above`` a threshold, ``below`` one, or
``outside`` a ``[low, high]`` range, in base units: W, V, A, Celsius, Wh), a severity and a scope
(every charge point, or listed identities). Per (rule, charge point, connector, phase):

* a value past the threshold **raises** an alert, unless the same key was resolved less than
  ``cooldown_seconds`` ago (so a value hovering at the threshold cannot raise a storm);
* the alert is **resolved** when a value is back in range by at least ``hysteresis``
  (above 50 kW with hysteresis 1 kW: raised at 50.1 kW, resolved only at or below 49 kW);
* a user **acknowledges** it through the API (operator role).

Evaluation is synchronous and cheap (a dict lookup per value; most measurands have no rule); it
runs after the values' batch committed. Storing, publishing and the webhook run in a background
worker, never on the charge point's critical path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tomllib
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock, isoformat_z
from chargegrid.store import alerts as alert_store
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.queries import measurand_name

log = logging.getLogger(__name__)

Comparison = Literal["above", "below", "outside"]
Severity = Literal["info", "warning", "critical"]


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


AlertKey = tuple[int, int, int, str | None]  # rule id, charge point id, connector id, phase


@dataclass(slots=True)
class OpenAlert:
    """An alert raised and not yet resolved; ``id`` once stored."""

    row: dict[str, Any]
    rule: Rule
    id: int | None = None
    stored: asyncio.Event = field(default_factory=asyncio.Event)


def alert_payload(
    row: dict[str, Any], identity: str, rule: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``alerts`` event payload, also the API's alert representation."""

    def when(value: datetime | None) -> str | None:
        return isoformat_z(value) if value is not None else None

    if row.get("acknowledged_at") is not None:
        state = "acknowledged"
    elif row.get("resolved_at") is not None:
        state = "resolved"
    else:
        state = "raised"
    return {
        "id": row.get("id"),
        "charge_point": identity,
        "connector_id": row["connector_id"],
        "session_id": row.get("transaction_id"),
        "rule": rule if rule is not None else {"id": row.get("rule_id"), "name": row["rule_name"]},
        "measurand": row["measurand"],
        "phase": row.get("phase"),
        "severity": row["severity"],
        "value": row["value"],
        "unit": row["unit"],
        "value_at": when(row["value_at"]),
        "message": row["message"],
        "state": state,
        "raised_at": when(row["raised_at"]),
        "resolved_at": when(row.get("resolved_at")),
        "resolved_value": row.get("resolved_value"),
        "acknowledged_at": when(row.get("acknowledged_at")),
        "acknowledged_by": row.get("acknowledged_by"),
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


class AlertEngine:
    """Evaluates committed values against the rules; stores and publishes alert changes."""

    def __init__(
        self,
        engine: AsyncEngine,
        writer: GroupCommitter,
        bus: Bus,
        clock: Clock,
        *,
        rules_file: Path | None = None,
        webhook_url: str | None = None,
        webhook_timeout: float = 5.0,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._bus = bus
        self._clock = clock
        self._rules_file = rules_file
        self._webhook_url = webhook_url
        self._webhook_timeout = webhook_timeout
        self._by_measurand: dict[str, list[Rule]] = {}
        self._rules: dict[int, Rule] = {}
        self._open: dict[AlertKey, OpenAlert] = {}
        self._quiet_until: dict[AlertKey, datetime] = {}  # cool-down after a resolve
        self._identities: dict[int, str] = {}
        self._queue: asyncio.Queue[tuple[str, OpenAlert, Any]] = asyncio.Queue(maxsize=100_000)
        self._worker: asyncio.Task[None] | None = None
        self._webhooks: set[asyncio.Task[None]] = set()
        self.dropped = 0  # alert changes not stored because the queue was full
        self.webhook_failures = 0

    async def start(self) -> None:
        if self._rules_file is not None:
            path = self._rules_file
            count = await self._writer.run(lambda c: sync_rules_file(c, path, self._clock.now()))
            log.info("alerts: %d rules from %s", count, path)
        await self.reload()
        async with self._engine.connect() as connection:
            for row in await alert_store.open_alerts(connection):
                rule = self._rules.get(row["rule_id"] or -1)
                if rule is None:
                    continue  # its rule is gone or disabled; it stays open until acknowledged
                open_alert = OpenAlert(row, rule, row["id"])
                open_alert.stored.set()
                key = (rule.id, row["charge_point_id"], row["connector_id"], row["phase"])
                self._open[key] = open_alert
        self._worker = asyncio.create_task(self._work(), name="alerts")

    async def stop(self) -> None:
        if self._worker is not None:
            # Store what was raised before stopping (the writer is still running).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), 5)
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        for task in list(self._webhooks):
            task.cancel()

    async def reload(self) -> None:
        """Read the rules again (after an API change)."""
        async with self._engine.connect() as connection:
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
        by_measurand: dict[str, list[Rule]] = {}
        for rule in rules.values():
            by_measurand.setdefault(rule.measurand, []).append(rule)
        self._rules, self._by_measurand = rules, by_measurand
        # Alerts of rules that no longer exist can no longer resolve here; forget them.
        for key in [k for k, a in self._open.items() if a.rule.id not in rules]:
            del self._open[key]
        for key, open_alert in self._open.items():
            open_alert.rule = rules[key[0]]

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    # -- evaluation (after each committed batch) -------------------------------------------

    def observe(self, rows: list[Sequence[Any]]) -> None:
        """Committed rows shaped like :data:`chargegrid.store.rollups.RETURNED`."""
        by_measurand = self._by_measurand
        if not by_measurand:
            return
        for row in rows:
            rules = by_measurand.get(row[4])
            if rules is None or row[8] is None:
                continue
            for rule in rules:
                self._evaluate(rule, row)

    def _evaluate(self, rule: Rule, row: Sequence[Any]) -> None:
        charge_point_id, connector_id, tx, at, measurand, phase, _location, unit, value = row
        if rule.phase is not None and rule.phase != phase:
            return
        if rule.scope is not None and charge_point_id not in rule.scope:
            return
        value = float(value)
        key = (rule.id, charge_point_id, connector_id, phase)
        open_alert = self._open.get(key)
        now = self._clock.now()
        if open_alert is not None:
            if rule.back_in_range(value):
                del self._open[key]
                if rule.cooldown_seconds:
                    self._quiet_until[key] = now + timedelta(seconds=rule.cooldown_seconds)
                self._submit("resolve", open_alert, (now, value))
            return
        if not rule.tripped(value):
            return
        quiet = self._quiet_until.get(key)
        if quiet is not None:
            if now < quiet:
                return
            del self._quiet_until[key]
        open_alert = OpenAlert(
            {
                "rule_id": rule.id,
                "rule_name": rule.name,
                "charge_point_id": charge_point_id,
                "connector_id": connector_id,
                "transaction_id": tx,
                "measurand": measurand,
                "phase": phase,
                "severity": rule.severity,
                "value": value,
                "unit": unit,
                "value_at": at,
                "message": f"{measurand}{' ' + phase if phase else ''} {value:g} {unit} "
                f"{rule.describe()} ({rule.name})",
                "raised_at": now,
            },
            rule,
        )
        self._open[key] = open_alert
        self._submit("raise", open_alert, None)

    def _submit(self, action: str, open_alert: OpenAlert, argument: Any) -> None:
        try:
            self._queue.put_nowait((action, open_alert, argument))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("alerts: queue full, %s of %s not stored", action, open_alert.rule.name)

    # -- storing and publishing (background) -----------------------------------------------

    async def _work(self) -> None:
        while True:
            action, open_alert, argument = await self._queue.get()
            try:
                await self._apply(action, open_alert, argument)
            except Exception:
                log.exception("alerts: could not store %s of %s", action, open_alert.rule.name)
            finally:
                self._queue.task_done()

    async def _apply(self, action: str, open_alert: OpenAlert, argument: Any) -> None:
        row = open_alert.row
        if action == "raise":
            row = dict(row)
            open_alert.id = await self._retry(lambda c: alert_store.add_alert(c, row))
            open_alert.row["id"] = open_alert.id
            open_alert.stored.set()
        else:
            at, value = argument
            if open_alert.id is None:
                return  # never stored (the database was down throughout)
            alert_id = open_alert.id
            await self._retry(lambda c: alert_store.resolve_alert(c, alert_id, at=at, value=value))
            open_alert.row.update(resolved_at=at, resolved_value=value)
        await self.publish(open_alert.row, open_alert.rule.payload())

    async def _retry(self, unit: Any) -> Any:
        delay = 0.2
        for attempt in range(5):
            try:
                return await self._writer.run(unit)
            except Exception:
                if attempt == 4:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def identity(self, charge_point_id: int) -> str:
        identity = self._identities.get(charge_point_id)
        if identity is None:
            async with self._engine.connect() as connection:
                identity = await alert_store.identity(connection, charge_point_id) or ""
            self._identities[charge_point_id] = identity
        return identity

    async def publish(self, row: dict[str, Any], rule: dict[str, Any] | None) -> None:
        """Publish an alert change on the bus (charge point and fleet) and to the webhook."""
        identity = await self.identity(row["charge_point_id"])
        payload = alert_payload(row, identity, rule)
        await self._bus.publish(channels.charge_point(identity, channels.ALERTS), payload)
        await self._bus.publish(channels.fleet(channels.ALERTS), payload)
        if self._webhook_url is not None and len(self._webhooks) < 100:
            task = asyncio.create_task(self._post(payload))
            self._webhooks.add(task)
            task.add_done_callback(self._webhooks.discard)

    async def _post(self, payload: dict[str, Any]) -> None:
        url = self._webhook_url
        assert url is not None
        request = urllib.request.Request(
            url,
            data=orjson.dumps(payload),
            headers={"Content-Type": "application/json", "User-Agent": "chargegrid"},
            method="POST",
        )

        def post() -> None:
            with urllib.request.urlopen(request, timeout=self._webhook_timeout) as response:
                response.read()

        try:
            await asyncio.to_thread(post)
        except Exception as error:  # fire and forget: a dead webhook never blocks anything
            self.webhook_failures += 1
            log.warning("alerts: webhook %s failed: %s", url, error)

    async def drain(self) -> None:
        """Wait until every alert change so far is stored and published (tests)."""
        await self._queue.join()
