"""Fixtures: every end-to-end test runs against SQLite and PostgreSQL.

PostgreSQL is found at CHARGEGRID_TEST_POSTGRES_URL (default postgres@127.0.0.1:5432). Outside CI,
tests needing it are skipped when it is not reachable; in CI (CI=true) they fail instead, so a
missing server can never pass as a green run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from chargegrid.config import Settings
from support import POSTGRES_ADMIN_URL, PostgresDatabases, RunningServer, running_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_reachable() -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=3)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    if not _postgres_reachable():
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI and not reachable at {POSTGRES_ADMIN_URL}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")
    databases = PostgresDatabases(POSTGRES_ADMIN_URL)
    asyncio.run(databases.setup())
    yield databases
    asyncio.run(databases.teardown())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: an SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'chargegrid.db'}"
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    return asyncio.run(databases.create())


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Test settings: fast timeouts; everything else as shipped."""
    return Settings(
        database_url=database_url,
        call_timeout=2.0,
        liveness_flush_seconds=0.1,
        sqlite_synchronous="NORMAL",
    )


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    async with running_server(settings) as running:
        yield running
