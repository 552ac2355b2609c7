"""Test support: real databases, a real server on 127.0.0.1, real OCPP clients.

Nothing here is mocked: each server is uvicorn serving the real application on a free port, and
clients are the ``ocpp`` package's ChargePoint over ``websockets``, or raw frames.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvicorn
import websockets
from ocpp.v16 import ChargePoint as OcppChargePoint
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.app import Application, build_app
from chargegrid.config import Settings
from chargegrid.gateway.uvicorn_protocol import LeanWebSocketProtocol
from chargegrid.store.database import create_engine, writing
from chargegrid.store.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "CHARGEGRID_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class PostgresDatabases:
    """Fresh PostgreSQL databases, each a copy of one migrated template (fast to create)."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"cg_template_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []

    def url(self, name: str) -> str:
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"

    async def setup(self) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await connection.close()
        engine = create_engine(self.url(self.template))
        await upgrade(engine)
        await engine.dispose()

    async def create(self) -> str:
        name = f"cg_test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await connection.close()
        self.created.append(name)
        return self.url(name)

    async def teardown(self) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            for name in [*self.created, self.template]:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await connection.close()


@dataclass
class RunningServer:
    app: Application
    host: str
    port: int

    @property
    def node(self) -> Any:
        return self.app.node

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ocpp/"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[AsyncConnection]:
        """A connection to the server's database, for looking at what was stored."""
        async with self.node.engine.connect() as connection:
            yield connection

    async def scalar(self, sql: str, **params: Any) -> Any:
        from sqlalchemy import text

        async with self.db() as connection:
            return await connection.scalar(text(sql), params)

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import text

        async with self.db() as connection:
            return list((await connection.execute(text(sql), params)).mappings())

    async def add_charge_point(self, identity: str, **kwargs: Any) -> int:
        async with writing(self.node.engine).begin() as connection:
            return await admin.add_charge_point(
                connection, identity, now=datetime.now(UTC), hash_iterations=1000, **kwargs
            )

    async def add_id_tag(self, tag: str, **kwargs: Any) -> int:
        async with writing(self.node.engine).begin() as connection:
            return await admin.add_id_tag(connection, tag, now=datetime.now(UTC), **kwargs)


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[RunningServer]:
    """Serve the real application with uvicorn on a free port of 127.0.0.1."""
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        # As `chargegrid serve` does: the trimmed protocol unless ws_lean_protocol is off.
        ws=LeanWebSocketProtocol if settings.ws_lean_protocol else "websockets-sansio",
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_max_size=settings.ws_max_size,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        lifespan="on",
        log_level="warning",
    )
    async with serving(config) as (_server, port):
        yield RunningServer(app, "127.0.0.1", port)


@contextlib.asynccontextmanager
async def serving(config: uvicorn.Config) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    """Run uvicorn with ``config`` in this event loop until the block ends; yields the server
    and the port it bound (``config.port`` 0: a free one)."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.01)
        yield server, server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class RecordingChargePoint(OcppChargePoint):  # type: ignore[misc]
    """The ``ocpp`` package's ChargePoint: an independent OCPP 1.6 implementation."""


@contextlib.asynccontextmanager
async def charge_point(
    server: RunningServer,
    identity: str,
    *,
    auth_key: str | None = None,
    cls: type[OcppChargePoint] = RecordingChargePoint,
) -> AsyncIterator[OcppChargePoint]:
    """Connect ``identity`` to ``server`` and run its ChargePoint loop while in the block."""
    headers = {}
    if auth_key is not None:
        token = base64.b64encode(f"{identity}:{auth_key}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    from urllib.parse import quote

    async with websockets.connect(
        server.ws_url + quote(identity, safe=""),
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        additional_headers=headers,
        compression=None,
    ) as ws:
        cp = cls(identity, ws)
        loop_task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop_task


@contextlib.asynccontextmanager
async def raw_socket(
    server: RunningServer, identity: str, **kwargs: Any
) -> AsyncIterator[websockets.ClientConnection]:
    """A bare WebSocket for sending frames the ocpp package would never produce."""
    async with websockets.connect(
        server.ws_url + identity,
        subprotocols=[websockets.Subprotocol("ocpp1.6")],
        compression=None,
        **kwargs,
    ) as ws:
        yield ws
