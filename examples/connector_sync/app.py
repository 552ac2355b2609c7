"""An application that embeds chargegrid and keeps its own connector table.

The reference monitoring guide overrides its gem's StatusNotification handler to keep a
``connectors`` table of the application's own. With chargegrid that is an *after hook*: chargegrid
handles and stores the StatusNotification as always, answers the charge point, and then calls the
hook with the request; the hook writes the application's table. The application also serves its
own REST route beside chargegrid's OCPP endpoint and API.

Run it::

    .venv/bin/uvicorn --factory examples.connector_sync.app:create_app --port 8000

then point a charge point at ``ws://127.0.0.1:8000/ocpp/CP001`` (add it first:
``chargegrid charge-points add CP001 --database-url sqlite+aiosqlite:///./example-cg.db``) and
open ``http://127.0.0.1:8000/my/connectors``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.ext.asyncio import create_async_engine

from chargegrid import HookContext, Settings, build_app, load_settings

metadata = MetaData()

# The application's own model, as in the guide's "Best Practice: Connector Model".
my_connectors = Table(
    "my_connectors",
    metadata,
    Column("charge_point", String(255), primary_key=True),
    Column("connector_id", Integer, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("error_code", String(30), nullable=False),
    Column("info", String(50)),
    Column("last_update_at", DateTime(timezone=True), nullable=False),
)


def create_app(settings: Settings | None = None, app_database_url: str | None = None) -> FastAPI:
    """The embedding application: its routes, chargegrid mounted at ``/``."""
    settings = settings or load_settings(
        database_url=os.environ.get(
            "CHARGEGRID_DATABASE_URL", "sqlite+aiosqlite:///./example-cg.db"
        )
    )
    app_engine = create_async_engine(app_database_url or "sqlite+aiosqlite:///./example-app.db")
    grid_app = build_app(settings, dashboard=False)
    grid = grid_app.node

    @grid.hooks.after("StatusNotification")
    async def keep_my_connectors(
        ctx: HookContext, request: dict[str, Any], response: dict[str, Any]
    ) -> None:
        row = {
            "charge_point": ctx.charge_point,
            "connector_id": request["connectorId"],
            "status": request["status"],
            "error_code": request.get("errorCode", "NoError"),
            "info": request.get("info"),
            "last_update_at": datetime.now(UTC),
        }
        statement = insert(my_connectors).values(row)
        async with app_engine.begin() as connection:
            await connection.execute(
                statement.on_conflict_do_update(
                    index_elements=["charge_point", "connector_id"],
                    set_={
                        k: v for k, v in row.items() if k not in ("charge_point", "connector_id")
                    },
                )
            )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with app_engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        # A mounted application's own lifespan is not run by Starlette: start chargegrid here.
        async with grid.lifespan():
            yield
        await app_engine.dispose()

    app = FastAPI(title="connector sync example", lifespan=lifespan)
    app.state.grid = grid

    @app.get("/my/connectors")
    async def list_my_connectors() -> list[dict[str, Any]]:
        """The application's own view, kept in sync by the after hook."""
        async with app_engine.connect() as connection:
            rows = await connection.execute(
                select(my_connectors).order_by(
                    my_connectors.c.charge_point, my_connectors.c.connector_id
                )
            )
            return [
                {**row._asdict(), "last_update_at": row.last_update_at.isoformat()} for row in rows
            ]

    app.mount("/", grid_app)  # OCPP at /ocpp/{id}, chargegrid's API at /api/v1
    return app
