"""One simulated OCPP 1.6J charge point: one asyncio task, a timer heap, an offline queue.

Behaviour follows what real chargers do: boot, report every connector's status, heartbeat at the
interval the CSMS gave, authorize, run sessions with a realistic power curve and periodic meter
values, stop with transactionData; now and then a connector faults, the network drops (sometimes
right after sending a transaction message, so its answer is lost) or the charger stays offline for
a while. Transaction messages (StartTransaction, MeterValues inside a transaction,
StopTransaction) are queued and delivered in order, so an offline period is replayed on reconnect;
a StartTransaction made offline gets its transactionId on replay, and the messages queued behind it
are rewritten to carry it, as OCPP 1.6 §4.8 expects.

CSMS-initiated CALLs are answered synchronously in the socket callback (no task per message);
anything they set in motion (a remote start, a reset, a triggered message) goes to an inbox the
charge point's task works off first.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from chargegrid.simulator.physics import (
    Charger,
    Vehicle,
    power_w,
    sampled_values,
    transaction_reading,
)
from chargegrid.simulator.stats import FleetStats, SessionRecord
from chargegrid.simulator.transport import (
    CallErrorReceived,
    ConnectionLost,
    HandshakeRejected,
    OcppSocket,
    connect,
)

__all__ = ["SimConfig", "SimulatedChargePoint"]

log = logging.getLogger(__name__)

VENDOR = "chargegrid-sim"
TRANSACTIONAL = frozenset({"StartTransaction", "MeterValues", "StopTransaction"})
FAULT_CODES = ("GroundFailure", "HighTemperature", "PowerMeterFailure", "OverCurrentFailure")
TRIGGERABLE = frozenset(
    {
        "BootNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StatusNotification",
    }
)


@dataclass
class SimConfig:
    """How a fleet behaves. Durations marked *sim* are simulated seconds (divided by ``speed``)."""

    url: str
    id_prefix: str = "SIM"
    id_tags: tuple[str, ...] = ("SIMTAG",)
    auth_key: str | None = None
    profile: str = "realistic"  # or "stress"
    seed: int = 1
    speed: float = 1.0  # simulated seconds per real second
    connectors: int = 0  # per charge point; 0: 1 or 2 at random
    meter_interval: float = 5.0  # sim
    idle_mean: float = 120.0  # sim: mean gap between sessions on a connector
    session_min: float = 600.0  # sim: a driver stays at least this long...
    session_max: float = 5400.0  # sim: ...and at most this long (unless the car is full first)
    fault_rate: float = 0.02  # faults per connector per sim hour
    offline_rate: float = 0.05  # network drops per charge point per sim hour
    offline_mean: float = 60.0  # sim: mean time offline after a drop
    call_timeout: float = 30.0  # real
    connect_timeout: float = 10.0  # real
    local_addresses: tuple[str, ...] = ()  # source addresses to spread connections over

    def real(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed


@dataclass
class Session:
    """A session on one connector, from StartTransaction to StopTransaction."""

    connector_id: int
    id_tag: str
    meter_start: int
    started: str
    vehicle: Vehicle
    departure: float  # sim time the driver leaves
    last_tick: float  # sim time of the last meter integration
    reservation_id: int | None = None
    transaction_id: int | None = None  # known once the CSMS answered StartTransaction
    refused: bool = False  # StartTransaction got a CALLERROR: its followers are dropped
    # The last meter reading the CSMS acknowledged for this session (what it should show).
    last_register: int | None = None  # Wh
    last_power: float | None = None  # W


@dataclass
class Connector:
    id: int
    status: str = "Available"
    error_code: str = "NoError"
    register: float = 0.0  # Wh, the connector's energy meter
    session: Session | None = None
    busy: bool = False  # a remote start is on its way (keeps arrivals off it)
    operative: bool = True
    pending_inoperative: bool = False
    reservation: tuple[int, str] | None = None  # (reservationId, idTag)
    generation: int = 0  # bumps when a session ends, so stale meter ticks are ignored
    temperature: float = 25.0


@dataclass
class Queued:
    """A transaction message waiting to be delivered, in order."""

    action: str
    payload: dict[str, Any]
    session: Session | None
    sampled: int = 0  # sampled values it carries (for the summary)
    attempts: int = 0


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    kind: str = field(compare=False)
    connector: int = field(compare=False, default=0)
    generation: int = field(compare=False, default=0)


class SimulatedChargePoint:
    """One charge point. ``await run(deadline)`` drives it until the loop time ``deadline``."""

    def __init__(self, identity: str, index: int, config: SimConfig, stats: FleetStats) -> None:
        self.identity = identity
        self.index = index
        self.config = config
        self.stats = stats
        # Deterministic per charge point: the same seed gives every CP the same behaviour.
        self.rng = random.Random(f"{config.seed}:{identity}")
        self.charger = Charger.pick(self.rng)
        count = config.connectors or self.rng.choice((1, 2))
        self.connectors = {n: Connector(n) for n in range(1, count + 1)}
        for connector in self.connectors.values():
            connector.register = float(self.rng.randrange(100_000, 5_000_000))
        self.initial_energy = sum(int(c.register) for c in self.connectors.values())
        self.ws: OcppSocket | None = None
        self.registered = False
        self.offline_until = 0.0
        self.stopping = False
        self.queue: deque[Queued] = deque()
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.wake = asyncio.Event()
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._heartbeat_generation = 0
        self.heartbeat_interval = 300.0
        self._backoff = 1.0
        self._last_ms = 0
        self._local_list_version = 0
        self._draining = False
        self.holding = False  # the run is over: stay connected, change nothing, until stop()
        self._status_dirty = False  # a status change did not reach the CSMS (offline)
        self.configuration: dict[str, tuple[bool, str]] = {
            # key: (readonly, value) — the Core profile's keys and a few of the others.
            "AllowOfflineTxForUnknownId": (False, "false"),
            "AuthorizationCacheEnabled": (False, "true"),
            "AuthorizeRemoteTxRequests": (False, "false"),
            "ClockAlignedDataInterval": (False, "900"),
            "ConnectionTimeOut": (False, "60"),
            "ConnectorPhaseRotation": (False, "0.RST"),
            "GetConfigurationMaxKeys": (True, "50"),
            "HeartbeatInterval": (False, "300"),
            "LocalAuthorizeOffline": (False, "true"),
            "LocalPreAuthorize": (False, "false"),
            "MeterValuesAlignedData": (False, "Energy.Active.Import.Register"),
            "MeterValuesSampledData": (
                False,
                "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage,SoC,"
                "Temperature",
            ),
            "MeterValueSampleInterval": (False, str(int(config.meter_interval))),
            "NumberOfConnectors": (True, str(count)),
            "ResetRetries": (False, "3"),
            "StopTransactionOnEVSideDisconnect": (False, "true"),
            "StopTransactionOnInvalidId": (False, "true"),
            "StopTxnAlignedData": (False, ""),
            "StopTxnSampledData": (False, "Energy.Active.Import.Register"),
            "SupportedFeatureProfiles": (
                True,
                "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,"
                "RemoteTrigger",
            ),
            "TransactionMessageAttempts": (False, "3"),
            "TransactionMessageRetryInterval": (False, "10"),
            "UnlockConnectorOnEVSideDisconnect": (False, "true"),
            "WebSocketPingInterval": (False, "30"),
            "LocalAuthListEnabled": (False, "true"),
            "LocalAuthListMaxLength": (True, "1000"),
            "SendLocalListMaxLength": (True, "100"),
            "ReserveConnectorZeroSupported": (True, "false"),
            "ChargeProfileMaxStackLevel": (True, "10"),
            "ChargingScheduleAllowedChargingRateUnit": (True, "Current,Power"),
            "ChargingScheduleMaxPeriods": (True, "24"),
            "MaxChargingProfilesInstalled": (True, "10"),
        }

    # clock and timers ---------------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _sim_now(self) -> float:
        return self._now() * self.config.speed

    def _timestamp(self) -> str:
        """UTC now with milliseconds, strictly increasing per charge point (so no two samples of
        a series share a timestamp and are taken for replays of each other)."""
        ms = int(time.time() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms + 1
        self._last_ms = ms
        moment = datetime.fromtimestamp(ms // 1000, UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"

    def _at(self, delay_real: float, kind: str, connector: int = 0, generation: int = 0) -> None:
        heapq.heappush(
            self._timers,
            _Timer(
                self._now() + max(0.0, delay_real), next(self._seq), kind, connector, generation
            ),
        )

    def _after(self, delay_sim: float, kind: str, connector: int = 0, generation: int = 0) -> None:
        self._at(self.config.real(delay_sim), kind, connector, generation)

    def _exp(self, mean: float) -> float:
        return self.rng.expovariate(1.0 / mean) if mean > 0 else 0.0

    def _notify(self) -> None:
        self.wake.set()

    # main loop ----------------------------------------------------------------------------------

    async def run(self, deadline: float, *, hold: bool = False) -> None:
        """Behave until loop time ``deadline`` (or ``stop()``), then deliver what is queued.

        With ``hold``, the charge point does not close at the deadline: it comes back online if
        it was offline, delivers what it queued and reports its statuses again, then stays
        connected without changing anything (no new sessions, readings, faults or outages; it
        still answers the CSMS) until ``stop()``. A fleet in that state is :attr:`settled`, so
        what it did can be compared with what the CSMS shows without a moving target."""
        self._at(0, "connect")
        if self.config.profile == "realistic":
            for connector in self.connectors.values():
                self._after(self._exp(self.config.idle_mean), "arrive", connector.id)
                if self.config.fault_rate > 0:
                    self._after(self._exp(3600.0 / self.config.fault_rate), "fault", connector.id)
            if self.config.offline_rate > 0:
                self._after(self._exp(3600.0 / self.config.offline_rate), "offline")
        try:
            await self._loop(deadline)
            if hold and not self.stopping:
                self._enter_hold()
                await self._loop(math.inf)
        finally:
            await self._finish()

    async def _loop(self, deadline: float) -> None:
        while not self.stopping and self._now() < deadline:
            while self.inbox and not self.stopping:
                await self._work(self.inbox.popleft())
            if self.holding:
                await self._settle()
            elif self.config.profile == "stress" and self.registered and self._online:
                await self._stress_step()
                continue
            when = self._timers[0].when if self._timers else deadline
            delay = min(when, deadline) - self._now()
            if delay > 0 or not self._timers:
                self.wake.clear()
                if self.inbox or self.stopping:
                    continue
                try:
                    async with asyncio.timeout(max(delay, 0.0) if delay < math.inf else None):
                        await self.wake.wait()
                except TimeoutError:
                    pass
                continue
            timer = heapq.heappop(self._timers)
            await self._timer(timer)

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    # holding still at the end of a run ----------------------------------------------------------

    def _enter_hold(self) -> None:
        self.holding = True
        self.offline_until = 0.0  # an outage in progress ends now
        self._timers = [t for t in self._timers if t.kind in ("connect", "boot")]
        heapq.heapify(self._timers)
        if not self._online:
            self._at(0, "connect")

    async def _settle(self) -> None:
        """While holding: deliver the queue and any status the CSMS missed."""
        if not (self._online and self.registered):
            return
        if self.queue:
            await self._drain()
        if self._status_dirty and self._online:
            await self._status_all()

    @property
    def online(self) -> bool:
        """Connected and accepted by the CSMS."""
        return self._online and self.registered

    @property
    def settled(self) -> bool:
        """Holding, online, and the CSMS has been told everything."""
        return (
            self.holding
            and self._online
            and self.registered
            and not self.queue
            and not self.inbox
            and not self._status_dirty
            and not self._draining
        )

    def snapshot(self) -> dict[str, Any]:
        """What this charge point has told the CSMS (acknowledged), for comparisons."""
        sessions = []
        for connector in self.connectors.values():
            session = connector.session
            if session is None or session.transaction_id is None or session.refused:
                continue
            sessions.append(
                {
                    "transaction_id": session.transaction_id,
                    "connector_id": connector.id,
                    "id_tag": session.id_tag,
                    "meter_start": session.meter_start,
                    "started_at": session.started,
                    "last_register": session.last_register,
                    "last_power": session.last_power,
                }
            )
        return {
            "online": self.online,
            "settled": self.settled,
            "connectors": {
                str(c.id): {"status": c.status, "error_code": c.error_code}
                for c in self.connectors.values()
            },
            "sessions": sessions,
            "queued": len(self.queue),
            "energy_wh": sum(int(c.register) for c in self.connectors.values())
            - self.initial_energy,
        }

    @property
    def _online(self) -> bool:
        return self.ws is not None and self.ws.is_open

    async def _timer(self, timer: _Timer) -> None:
        kind = timer.kind
        if self.holding and kind not in ("connect", "boot"):
            return  # nothing new happens while holding still
        connector = self.connectors.get(timer.connector)
        if kind == "connect":
            await self._connect()
        elif kind == "boot":
            await self._boot()
        elif kind == "heartbeat":
            if timer.generation == self._heartbeat_generation and self.registered:
                await self._call("Heartbeat", {})
                await self._drain()  # a stuck queue is retried at least this often
                self._at(self.heartbeat_interval, "heartbeat", 0, timer.generation)
        elif kind == "arrive" and connector is not None:
            await self._arrive(connector)
        elif kind == "tick" and connector is not None:
            if connector.session is not None and timer.generation == connector.generation:
                await self._tick(connector)
        elif kind == "fault" and connector is not None:
            await self._fault(connector)
            self._after(self._exp(3600.0 / self.config.fault_rate), "fault", connector.id)
        elif kind == "recover" and connector is not None:
            connector.error_code = "NoError"
            await self._status(connector, "Available" if connector.operative else "Unavailable")
            self._after(self._exp(self.config.idle_mean), "arrive", connector.id)
        elif kind == "offline":
            await self._go_offline()
            self._after(self._exp(3600.0 / self.config.offline_rate), "offline")
        elif (
            kind == "expire"
            and connector is not None
            and connector.reservation
            and connector.reservation[0] == timer.generation
        ):
            connector.reservation = None
            if connector.session is None and not connector.busy:
                await self._status(connector, "Available")

    # connection ----------------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._online or self.stopping:
            return
        if self._now() < self.offline_until:
            self._at(self.offline_until - self._now(), "connect")
            return
        addresses = self.config.local_addresses
        local = addresses[self.index % len(addresses)] if addresses else None
        try:
            ws = await connect(
                self.config.url,
                self.identity,
                handler=self._handle,
                auth_key=self.config.auth_key,
                local_addr=local,
                timeout=self.config.connect_timeout,
            )
        except HandshakeRejected as error:
            self.stats.connect_failures[f"HTTP {error.status}" if error.status else "closed"] += 1
            self._retry_connect()
            return
        except (OSError, TimeoutError) as error:
            self.stats.connect_failures[type(error).__name__] += 1
            self._retry_connect()
            return
        self.ws = ws
        ws.on_unexpected = self._unexpected
        ws.closed.add_done_callback(functools.partial(self._closed, ws))
        self.stats.connects += 1
        self.stats.connected += 1
        self._backoff = 1.0
        await self._boot()

    def _retry_connect(self) -> None:
        self._at(self._backoff * self.rng.uniform(0.5, 1.5), "connect")
        self._backoff = min(self._backoff * 2, 30.0)

    def _closed(self, ws: OcppSocket, _future: asyncio.Future[None]) -> None:
        self.stats.connected -= 1
        self.stats.disconnects += 1
        if ws is self.ws:
            self.ws = None
            self.registered = False
            self._heartbeat_generation += 1
            if not self.stopping and self._now() >= self.offline_until:
                # Not our doing (server closed, network): come back after a short pause.
                self._retry_connect()
        self.wake.set()

    def _unexpected(self, what: str) -> None:
        self.stats.unexpected[what[:60]] += 1

    async def _boot(self) -> None:
        result = await self._call(
            "BootNotification",
            {
                "chargePointVendor": VENDOR,
                "chargePointModel": "DC-150" if self.charger.dc else "AC-22",
                "chargePointSerialNumber": f"{self.identity}-SN"[-25:],
                "firmwareVersion": "1.6.3",
                "meterType": "EM-3P",
            },
        )
        if result is None:
            if self._online:
                self._at(10.0, "boot")
            return
        interval = float(result.get("interval") or 0) or 300.0
        if result.get("status") != "Accepted":
            self.stats.rejected[f"BootNotification: {result.get('status')}"] += 1
            self._at(min(interval, 60.0), "boot")
            return
        self.registered = True
        self.heartbeat_interval = interval
        self.configuration["HeartbeatInterval"] = (False, str(int(interval)))
        self._heartbeat_generation += 1
        self._at(interval, "heartbeat", 0, self._heartbeat_generation)
        await self._status_all()
        if self.queue:
            self.stats.replayed += len(self.queue)
        await self._drain()

    async def _status_all(self) -> None:
        self._status_dirty = False
        result = await self._call(
            "StatusNotification",
            {
                "connectorId": 0,
                "errorCode": "NoError",
                "status": "Available",
                "timestamp": self._timestamp(),
            },
        )
        if result is None and not self._online:
            self._status_dirty = True
        for connector in self.connectors.values():
            await self._status(connector, connector.status, connector.error_code)

    def go_offline(self, seconds: float, *, lose_ack: bool = True) -> None:
        """Drop the network now for ``seconds`` (real), losing the answer to the message in
        flight when ``lose_ack`` (tests and demos use this to force a replay)."""
        self.inbox.append(("offline", seconds, lose_ack))
        self.wake.set()

    async def _go_offline(self, seconds: float | None = None, lose_ack: bool | None = None) -> None:
        """Lose the network for a while; transaction messages queue up meanwhile."""
        if not self._online or self.stopping:
            return
        ws = self.ws
        assert ws is not None
        if seconds is None:
            short = self.rng.random() < 0.5
            seconds = (
                self.rng.uniform(0.5, 2.0)
                if short
                else self.config.real(self._exp(self.config.offline_mean))
            )
        self.offline_until = self._now() + seconds
        self.stats.offline_periods += 1
        charging = [c for c in self.connectors.values() if c.session is not None]
        lose = self.rng.random() < 0.5 if lose_ack is None else lose_ack
        if not self.queue and charging and lose:
            # The network fails while a meter reading is on its way.
            self.queue.append(self._meter_item(self.rng.choice(charging)))
        if self.queue and lose:
            # The message goes out but its answer never comes back: it must be replayed and the
            # CSMS must store it once.
            head = self.queue[0]
            if self._resolve(head):
                ws.call_future(head.action, head.payload).add_done_callback(_ignore)
                self.stats.lost_acks += 1
                self.stats.lost_ack_actions[head.action] += 1
        ws.abort()
        self._at(self.offline_until - self._now(), "connect")

    async def _finish(self) -> None:
        """Deliver what is queued (reconnecting once if offline), then close cleanly."""
        self.stopping = True
        if self.queue:
            if not self._online:
                self.stopping = False
                self.offline_until = 0.0
                try:
                    async with asyncio.timeout(self.config.connect_timeout + 5):
                        await self._connect()
                except TimeoutError:
                    pass
                self.stopping = True
            elif self.registered:
                await self._drain()
        self.stats.undelivered[self.identity] = len(self.queue)
        self.stats.energy_wh[self.identity] = (
            sum(int(c.register) for c in self.connectors.values()) - self.initial_energy
        )
        if self.ws is not None and self.ws.is_open:
            ws = self.ws
            ws.close(1000, "simulation over")
            try:
                async with asyncio.timeout(3):
                    await ws.closed
            except TimeoutError:
                ws.abort()

    # calls ----------------------------------------------------------------------------------------

    async def _call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A CALL now, if online; ``None`` when it failed (counted) or could not be sent."""
        ws = self.ws
        if ws is None or not ws.is_open:
            return None
        if not self.registered and action != "BootNotification":
            return None
        self.stats.sent[action] += 1
        try:
            result = await ws.call(action, payload, self.config.call_timeout)
        except CallErrorReceived as error:
            self.stats.call_errors[f"{action}: {error.code}"] += 1
            log.debug("%s %s: %s", self.identity, action, error)
            return None
        except TimeoutError:
            self.stats.timeouts[action] += 1
            return None
        except ConnectionLost:
            return None
        self.stats.answered[action] += 1
        return result

    async def _transaction_message(
        self, action: str, payload: dict[str, Any], session: Session | None, sampled: int = 0
    ) -> None:
        self.queue.append(Queued(action, payload, session, sampled))
        await self._drain()

    def _resolve(self, item: Queued) -> bool:
        """Fill in the transactionId of a message queued before its StartTransaction was
        answered; ``False`` if it can never be sent."""
        session = item.session
        if item.action == "StartTransaction" or session is None:
            return True
        if session.transaction_id is None:
            return False
        item.payload["transactionId"] = session.transaction_id
        return True

    async def _drain(self) -> None:
        """Deliver queued transaction messages in order while online."""
        if self._draining:
            return
        self._draining = True
        try:
            while self.queue and self.registered and self._online:
                item = self.queue[0]
                if not self._resolve(item):
                    assert item.session is not None
                    if item.session.refused:
                        self.queue.popleft()
                        self.stats.dropped += 1
                        continue
                    break  # cannot happen: its StartTransaction is ahead of it in the queue
                ws = self.ws
                assert ws is not None
                self.stats.sent[item.action] += 1
                item.attempts += 1
                try:
                    result = await ws.call(item.action, item.payload, self.config.call_timeout)
                except ConnectionLost:
                    return  # stays queued; replayed after the reconnect
                except TimeoutError:
                    self.stats.timeouts[item.action] += 1
                    return
                except CallErrorReceived as error:
                    self.stats.call_errors[f"{item.action}: {error.code}"] += 1
                    if item.attempts < 3 and error.code == "InternalError":
                        return  # the CSMS could not store it: retried at the next chance
                    self.queue.popleft()
                    if item.action == "StartTransaction" and item.session is not None:
                        item.session.refused = True
                    continue
                self.queue.popleft()
                self.stats.answered[item.action] += 1
                await self._delivered(item, result)
        finally:
            self._draining = False

    async def _delivered(self, item: Queued, result: dict[str, Any]) -> None:
        self.stats.sampled_values_stored += item.sampled
        session = item.session
        if item.action == "MeterValues" and session is not None:
            _note_reading(session, item.payload)
        elif item.action == "StartTransaction" and session is not None:
            session.transaction_id = int(result["transactionId"])
            self.stats.sessions_started += 1
            status = (result.get("idTagInfo") or {}).get("status")
            if status != "Accepted":
                self.stats.rejected[f"StartTransaction: {status}"] += 1
                for connector in self.connectors.values():
                    if connector.session is session:
                        self.inbox.append(("stop", connector.id, "DeAuthorized"))
        elif item.action == "StopTransaction" and session is not None:
            assert session.transaction_id is not None
            self.stats.sessions.append(
                SessionRecord(
                    charge_point=self.identity,
                    connector_id=session.connector_id,
                    transaction_id=session.transaction_id,
                    id_tag=session.id_tag,
                    meter_start=session.meter_start,
                    meter_stop=int(item.payload["meterStop"]),
                    stop_reason=str(item.payload.get("reason", "Local")),
                    started_at=session.started,
                    stopped_at=str(item.payload["timestamp"]),
                )
            )

    async def _status(self, connector: Connector, status: str, error_code: str = "NoError") -> None:
        connector.status = status
        connector.error_code = error_code
        payload: dict[str, Any] = {
            "connectorId": connector.id,
            "errorCode": error_code,
            "status": status,
            "timestamp": self._timestamp(),
        }
        if error_code != "NoError":
            payload["vendorErrorCode"] = f"E{self.rng.randrange(100, 999)}"
        if await self._call("StatusNotification", payload) is None and not self._online:
            self._status_dirty = True  # told again after the reconnect (BootNotification)

    # sessions ---------------------------------------------------------------------------------

    def _tag_for(self, connector: Connector) -> str:
        tags = self.config.id_tags
        return tags[(self.index * 4 + connector.id) % len(tags)]

    def _free(self, connector: Connector) -> bool:
        return (
            connector.session is None
            and not connector.busy
            and connector.operative
            and connector.status in ("Available", "Preparing")
        )

    async def _arrive(self, connector: Connector) -> None:
        """An EV plugs in (or, if the connector is taken, comes back later)."""
        if self.stopping:
            return
        reserved_tag = connector.reservation[1] if connector.reservation else None
        if not self._free(connector) and not (reserved_tag and connector.status == "Reserved"):
            self._after(self._exp(self.config.idle_mean), "arrive", connector.id)
            return
        tag = reserved_tag or self._tag_for(connector)
        connector.busy = True
        await self._status(connector, "Preparing")
        if self._online and self.registered:
            result = await self._call("Authorize", {"idTag": tag})
            status = (result or {}).get("idTagInfo", {}).get("status")
            if result is not None and status != "Accepted":
                self.stats.rejected[f"Authorize: {status}"] += 1
                connector.busy = False
                await self._status(connector, "Available")
                self._after(self._exp(self.config.idle_mean), "arrive", connector.id)
                return
        # Offline: LocalAuthorizeOffline lets the tag charge; the CSMS learns it on replay.
        await self._start(connector, tag)

    async def _start(self, connector: Connector, tag: str) -> None:
        vehicle = Vehicle.arrive(self.rng)
        now = self._sim_now()
        reservation_id = None
        if connector.reservation is not None:
            reservation_id, _tag = connector.reservation
            connector.reservation = None
        session = Session(
            connector_id=connector.id,
            id_tag=tag,
            meter_start=int(connector.register),
            started=self._timestamp(),
            vehicle=vehicle,
            departure=now + self.rng.uniform(self.config.session_min, self.config.session_max),
            last_tick=now,
            reservation_id=reservation_id,
        )
        connector.session = session
        connector.busy = False
        payload: dict[str, Any] = {
            "connectorId": connector.id,
            "idTag": tag,
            "meterStart": session.meter_start,
            "timestamp": session.started,
        }
        if reservation_id is not None:
            payload["reservationId"] = reservation_id
        await self._transaction_message("StartTransaction", payload, session)
        if connector.session is session:
            await self._status(connector, "Charging")
            self._after(self.config.meter_interval, "tick", connector.id, connector.generation)

    def _integrate(self, connector: Connector) -> float:
        """Advance the connector's meter and the car's battery to now; return the power."""
        session = connector.session
        assert session is not None
        now = self._sim_now()
        elapsed = max(0.0, now - session.last_tick)
        session.last_tick = now
        power = power_w(self.charger, session.vehicle, self.rng)
        energy = power * elapsed / 3600.0
        connector.register += energy
        vehicle = session.vehicle
        vehicle.soc = min(1.0, vehicle.soc + energy / vehicle.capacity_wh)
        # Body temperature follows the load with a little inertia.
        target = 25.0 + 20.0 * power / max(self.charger.max_power_w, 1.0)
        connector.temperature += (target - connector.temperature) * 0.2
        return power

    def _meter_item(self, connector: Connector) -> Queued:
        """A periodic MeterValues of the connector's session, read now."""
        session = connector.session
        assert session is not None
        power = self._integrate(connector)
        values = sampled_values(
            self.charger,
            int(connector.register),
            power,
            session.vehicle,
            connector.temperature,
            self.rng,
        )
        payload = {
            "connectorId": connector.id,
            "transactionId": -1,  # filled in when it is sent (may have started offline)
            "meterValue": [{"timestamp": self._timestamp(), "sampledValue": values}],
        }
        return Queued("MeterValues", payload, session, len(values))

    async def _tick(self, connector: Connector) -> None:
        session = connector.session
        assert session is not None
        self.queue.append(self._meter_item(connector))
        await self._drain()
        if connector.session is not session:
            return
        vehicle = session.vehicle
        if vehicle.soc >= vehicle.target_soc or self._sim_now() >= session.departure:
            reason = "EVDisconnected" if vehicle.soc >= vehicle.target_soc else "Local"
            await self._stop(connector, reason)
        else:
            self._after(self.config.meter_interval, "tick", connector.id, connector.generation)

    async def _stop(self, connector: Connector, reason: str, final: str | None = None) -> None:
        session = connector.session
        if session is None:
            return
        self._integrate(connector)
        connector.session = None
        connector.generation += 1
        await self._status(connector, "Finishing")
        stop_time = self._timestamp()
        meter_stop = int(connector.register)
        payload: dict[str, Any] = {
            "transactionId": -1,
            "idTag": session.id_tag,
            "meterStop": meter_stop,
            "timestamp": stop_time,
            "reason": reason,
            "transactionData": [
                transaction_reading(session.meter_start, session.started, "Transaction.Begin"),
                transaction_reading(meter_stop, stop_time, "Transaction.End"),
            ],
        }
        await self._transaction_message("StopTransaction", payload, session, 2)
        if connector.pending_inoperative:
            connector.operative = False
            connector.pending_inoperative = False
        await self._status(
            connector, final or ("Available" if connector.operative else "Unavailable")
        )
        if final is None and not self.stopping:
            self._after(self._exp(self.config.idle_mean), "arrive", connector.id)

    async def _fault(self, connector: Connector) -> None:
        if connector.status in ("Faulted", "Unavailable"):
            return
        self.stats.faults += 1
        code = self.rng.choice(FAULT_CODES)
        if connector.session is not None:
            await self._stop(connector, "Other", final="Faulted")
        await self._status(connector, "Faulted", code)
        self._after(self.rng.uniform(30.0, 300.0), "recover", connector.id)

    async def _stress_step(self) -> None:
        """Stress profile: one session on connector 1 and MeterValues as fast as answered."""
        connector = self.connectors[1]
        if connector.session is None:
            await self._start(connector, self._tag_for(connector))
            return
        self._integrate(connector)
        session = connector.session
        values = sampled_values(
            self.charger, int(connector.register), 11_000.0, session.vehicle, 30.0, self.rng
        )
        await self._transaction_message(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": -1,
                "meterValue": [{"timestamp": self._timestamp(), "sampledValue": values}],
            },
            session,
            len(values),
        )
        if self.queue:  # not delivered (offline, error): do not spin
            await asyncio.sleep(0.5)

    # CSMS-initiated calls (answered synchronously; follow-ups go to the inbox) -----------------

    def _handle(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.stats.received[action] += 1
        method = getattr(self, f"_on_{action}", None)
        if method is None:
            self.stats.replied[f"{action}: NotImplemented"] += 1
            raise CallErrorReceived(action, "NotImplemented", f"{action} is not implemented")
        result: dict[str, Any] = method(payload)
        self.stats.replied[f"{action}: {result.get('status', 'answered')}"] += 1
        self.wake.set()
        return result

    def _connector(self, payload: dict[str, Any]) -> Connector | None:
        return self.connectors.get(int(payload.get("connectorId", 0) or 0))

    def _on_RemoteStartTransaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        tag = str(payload["idTag"])
        if "connectorId" in payload:
            connector = self._connector(payload)
            candidates = [connector] if connector is not None else []
        else:
            candidates = list(self.connectors.values())
        for candidate in candidates:
            reserved_for_tag = candidate.reservation is not None and candidate.reservation[1] == tag
            if self._free(candidate) or (reserved_for_tag and candidate.session is None):
                candidate.busy = True
                self.inbox.append(("remote_start", candidate.id, tag))
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _on_RemoteStopTransaction(self, payload: dict[str, Any]) -> dict[str, Any]:
        for connector in self.connectors.values():
            session = connector.session
            if session is not None and session.transaction_id == payload["transactionId"]:
                self.inbox.append(("stop", connector.id, "Remote"))
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _on_Reset(self, payload: dict[str, Any]) -> dict[str, Any]:
        self.inbox.append(("reset", str(payload.get("type", "Soft"))))
        return {"status": "Accepted"}

    def _on_UnlockConnector(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector = self._connector(payload)
        if connector is None:
            return {"status": "NotSupported"}
        if connector.session is not None:
            self.inbox.append(("stop", connector.id, "UnlockCommand"))
        return {"status": "Unlocked"}

    def _on_ChangeAvailability(self, payload: dict[str, Any]) -> dict[str, Any]:
        target = int(payload["connectorId"])
        if target != 0 and target not in self.connectors:
            return {"status": "Rejected"}
        operative = payload["type"] == "Operative"
        chosen = list(self.connectors.values()) if target == 0 else [self.connectors[target]]
        scheduled = False
        for connector in chosen:
            if not operative and (connector.session is not None or connector.busy):
                connector.pending_inoperative = True
                scheduled = True
                continue
            connector.operative = operative
            connector.pending_inoperative = False
            self.inbox.append(("availability", connector.id))
        return {"status": "Scheduled" if scheduled else "Accepted"}

    def _on_GetConfiguration(self, payload: dict[str, Any]) -> dict[str, Any]:
        keys = payload.get("key") or list(self.configuration)
        known = [
            {
                "key": key,
                "readonly": self.configuration[key][0],
                "value": self.configuration[key][1],
            }
            for key in keys
            if key in self.configuration
        ]
        result: dict[str, Any] = {"configurationKey": known}
        unknown = [key for key in keys if key not in self.configuration]
        if unknown:
            result["unknownKey"] = unknown
        return result

    def _on_ChangeConfiguration(self, payload: dict[str, Any]) -> dict[str, Any]:
        key, value = str(payload["key"]), str(payload["value"])
        if key == "AuthorizationKey":  # write-only; never shown by GetConfiguration
            return {"status": "Accepted"}
        if key not in self.configuration:
            return {"status": "NotSupported"}
        readonly, old = self.configuration[key]
        if readonly:
            return {"status": "Rejected"}
        if old.lstrip("-").isdigit() and not value.lstrip("-").isdigit():
            return {"status": "Rejected"}
        self.configuration[key] = (False, value)
        if key == "HeartbeatInterval" and int(value) > 0:
            self.heartbeat_interval = float(value)
            self.inbox.append(("heartbeat",))
        elif key == "MeterValueSampleInterval" and int(value) > 0:
            self.config = _replace_interval(self.config, float(value))
        return {"status": "Accepted"}

    def _on_TriggerMessage(self, payload: dict[str, Any]) -> dict[str, Any]:
        message = payload["requestedMessage"]
        if message not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        connector_id = payload.get("connectorId")
        if connector_id is not None and connector_id not in self.connectors:
            return {"status": "Rejected"}
        self.inbox.append(("trigger", message, connector_id))
        return {"status": "Accepted"}

    def _on_ClearCache(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    def _on_DataTransfer(self, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("vendorId") != VENDOR:
            return {"status": "UnknownVendorId"}
        return {"status": "Accepted", "data": payload.get("data", "")}

    def _on_ReserveNow(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector = self._connector(payload)
        if connector is None:
            return {"status": "Rejected"}  # ReserveConnectorZeroSupported is false
        if connector.status == "Faulted":
            return {"status": "Faulted"}
        if not connector.operative:
            return {"status": "Unavailable"}
        reservation_id = int(payload["reservationId"])
        if (
            connector.session is not None
            or connector.busy
            or (connector.reservation is not None and connector.reservation[0] != reservation_id)
        ):
            return {"status": "Occupied"}
        connector.reservation = (reservation_id, str(payload["idTag"]))
        try:
            expiry = datetime.fromisoformat(str(payload["expiryDate"]).replace("Z", "+00:00"))
            seconds = max(0.0, (expiry - datetime.now(UTC)).total_seconds())
        except ValueError:
            seconds = 3600.0
        self._at(seconds, "expire", connector.id, reservation_id)
        self.inbox.append(("reserved", connector.id))
        return {"status": "Accepted"}

    def _on_CancelReservation(self, payload: dict[str, Any]) -> dict[str, Any]:
        for connector in self.connectors.values():
            if connector.reservation and connector.reservation[0] == payload["reservationId"]:
                connector.reservation = None
                self.inbox.append(("availability", connector.id))
                return {"status": "Accepted"}
        return {"status": "Rejected"}

    def _on_GetLocalListVersion(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return {"listVersion": self._local_list_version}

    def _on_SendLocalList(self, payload: dict[str, Any]) -> dict[str, Any]:
        self._local_list_version = int(payload["listVersion"])
        return {"status": "Accepted"}

    def _on_SetChargingProfile(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    def _on_ClearChargingProfile(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    def _on_GetCompositeSchedule(self, _payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Rejected"}

    def _on_GetDiagnostics(self, _payload: dict[str, Any]) -> dict[str, Any]:
        self.inbox.append(("diagnostics",))
        return {"fileName": f"{self.identity}-diagnostics.log"[:255]}

    def _on_UpdateFirmware(self, _payload: dict[str, Any]) -> dict[str, Any]:
        self.inbox.append(("firmware",))
        return {}

    async def _work(self, item: tuple[Any, ...]) -> None:
        """Carry out what a CSMS-initiated CALL set in motion."""
        kind = item[0]
        if kind == "remote_start":
            connector = self.connectors[item[1]]
            connector.busy = False
            if self._free(connector) or connector.status == "Reserved":
                connector.busy = True
                await self._status(connector, "Preparing")
                await self._start(connector, item[2])
        elif kind == "stop":
            connector = self.connectors[item[1]]
            await self._stop(connector, item[2])
        elif kind == "reset":
            reason = "HardReset" if item[1] == "Hard" else "SoftReset"
            for connector in self.connectors.values():
                await self._stop(connector, reason, final="Unavailable")
            for connector in self.connectors.values():
                connector.status = "Available" if connector.operative else "Unavailable"
            await self._drain()
            if self.ws is not None:
                # Rebooting: the socket goes away and the charger boots again a moment later.
                self.offline_until = self._now() + self.rng.uniform(1.0, 3.0)
                self.ws.close(1000, "reset")
                self._at(self.offline_until - self._now(), "connect")
                for connector in self.connectors.values():
                    self._after(self._exp(self.config.idle_mean), "arrive", connector.id)
        elif kind == "availability":
            connector = self.connectors[item[1]]
            if connector.session is None:
                await self._status(connector, "Available" if connector.operative else "Unavailable")
        elif kind == "offline":
            await self._go_offline(item[1], item[2])
        elif kind == "reserved":
            await self._status(self.connectors[item[1]], "Reserved")
        elif kind == "heartbeat":
            self._heartbeat_generation += 1
            self._at(self.heartbeat_interval, "heartbeat", 0, self._heartbeat_generation)
        elif kind == "trigger":
            await self._triggered(item[1], item[2])
        elif kind == "diagnostics":
            for status in ("Uploading", "Uploaded"):
                await self._call("DiagnosticsStatusNotification", {"status": status})
        elif kind == "firmware":
            for status in ("Downloading", "Downloaded", "Installing", "Installed"):
                await self._call("FirmwareStatusNotification", {"status": status})

    async def _triggered(self, message: str, connector_id: int | None) -> None:
        chosen = (
            [self.connectors[connector_id]]
            if connector_id is not None
            else list(self.connectors.values())
        )
        if message == "BootNotification":
            await self._boot()
        elif message == "Heartbeat":
            await self._call("Heartbeat", {})
        elif message == "StatusNotification":
            if connector_id is None:
                await self._status_all()
            else:
                for connector in chosen:
                    await self._status(connector, connector.status, connector.error_code)
        elif message == "DiagnosticsStatusNotification":
            await self._call("DiagnosticsStatusNotification", {"status": "Idle"})
        elif message == "FirmwareStatusNotification":
            await self._call("FirmwareStatusNotification", {"status": "Idle"})
        elif message == "MeterValues":
            for connector in chosen:
                session = connector.session
                power = self._integrate(connector) if session is not None else 0.0
                values = sampled_values(
                    self.charger,
                    int(connector.register),
                    power,
                    session.vehicle if session else None,
                    connector.temperature,
                    self.rng,
                )
                for value in values:
                    value["context"] = "Trigger"
                payload: dict[str, Any] = {
                    "connectorId": connector.id,
                    "meterValue": [{"timestamp": self._timestamp(), "sampledValue": values}],
                }
                if session is not None and session.transaction_id is not None:
                    payload["transactionId"] = session.transaction_id
                if await self._call("MeterValues", payload) is not None:
                    self.stats.sampled_values_stored += len(values)
                    if session is not None:
                        _note_reading(session, payload)


def _note_reading(session: Session, payload: dict[str, Any]) -> None:
    """Remember the energy register and power of an acknowledged MeterValues."""
    for meter_value in payload["meterValue"]:
        for sample in meter_value["sampledValue"]:
            if sample.get("phase"):
                continue
            measurand = sample.get("measurand")
            if measurand == "Energy.Active.Import.Register":
                session.last_register = int(sample["value"])
            elif measurand == "Power.Active.Import":
                session.last_power = float(sample["value"])


def _replace_interval(config: SimConfig, interval: float) -> SimConfig:
    """A copy of ``config`` with another meter interval (configs are shared by the fleet)."""
    return replace(config, meter_interval=interval)


def _ignore(future: asyncio.Future[Any]) -> None:
    """Swallow the outcome of a CALL whose answer we chose to lose."""
    if not future.cancelled():
        future.exception()
