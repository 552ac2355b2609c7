"""Threshold alerts on meter values (CONFORMANCE M7: the CALLRESULT stays ``{}``).

A rule names a measurand (optional phase), a comparison (``above`` a threshold, ``below`` one, or
``outside`` a ``[low, high]`` range, in base units: W, V, A, Celsius, Wh), a severity and a scope
(every charge point, or listed identities). Per (rule, charge point, connector, phase):

* a value past the threshold **raises** an alert, unless the same key was resolved less than
  ``cooldown_seconds`` ago (so a value hovering at the threshold cannot raise a storm);
* the alert is **resolved** when a value is back in range by at least ``hysteresis``
  (above 50 kW with hysteresis 1 kW: raised at 50.1 kW, resolved only at or below 49 kW);
* a user **acknowledges** it through the API (operator role). Acknowledging is a fact of its own
  (``acknowledged``, ``acknowledged_at``, ``acknowledged_by``) beside the condition's ``state``
  (``raised`` or ``resolved``): an acknowledged alert whose value is still out of range is still
  raised, and resolves as usual.

A rule without a phase on a measurand whose phases add up (active and reactive power) is checked
against the charge point's **total**: the value sent without a phase or, when a sampled meterValue
carries only per-phase values (L1, L2, L3), their sum. Other measurands (voltage, current,
temperature, ...) have no meaningful total, so such a rule checks each value whatever its phase.

Evaluation is synchronous and cheap (a dict lookup per value; most measurands have no rule); it
runs after the values' batch committed. Storing, publishing and the webhook run in a background
worker, never on the charge point's critical path.

The rules themselves, the rules file, and how every node keeps its copy of them current:
:mod:`chargegrid.metering.alert_rules`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock, isoformat_z
from chargegrid.metering.alert_rules import Rule, RuleKeeper
from chargegrid.metering.alert_rules import sync_rules_file as sync_rules_file  # the CLI's import
from chargegrid.store import alerts as alert_store
from chargegrid.store.group_commit import GroupCommitter

log = logging.getLogger(__name__)

# Measurands whose per-phase values add up to the charge point's total (power is additive across
# lines; voltage, current or temperature are not).
PHASE_SUMMED = frozenset(
    {"Power.Active.Import", "Power.Active.Export", "Power.Reactive.Import", "Power.Reactive.Export"}
)
# The line each phase value measures: L1 and L1-N are the same line, so a meterValue carrying both
# counts it once. N and line-to-line values (L1-L2) are not part of a total.
_LINE = {"L1": 1, "L2": 2, "L3": 3, "L1-N": 1, "L2-N": 2, "L3-N": 3}

AlertKey = tuple[int, int, int, str | None]  # rule id, charge point id, connector id, phase


@dataclass(slots=True)
class OpenAlert:
    """An alert raised and not yet resolved; ``id`` once stored."""

    row: dict[str, Any]
    rule: Rule
    id: int | None = None
    stored: asyncio.Event = field(default_factory=asyncio.Event)


AlertEvent = Literal["raised", "resolved", "acknowledged"]


def alert_payload(
    row: dict[str, Any],
    identity: str,
    rule: dict[str, Any] | None,
    event: AlertEvent | None = None,
) -> dict[str, Any]:
    """The API's alert representation; with ``event`` (what just happened), the ``alerts`` event
    and webhook payload.

    ``state`` is the condition only (``raised`` until a value is back in range, then
    ``resolved``); acknowledging never changes it and shows in ``acknowledged`` instead.
    """

    def when(value: datetime | None) -> str | None:
        return isoformat_z(value) if value is not None else None

    head: dict[str, Any] = {} if event is None else {"event": event}
    return {
        **head,
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
        "state": "resolved" if row.get("resolved_at") is not None else "raised",
        "raised_at": when(row["raised_at"]),
        "resolved_at": when(row.get("resolved_at")),
        "resolved_value": row.get("resolved_value"),
        "acknowledged": row.get("acknowledged_at") is not None,
        "acknowledged_at": when(row.get("acknowledged_at")),
        "acknowledged_by": row.get("acknowledged_by"),
    }


def _line_total(lines: dict[int, Sequence[Any]]) -> tuple[Sequence[Any], str] | None:
    """The total of one sampled meterValue's per-line values (line number -> row), as a row
    without a phase, and the label its message gives it (``L1+L2+L3``); None if the units
    differ (they do not add up)."""
    rows = [lines[n] for n in sorted(lines)]
    if len({row[7] for row in rows}) != 1:
        return None
    cp, connector, tx, at, measurand, _phase, location, unit, _value = rows[0]
    total = sum(float(row[8]) for row in rows)
    label = "+".join(str(row[5]) for row in rows)
    return (cp, connector, tx, at, measurand, None, location, unit, total), label


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
        reload_interval: float = 60.0,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._bus = bus
        self._clock = clock
        self._rules_file = rules_file
        self._webhook_url = webhook_url
        self._webhook_timeout = webhook_timeout
        self._by_measurand: dict[str, list[Rule]] = {}
        # Rules without a phase on a PHASE_SUMMED measurand (they check totals), by measurand.
        self._total_rules: dict[str, list[Rule]] = {}
        self._rules: dict[int, Rule] = {}
        self._open: dict[AlertKey, OpenAlert] = {}
        self._quiet_until: dict[AlertKey, datetime] = {}  # cool-down after a resolve
        self._identities: dict[int, str] = {}
        self._queue: asyncio.Queue[tuple[str, OpenAlert, Any]] = asyncio.Queue(maxsize=100_000)
        self._worker: asyncio.Task[None] | None = None
        self._webhooks: set[asyncio.Task[None]] = set()
        self.dropped = 0  # alert changes not stored because the queue was full
        self.webhook_failures = 0
        self._keeper = RuleKeeper(engine, bus, self._use_rules, reload_interval=reload_interval)

    async def start(self) -> None:
        await self._keeper.start()
        if self._rules_file is not None:
            path = self._rules_file
            count = await self._writer.run(lambda c: sync_rules_file(c, path, self._clock.now()))
            log.info("alerts: %d rules from %s", count, path)
            if count:
                await self._keeper.notify()
        await self.reload()
        async with self._engine.connect() as connection:
            for row in await alert_store.open_alerts(connection):
                rule = self._rules.get(row["rule_id"] or -1)
                if rule is None:
                    continue  # its rule is gone or disabled: it stays raised (acknowledge it)
                open_alert = OpenAlert(row, rule, row["id"])
                open_alert.stored.set()
                key = (rule.id, row["charge_point_id"], row["connector_id"], row["phase"])
                self._open[key] = open_alert
        self._worker = asyncio.create_task(self._work(), name="alerts")

    async def stop(self) -> None:
        await self._keeper.stop()
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

    async def rules_changed(self) -> None:
        """The rules changed in the database (committed): every node reloads them, this one
        before returning."""
        await self._keeper.changed()

    async def reload(self) -> None:
        """Read the rules again from the database."""
        await self._keeper.reload()

    @property
    def reloads(self) -> int:
        return self._keeper.reloads

    def _use_rules(self, rules: dict[int, Rule]) -> None:
        by_measurand: dict[str, list[Rule]] = {}
        for rule in rules.values():
            by_measurand.setdefault(rule.measurand, []).append(rule)
        total_rules: dict[str, list[Rule]] = {}
        for measurand in PHASE_SUMMED.intersection(by_measurand):
            whole = [r for r in by_measurand[measurand] if r.phase is None]
            if whole:
                total_rules[measurand] = whole
        self._rules, self._by_measurand, self._total_rules = rules, by_measurand, total_rules
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
        total_rules = self._total_rules
        # One reading of the clock for the batch: it was once per value and rule, ~2 % of the
        # event loop's time under load (docs/benchmarks.md, session 8).
        now = self._clock.now()
        # Per-line values of measurands checked as totals, by sampled meterValue (charge point,
        # connector, session, timestamp, measurand, location): line number -> its first row.
        lines: dict[tuple[Any, ...], dict[int, Sequence[Any]]] | None = None
        for row in rows:
            measurand = row[4]
            rules = by_measurand.get(measurand)
            if rules is None or row[8] is None:
                continue
            phase = row[5]
            if phase is None or measurand not in total_rules:
                for rule in rules:
                    self._evaluate(rule, row, now)
                continue
            line = _LINE.get(phase)
            if line is not None:
                if lines is None:
                    lines = {}
                key = (row[0], row[1], row[2], row[3], measurand, row[6])
                # One line sent twice (L1 and L1-N, or in two contexts): counted once.
                lines.setdefault(key, {}).setdefault(line, row)
            for rule in rules:
                if rule.phase is not None:
                    self._evaluate(rule, row, now)
                elif (rule.id, row[0], row[1], phase) in self._open:
                    # Raised per phase by a version that did not check totals: this value can
                    # still resolve it (it raises nothing new).
                    self._evaluate(rule, row, now)
        if lines is not None:
            self._observe_sums(rows, lines, now)

    def _observe_sums(
        self,
        rows: list[Sequence[Any]],
        lines: dict[tuple[Any, ...], dict[int, Sequence[Any]]],
        now: datetime,
    ) -> None:
        """Check the sum of the lines of each meterValue that sent no total of its own. (A
        batch holds whole messages, so all of a meterValue's rows are in ``rows``.)"""
        reported = {
            (row[0], row[1], row[2], row[3], row[4], row[6])
            for row in rows
            if row[5] is None and row[8] is not None and row[4] in self._total_rules
        }
        for key, by_line in lines.items():
            if key in reported:
                continue  # the charge point's own total was checked already
            summed = _line_total(by_line)
            if summed is None:
                continue
            row, label = summed
            for rule in self._total_rules[key[4]]:
                self._evaluate(rule, row, now, label)

    def _evaluate(
        self, rule: Rule, row: Sequence[Any], now: datetime, label: str | None = None
    ) -> None:
        """``label``: how the message names the value's phase (a sum: ``L1+L2+L3``)."""
        charge_point_id, connector_id, tx, at, measurand, phase, _location, unit, value = row
        if rule.phase is not None and rule.phase != phase:
            return
        if rule.scope is not None and charge_point_id not in rule.scope:
            return
        value = float(value)
        if label is None:
            label = phase
        key = (rule.id, charge_point_id, connector_id, phase)
        open_alert = self._open.get(key)
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
                "message": f"{measurand}{' ' + label if label else ''} {value:g} {unit} "
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
            acknowledgement = await self._retry(
                lambda c: alert_store.resolve_alert(c, alert_id, at=at, value=value)
            )
            open_alert.row.update(acknowledgement, resolved_at=at, resolved_value=value)
        event: AlertEvent = "raised" if action == "raise" else "resolved"
        await self.publish(open_alert.row, open_alert.rule.payload(), event)

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

    async def publish(
        self, row: dict[str, Any], rule: dict[str, Any] | None, event: AlertEvent
    ) -> None:
        """Publish an alert change on the bus (charge point and fleet) and to the webhook."""
        identity = await self.identity(row["charge_point_id"])
        payload = alert_payload(row, identity, rule, event)
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
