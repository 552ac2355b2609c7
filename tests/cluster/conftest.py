"""Fixtures shared by the cluster tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from clustersupport import REDIS_URL, PrivateRedis, need, redis_reachable

from support import PostgresDatabases


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    need(
        "redis-server",
        shutil.which("redis-server") is not None or Path("/usr/bin/redis-server").exists(),
    )
    server = PrivateRedis(tmp_path)
    asyncio.run(server.start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def shared_database(postgres_databases: PostgresDatabases) -> str:
    """A fresh PostgreSQL database, migrated, for the nodes of one test to share."""
    return asyncio.run(postgres_databases.create())


@pytest.fixture
async def shared_redis() -> str:
    """The machine's Redis (a test's nodes use a prefix of their own)."""
    need(f"Redis at {REDIS_URL}", await redis_reachable())
    return REDIS_URL
