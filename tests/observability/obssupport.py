"""Helpers for the observability tests: scraping /metrics, API tokens, waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from chargegrid.store import users as user_store
from chargegrid.store.database import writing
from support import RunningServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: RunningServer) -> Samples:
    """Every sample of ``GET /metrics``, keyed by (sample name, labels)."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when it is not there (a counter that never moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def moved(before: Samples, after: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of counters whose value changed, with the change."""
    keys = set(before) | set(after)
    return {
        key: after.get(key, 0.0) - before.get(key, 0.0)
        for key in keys
        if key[0].endswith("_total") and after.get(key, 0.0) != before.get(key, 0.0)
    }


async def token_for(server: RunningServer, username: str, role: str) -> str:
    now = datetime.now(UTC)
    async with writing(server.node.engine).begin() as connection:
        user_id = await user_store.add_user(
            connection, username, role=user_store.Role(role), now=now, all_charge_points=True
        )
        return await user_store.issue_token(connection, user_id, name="test", now=now)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (for effects that follow a socket closing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
