"""The composition root: the one place that picks implementations from settings and wires
them.

``ChargeGrid`` is a node: database engine, group-commit writer, event bus, OCPP gateway.
``build_app`` wraps it in an ASGI application whose lifespan starts and stops it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from chargegrid import __version__
from chargegrid.api.routes import (
    alerts,
    auth,
    charge_points,
    commands,
    events,
    history,
    id_tags,
    meter_values,
    observability,
    sessions,
    stats,
    users,
)
from chargegrid.bus.base import Bus
from chargegrid.bus.memory import MemoryBus
from chargegrid.bus.redis import RedisBus
from chargegrid.clock import Clock, SystemClock
from chargegrid.commands.service import CommandService
from chargegrid.config import Settings
from chargegrid.csms.context import ChargePointSession, Context, Services
from chargegrid.csms.dispatch import Dispatcher
from chargegrid.csms.liveness import Liveness
from chargegrid.csms.presence import StoredPresence
from chargegrid.gateway.admission import Admission, Admitted
from chargegrid.gateway.asgi import OcppGateway, Receive, Scope, Send
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.gateway.registry import ConnectionRegistry
from chargegrid.live import sse as live_sse
from chargegrid.live import websocket as live_websocket
from chargegrid.live.hub import LiveHub
from chargegrid.live.stats import StatsPublisher
from chargegrid.metering.alerts import AlertEngine
from chargegrid.metering.live_stats import LiveStats
from chargegrid.metering.retention import Retention
from chargegrid.metering.rollups import RollupMaintainer
from chargegrid.observability.metrics import Metrics
from chargegrid.observability.observer import NodeObserver
from chargegrid.observability.trace import MessageTrace
from chargegrid.ocpp import validation
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import create_engine, writing
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.meter_values import insert_statement
from chargegrid.store.migrate import upgrade
from chargegrid.store.queries import Queries
from chargegrid.web import pages as web_pages

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("web") / "static"


class ChargeGrid:
    """One chargegrid node, built from settings. ``start()`` before use, ``stop()`` after."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.engine = create_engine(
            settings.database_url, sqlite_synchronous=settings.sqlite_synchronous
        )
        self.writer = GroupCommitter(
            self.engine,
            interval=settings.commit_interval_ms / 1000.0,
            max_items=settings.commit_max_items,
            queue_limit=settings.commit_queue_limit,
        )
        self.bus: Bus = (
            RedisBus(settings.bus_url, node_id=settings.node_id, prefix=settings.bus_prefix)
            if settings.bus_url
            else MemoryBus()
        )
        # Meter-value pipeline (issue 4): the meter value insert goes through the rollup
        # maintainer (same transaction); committed values feed live statistics and alerts.
        meter_insert = insert_statement(self.engine.dialect.name)
        self.rollups = RollupMaintainer(self.engine.dialect.name)
        self.writer.sinks[meter_insert] = self.rollups
        self.live_stats = LiveStats(
            self.bus,
            self.clock,
            window_seconds=settings.live_stats_window_seconds,
            stopped_sessions=settings.live_stats_stopped_sessions,
        )
        self.alerts = AlertEngine(
            self.engine,
            self.writer,
            self.bus,
            self.clock,
            rules_file=settings.alert_rules_file,
            webhook_url=settings.alert_webhook_url,
            webhook_timeout=settings.alert_webhook_timeout,
        )
        self.rollups.observers += [self.live_stats.observe, self.alerts.observe]
        self.retention = Retention(
            self.writer,
            self.clock,
            raw_days=settings.retention_raw_days,
            hourly_days=settings.retention_hourly_days,
            daily_days=settings.retention_daily_days,
            interval=settings.retention_interval_seconds,
            batch_size=settings.retention_batch_size,
        )
        self.live = LiveHub(
            self.bus,
            grace=settings.live_replay_grace_seconds,
            buffer_size=settings.live_replay_buffer,
        )
        self.stats_publisher = StatsPublisher(
            self.engine, self.bus, self.clock, settings.live_stats_interval
        )
        self.liveness = Liveness(self.writer, settings.liveness_flush_seconds)
        self.services = Services(
            settings=settings,
            clock=self.clock,
            engine=self.engine,
            writer=self.writer,
            bus=self.bus,
            liveness=self.liveness,
            meter_insert=meter_insert,
        )
        self.queries = Queries(self.engine)
        self.dispatcher = Dispatcher()
        self.registry: ConnectionRegistry[ChargePointConnection] = ConnectionRegistry()
        self.admission = Admission(self.engine, settings, self.clock)
        # Observability: metrics at /metrics, the per-charge-point message trace.
        self.trace = MessageTrace(
            engine=self.engine,
            writer=self.writer,
            clock=self.clock,
            default=settings.trace_default,
            retention=timedelta(hours=settings.trace_retention_hours),
        )
        self.metrics = Metrics(
            connected=self.registry.__len__,
            queued=lambda: self.writer.queued,
            commit_failures=lambda: self.writer.stats.failures,
            trace_dropped=lambda: self.trace.dropped,
        )
        self.writer.on_commit = self.metrics.batch_committed
        self.observer = NodeObserver(self.metrics, self.trace)
        self.gateway = OcppGateway(
            admission=self.admission,
            registry=self.registry,
            dispatch=self.dispatcher,
            context_factory=self._context,
            supported=self.dispatcher.routes.keys(),
            presence=StoredPresence(self.services),
            handshake_timeout=settings.handshake_timeout,
            reject_before_accepted=settings.reject_calls_before_accepted,
            observer=self.observer,
        )
        self.commands = CommandService(
            engine=self.engine,
            writer=self.writer,
            registry=self.registry,
            admission=self.admission,
            bus=self.bus,
            clock=self.clock,
            settings=settings,
        )
        self.commands.on_finished = self.metrics.command_finished

    def _context(self, admitted: Admitted) -> Context:
        return Context(
            ChargePointSession(
                id=admitted.charge_point_id,
                identity=admitted.identity,
                registration_status=admitted.registration_status,
                security_profile=admitted.security_profile,
            ),
            self.services,
        )

    async def start(self) -> None:
        if self.settings.migrate_on_start:
            await upgrade(self.engine)
        validation.compile_all()
        async with writing(self.engine).begin() as connection:
            await cp_store.mark_all_disconnected(connection, self.clock.now())
        await self.bus.start()
        await self.live.start()
        await self.stats_publisher.start()
        await self.writer.start()
        await self.live_stats.start()
        await self.alerts.start()
        await self.retention.start()
        await self.liveness.start()
        await self.trace.start()
        log.info("chargegrid %s started (%s)", __version__, self.engine.url.render_as_string())

    async def stop(self) -> None:
        for identity in self.registry.identities():
            connection = self.registry.get(identity)
            if connection is not None:
                await connection.close(1001, "server shutting down")
        await self.commands.stop()
        await self.trace.stop()
        await self.liveness.stop()
        await self.retention.stop()
        await self.alerts.stop()
        await self.writer.stop()
        await self.live_stats.stop()
        await self.stats_publisher.stop()
        await self.live.stop()
        await self.bus.stop()
        await self.engine.dispose()

    async def ready(self) -> bool:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


class Application:
    """The ASGI entry point: OCPP WebSockets to the gateway, everything else to the web app."""

    def __init__(self, node: ChargeGrid, web: FastAPI) -> None:
        self.node = node
        self.web = web

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"].startswith(self.node.gateway.prefix):
            await self.node.gateway(scope, receive, send)
        else:
            await self.web(scope, receive, send)  # type: ignore[arg-type]


def _quiet_denials(record: logging.LogRecord) -> bool:
    # uvicorn's sansio WebSocket protocol logs this error after every WebSocket Denial Response
    # (it never marks the handshake complete). Our endpoints always accept or deny, so the line
    # only ever reports a refused connection, which the gateway already logs at INFO.
    return record.getMessage() != "ASGI callable returned without completing handshake."


def build_app(settings: Settings, *, clock: Clock | None = None) -> Application:
    """The whole server as one ASGI application; its lifespan starts and stops the node."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _quiet_denials not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_quiet_denials)
    node = ChargeGrid(settings, clock=clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    web = FastAPI(
        title="chargegrid",
        version=__version__,
        lifespan=lifespan,
        description="OCPP 1.6J central system: charge points, sessions, meter values, remote "
        "control. Authenticate with `Authorization: Bearer <token>` "
        "from `POST /api/v1/auth/token`.",
    )
    web.state.node = node
    web.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        auth,
        charge_points,
        sessions,
        meter_values,
        id_tags,
        stats,
        events,
        commands,
        users,
        observability,
        live_websocket,
        live_sse,
        alerts,
        history,
        web_pages,
    ):
        router = module.router
        web.include_router(router)

    @web.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """Alive: the process answers."""
        return {"status": "ok", "version": __version__}

    @web.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Ready: the database answers and charge points are being accepted."""
        if await node.ready():
            return JSONResponse({"status": "ready", "connected": len(node.registry)})
        return JSONResponse({"status": "database unavailable"}, status_code=503)

    return Application(node, web)
