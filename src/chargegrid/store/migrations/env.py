"""Alembic environment. Always run through :func:`chargegrid.store.migrate.upgrade`, which
hands over an open connection (Alembic cookbook: "Programmatic API use (connection sharing)
with asyncio").
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from chargegrid.store.tables import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `chargegrid migrate`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
