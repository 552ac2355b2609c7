"""Helpers for the REST API tests: users and tokens, clients, and real OCPP traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from ocpp.v16 import call
from sqlalchemy.ext.asyncio import AsyncConnection

from chargegrid import admin
from chargegrid.store import users as user_store
from support import RunningServer

API = "/api/v1"
T = TypeVar("T")


async def token_for(
    server: RunningServer,
    username: str,
    role: str = "viewer",
    *,
    groups: dict[str, list[str]] | None = None,
) -> str:
    """A bearer token of a new user; with ``groups`` ({group: [identity, ...]}) the user is
    limited to the charge points of those groups."""
    now = datetime.now(UTC)

    async def unit(connection: AsyncConnection) -> str:
        user_id = await user_store.add_user(
            connection,
            username,
            role=user_store.Role(role),
            now=now,
            all_charge_points=groups is None,
        )
        for name, identities in (groups or {}).items():
            group = await user_store.group_id(connection, name)
            if group is None:
                group = await user_store.add_group(connection, name, now)
            for identity in identities:
                assert await user_store.add_to_group(connection, group, identity), identity
            await user_store.grant_group(connection, user_id, group)
        return await user_store.issue_token(connection, user_id, name="test", now=now)

    return await write(server, unit)


async def write(server: RunningServer, unit: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Write through the server's group-commit writer: on SQLite a transaction of our own that
    reads then writes can fail with "database is locked" when the writer commits in between."""
    result: T = await server.node.writer.run(unit)
    return result


async def provision(server: RunningServer, identity: str, **kwargs: Any) -> int:
    """Add a charge point the way the CLI does (``chargegrid.admin``)."""
    return await write(
        server,
        lambda c: admin.add_charge_point(
            c, identity, now=datetime.now(UTC), hash_iterations=1000, **kwargs
        ),
    )


async def add_tag(server: RunningServer, tag: str, **kwargs: Any) -> int:
    return await write(server, lambda c: admin.add_id_tag(c, tag, now=datetime.now(UTC), **kwargs))


@contextlib.asynccontextmanager
async def client(
    server: RunningServer, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(
        base_url=server.http_url + API, headers=headers, timeout=20
    ) as http:
        yield http


@contextlib.asynccontextmanager
async def clients(
    server: RunningServer,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, httpx.AsyncClient]]:
    """(admin, viewer, anonymous) clients."""
    admin_token = await token_for(server, "admin", "admin")
    viewer_token = await token_for(server, "viewer", "viewer")
    async with (
        client(server, admin_token) as admin,
        client(server, viewer_token) as viewer,
        client(server) as anonymous,
    ):
        yield admin, viewer, anonymous


async def send(cp: Any, payload: Any) -> Any:
    """A call whose CALLERROR raises instead of turning into ``None``."""
    return await cp.call(payload, suppress=False)


async def boot(cp: Any, vendor: str = "Vend", model: str = "Mod") -> None:
    result = await send(
        cp,
        call.BootNotification(
            charge_point_vendor=vendor,
            charge_point_model=model,
            charge_point_serial_number="SN-1",
            firmware_version="1.2.3",
        ),
    )
    assert result.status == "Accepted"


async def status(cp: Any, connector: int, state: str, error_code: str = "NoError") -> None:
    await send(
        cp, call.StatusNotification(connector_id=connector, error_code=error_code, status=state)
    )


async def start(cp: Any, connector: int, id_tag: str, meter: int, timestamp: str) -> int:
    result = await send(
        cp,
        call.StartTransaction(
            connector_id=connector, id_tag=id_tag, meter_start=meter, timestamp=timestamp
        ),
    )
    transaction_id: int = result.transaction_id
    return transaction_id


async def meter(
    cp: Any,
    connector: int,
    transaction_id: int | None,
    timestamp: str,
    samples: list[dict[str, Any]],
) -> None:
    await send(
        cp,
        call.MeterValues(
            connector_id=connector,
            transaction_id=transaction_id,
            meter_value=[{"timestamp": timestamp, "sampled_value": samples}],
        ),
    )


async def stop(cp: Any, transaction_id: int, meter_stop: int, timestamp: str) -> None:
    await send(
        cp,
        call.StopTransaction(
            transaction_id=transaction_id,
            meter_stop=meter_stop,
            timestamp=timestamp,
            reason="Local",
        ),
    )


def energy(value: str, unit: str = "Wh") -> dict[str, Any]:
    return {"value": value, "measurand": "Energy.Active.Import.Register", "unit": unit}


def power(value: str) -> dict[str, Any]:
    return {"value": value, "measurand": "Power.Active.Import", "unit": "W"}


def voltage(value: str, phase: str) -> dict[str, Any]:
    return {"value": value, "measurand": "Voltage", "unit": "V", "phase": phase}


async def eventually(
    probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool], within: float = 3.0
) -> Any:
    """Poll ``probe`` until ``accept`` holds for its result (some state is written in batches)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if accept(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.05)


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
