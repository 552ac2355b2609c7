"""The composition root: the one place that picks implementations from settings and wires
them.

``ChargeGrid`` is a node: database engine, group-commit writer, event bus, OCPP gateway.
``build_app`` wraps it in an ASGI application whose lifespan starts and stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.types import Receive as AsgiReceive
from starlette.types import Scope as AsgiScope
from starlette.types import Send as AsgiSend

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
from chargegrid.cluster import Cluster
from chargegrid.cluster.live_stats import LiveStatsMirror
from chargegrid.commands.service import CommandService
from chargegrid.config import Settings
from chargegrid.csms.context import ChargePointSession, Context, DataTransferHandler, Services
from chargegrid.csms.decisions import BootPolicy, ExternalAuthorizer, IdTagAuthorizer
from chargegrid.csms.dispatch import Dispatcher
from chargegrid.csms.liveness import Liveness
from chargegrid.csms.presence import StoredPresence
from chargegrid.events import Event, EventStream, Listener, listen
from chargegrid.events import subscribe as subscribe_events
from chargegrid.gateway.admission import Admission, Admitted
from chargegrid.gateway.asgi import OcppGateway, Presence, Receive, Scope, Send
from chargegrid.gateway.connection import ChargePointConnection
from chargegrid.gateway.registry import ConnectionRegistry
from chargegrid.hooks import Hooks
from chargegrid.live import sse as live_sse
from chargegrid.live import websocket as live_websocket
from chargegrid.live.hub import LiveHub
from chargegrid.live.stats import LiveStatsPublisher, StatsPublisher
from chargegrid.metering.alerts import AlertEngine
from chargegrid.metering.live_stats import LiveStats
from chargegrid.metering.retention import Retention
from chargegrid.metering.rollups import RollupMaintainer
from chargegrid.observability.metrics import Metrics
from chargegrid.observability.observer import NodeObserver
from chargegrid.observability.trace import MessageTrace
from chargegrid.ocpp import validation
from chargegrid.plugins import load_plugin
from chargegrid.store import charge_points as cp_store
from chargegrid.store.database import create_engine, writing
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.meter_values import insert_statement
from chargegrid.store.migrate import upgrade
from chargegrid.store.queries import Queries
from chargegrid.store.sqlite_checkpoint import WalCheckpointer
from chargegrid.store.sqlite_writer import SqliteWriter, database_path
from chargegrid.web import pages as web_pages

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("web") / "static"


class ChargeGrid:
    """One chargegrid node, built from settings. ``start()`` before use, ``stop()`` after."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.engine = create_engine(
            settings.database_url,
            sqlite_synchronous=settings.sqlite_synchronous,
            connect_timeout=settings.database_connect_timeout,
            statement_timeout=settings.database_statement_timeout,
        )
        self.writer = GroupCommitter(
            self.engine,
            interval=settings.commit_interval_ms / 1000.0,
            max_items=settings.commit_max_items,
            queue_limit=settings.commit_queue_limit,
            wait_timeout=settings.commit_wait_timeout,
        )
        self.bus: Bus = (
            RedisBus(settings.bus_url, node_id=settings.node_id, prefix=settings.bus_prefix)
            if settings.bus_url
            else MemoryBus()
        )
        # Meter-value pipeline (issue 4): the meter value insert goes through the rollup
        # maintainer (same transaction); committed values feed live statistics and alerts.
        meter_insert = insert_statement(self.engine.dialect.name)
        self.rollups = RollupMaintainer(
            self.engine.dialect.name,
            merge_interval=settings.rollup_merge_interval_ms / 1000.0,
        )
        self.writer.sinks[meter_insert] = self.rollups
        self.sqlite_writer: SqliteWriter | None = None
        path = database_path(settings.database_url)
        if path is not None and self.rollups.deferred:
            self.sqlite_writer = SqliteWriter(path, settings.sqlite_synchronous)
            self.rollups.use_writer(self.sqlite_writer, self.engine)
            self.writer.statements_sink = self.rollups
        self.checkpointer: WalCheckpointer | None = None
        if path is not None and settings.sqlite_checkpoint_interval > 0:
            self.checkpointer = WalCheckpointer(
                path,
                settings.sqlite_checkpoint_interval,
                settings.sqlite_synchronous,
                on_copied=self.sqlite_writer.catch_up_wal if self.sqlite_writer else None,
            )
        self.live_stats = LiveStats(
            self.bus,
            self.clock,
            window_seconds=settings.live_stats_window_seconds,
            stopped_sessions=settings.live_stats_stopped_sessions,
        )
        self.live_stats_publisher = LiveStatsPublisher(
            self.engine, self.bus, self.live_stats, settings.live_stats_publish_interval
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
        self.liveness = Liveness(
            self.writer,
            settings.liveness_flush_seconds,
            sqlite=self.engine.dialect.name == "sqlite",
        )
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
        self.hooks = Hooks()
        self.dispatcher = Dispatcher(hooks=self.hooks, node=self)
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
            commit_timeouts=lambda: self.writer.stats.timeouts,
            trace_dropped=lambda: self.trace.dropped,
            hook_failures=lambda: self.hooks.failures,
        )
        self.writer.on_commit = self.metrics.batch_committed
        self.observer = NodeObserver(self.metrics, self.trace)
        # Scale-out (issue 8): with Redis, the node claims the charge points it holds and routes
        # commands for the others to their nodes; presence then claims/releases ownership.
        self.cluster: Cluster | None = None
        presence: Presence = StoredPresence(self.services)
        if settings.bus_url:
            self.cluster = Cluster(
                url=settings.bus_url,
                node_id=getattr(self.bus, "node_id", None) or settings.node_id or "node",
                prefix=settings.bus_prefix,
                registry=self.registry,
                writer=self.writer,
                bus=self.bus,
                clock=self.clock,
                ttl=settings.cluster_ownership_ttl,
                margin=settings.cluster_route_margin,
                redis_timeout=settings.cluster_redis_timeout,
            )
            presence = self.cluster.presence(presence)
        self.gateway = OcppGateway(
            admission=self.admission,
            registry=self.registry,
            dispatch=self.dispatcher,
            context_factory=self._context,
            supported=self.dispatcher.routes.keys(),
            presence=presence,
            handshake_timeout=settings.handshake_timeout,
            reject_before_accepted=settings.reject_calls_before_accepted,
            observer=self.observer,
            nowait=self.dispatcher.nowait,
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
        self.commands.hooks = self.hooks
        self.commands.node = self
        self.commands.on_finished = self.metrics.command_finished
        if self.cluster is not None:
            self.commands.router = self.cluster.router
        # Live statistics answered by any node (issue 8): the holding node mirrors them to Redis.
        self.live_stats_mirror: LiveStatsMirror | None = None
        if self.cluster is not None:
            self.live_stats_mirror = LiveStatsMirror(
                self.cluster.link,
                self.live_stats,
                self.clock,
                node_id=self.cluster.node_id,
                prefix=settings.bus_prefix,
                ttl=settings.cluster_live_stats_ttl,
                finished_ttl=settings.cluster_live_stats_finished_ttl,
                interval=settings.live_stats_publish_interval,
                held=self.registry.__contains__,
                held_identities=self.registry.identities,
            )
            self.live_stats_publisher.mirror = self.live_stats_mirror

        for plugin in settings.plugins:
            load_plugin(plugin)(self)

    # -- the embedding API (docs/embedding.md) ----------------------------------------------

    def data_transfer(self, vendor_id: str) -> Callable[[DataTransferHandler], DataTransferHandler]:
        """Decorator: answer DataTransfer requests of ``vendor_id`` (OCPP 1.6 §4.3)."""

        def register(handler: DataTransferHandler) -> DataTransferHandler:
            self.services.data_transfer[vendor_id] = handler
            return handler

        return register

    def set_authorizer(
        self, service: IdTagAuthorizer, *, timeout: float = 2.0, ttl: float = 300.0
    ) -> ExternalAuthorizer:
        """Let ``service(charge_point, id_tag)`` decide Authorize and StartTransaction, with a
        cache of ``ttl`` seconds; after ``timeout`` seconds, or on an error, the local list
        decides. Returns the wrapper (its ``fallbacks`` counts the times that happened)."""
        authorizer = ExternalAuthorizer(service, timeout=timeout, ttl=ttl)
        self.services.authorizer = authorizer
        return authorizer

    def set_boot_policy(self, policy: BootPolicy) -> None:
        """Let ``policy(charge_point, request)`` answer BootNotifications (None: stored status)."""
        self.services.boot_policy = policy

    async def subscribe(
        self, *, charge_point: str | None = None, topics: Iterable[str] | None = None
    ) -> EventStream:
        """Live events as an async iterator (see chargegrid.events)."""
        return await subscribe_events(self.bus, charge_point=charge_point, topics=topics)

    async def on(
        self,
        topic: str,
        callback: Callable[[Event], Awaitable[None] | None],
        *,
        charge_point: str | None = None,
    ) -> Listener:
        """Call ``callback(event)`` for every ``topic`` event (of one charge point, or all)."""
        return listen(await self.subscribe(charge_point=charge_point, topics=[topic]), callback)

    @asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """Start the node for the duration of the block; usable as an ASGI app's lifespan
        (it yields nothing, since Starlette takes a yielded value for lifespan state)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

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
        if self.cluster is None:
            # One node: nothing can be connected yet. With several, others hold charge points
            # right now; the cluster's reaper clears those of a crashed node instead.
            async with writing(self.engine).begin() as connection:
                await cp_store.mark_all_disconnected(connection, self.clock.now())
        await self.bus.start()
        if self.cluster is not None:
            await self.cluster.start()
        await self.live.start()
        await self.stats_publisher.start()
        await self.live_stats_publisher.start()
        recounted = await self.rollups.recover(self.engine)
        if recounted:
            log.warning("counted %d meter values into rollups after an unclean stop", recounted)
        await self.writer.start()
        if self.checkpointer is not None:
            await self.checkpointer.start()
        await self.live_stats.start()
        if self.live_stats_mirror is not None:
            await self.live_stats_mirror.start()
        await self.alerts.start()
        await self.retention.start()
        await self.liveness.start()
        await self.trace.start()
        log.info("chargegrid %s started (%s)", __version__, self.engine.url.render_as_string())

    async def stop(self) -> None:
        # All at once: one after another, shutdown would take as long as the slowest peers
        # summed (seconds with thousands of charge points).
        live = [c for c in map(self.registry.get, self.registry.identities()) if c is not None]
        await asyncio.gather(*(c.close(1001, "server shutting down") for c in live))
        await self.commands.stop()
        await self.hooks.drain()
        await self.trace.stop()
        await self.liveness.stop()
        await self.retention.stop()
        await self.alerts.stop()
        await self.writer.stop()
        if self.sqlite_writer is not None:
            await self.sqlite_writer.close()
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        await self.live_stats.stop()
        await self.stats_publisher.stop()
        await self.live_stats_publisher.stop()
        if self.live_stats_mirror is not None:
            await self.live_stats_mirror.stop()
        await self.live.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        await self.bus.stop()
        await self.engine.dispose()

    async def ready(self, timeout: float = 3.0) -> bool:
        """The database answers within ``timeout`` (a stalled database must not stall the
        load balancer's probe too)."""

        async def probe() -> None:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(probe(), timeout)
        except Exception:
            return False
        return True


class Application:
    """The ASGI entry point: OCPP WebSockets to the gateway, everything else to the web app."""

    def __init__(self, node: ChargeGrid, web: FastAPI, *, ocpp: bool = True) -> None:
        self.node = node
        self.web = web
        self.ocpp = ocpp

    @property
    def lifespan(self) -> Callable[..., Any]:
        """For an embedding application: ``FastAPI(lifespan=grid_app.lifespan)`` starts the node
        (a mounted application's own lifespan is not run by Starlette)."""
        return self.node.lifespan

    async def __call__(self, asgi_scope: AsgiScope, receive: AsgiReceive, send: AsgiSend) -> None:
        # Typed as Starlette's ASGI types, so that mounting this into any Starlette/FastAPI
        # application type-checks for the embedder.
        scope = cast(Scope, asgi_scope)
        if scope["type"] == "websocket" and self.ocpp:
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                # Mounted under a prefix: the gateway sees the path below the mount point.
                path = path[len(root) :]
                raw = scope.get("raw_path")
                if raw and raw.startswith(root.encode()):
                    scope = {**scope, "raw_path": raw[len(root.encode()) :]}
            if path.startswith(self.node.gateway.prefix):
                await self.node.gateway(scope, cast(Receive, receive), cast(Send, send))
                return
        await self.web(scope, receive, send)


def _quiet_denials(record: logging.LogRecord) -> bool:
    # uvicorn's sansio WebSocket protocol logs this error after every WebSocket Denial Response
    # (it never marks the handshake complete). Our endpoints always accept or deny, so the line
    # only ever reports a refused connection, which the gateway already logs at INFO.
    return record.getMessage() != "ASGI callable returned without completing handshake."


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    ocpp: bool = True,
    api: bool = True,
    live: bool = True,
    dashboard: bool = True,
) -> Application:
    """The server as one ASGI application; its lifespan starts and stops the node.

    ``ocpp``: the charge point endpoint ``/ocpp/{id}``; ``api``: ``/api/v1`` and ``/metrics``;
    ``live``: WebSocket and SSE streams; ``dashboard``: the web pages. ``/healthz`` and
    ``/readyz`` are always there. Mounted into another application, start the node with its
    lifespan (``Application.lifespan``). See docs/embedding.md.
    """
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
    parts: list[Any] = []
    if api:
        parts += [auth, charge_points, sessions, meter_values, id_tags, stats, events]
        parts += [commands, users, observability, alerts, history]
    if live:
        parts += [live_websocket, live_sse]
    if dashboard:
        parts += [web_pages]
    for module in parts:
        web.include_router(module.router)

    @web.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, Any]:
        """Alive: the process answers."""
        return {"status": "ok", "version": __version__}

    @web.get("/readyz", tags=["operations"])
    async def readyz() -> JSONResponse:
        """Ready: the database answers and charge points are being accepted."""
        if await node.ready():
            body: dict[str, Any] = {"status": "ready", "connected": len(node.registry)}
            if node.cluster is not None:
                # Redis down is degraded, not unready: this node keeps serving its own sockets.
                body["cluster"] = node.cluster.status()
            return JSONResponse(body)
        return JSONResponse({"status": "database unavailable"}, status_code=503)

    return Application(node, web, ocpp=ocpp)
