"""RedisBus behaviour beyond the shared contract: several nodes, the has_subscribers bound, faults.

Each test uses its own channel prefix and node ids (uuid), so tests, and other runs sharing the
Redis server, never see each other; faults are injected only into this test's own connections
(``CLIENT KILL ID`` of one node's pub/sub connection, or a TCP proxy between the bus and Redis that
the test stops and restarts), never server-wide.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from chargegrid.bus.redis import BusUnavailable, RedisBus, RedisSubscription
from outage_proxy import Proxy

REDIS_URL = os.environ.get("CHARGEGRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DELIVERY_TIMEOUT = 5.0


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A plain client for looking at (and breaking) the bus from outside."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        if IN_CI:
            pytest.fail(f"Redis is required in CI and not reachable at {REDIS_URL}: {error}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
async def nodes(redis_client: aioredis.Redis, prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """``await make(**options)``: a started RedisBus (a "node"), stopped after the test."""
    started: list[RedisBus] = []

    async def make(url: str = REDIS_URL, **options: Any) -> RedisBus:
        options.setdefault("node_id", uuid.uuid4().hex)
        bus = RedisBus(url, prefix=prefix, **options)
        await bus.start()
        started.append(bus)
        return bus

    yield make
    for bus in started:
        await bus.stop()


async def eventually(predicate: Callable[[], bool], within: float) -> float | None:
    """Seconds until ``predicate`` held, or None if it did not within ``within``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began >= within:
            return None
        await asyncio.sleep(0.005)
    return time.monotonic() - began


async def next_message(
    messages: AsyncIterator[tuple[str, dict[str, Any]]], timeout: float = DELIVERY_TIMEOUT
) -> tuple[str, dict[str, Any]]:
    return await asyncio.wait_for(anext(messages), timeout)


async def drain(subscription: RedisSubscription) -> list[tuple[str, dict[str, Any]]]:
    await subscription.close()
    return [item async for item in subscription]


async def test_a_subscriber_on_another_node_receives_and_nobody_gets_duplicates(
    nodes: Callable[..., Any],
) -> None:
    node_a: RedisBus = await nodes()
    node_b: RedisBus = await nodes()
    on_a = await node_a.subscribe(["charge_point.CP1.status"])
    on_b = await node_b.subscribe(["charge_point.CP1.status"])
    assert await eventually(lambda: node_a.has_subscribers("charge_point.CP1.status"), 2)

    await node_a.publish("charge_point.CP1.status", {"from": "a"})
    await node_b.publish("charge_point.CP1.status", {"from": "b"})
    messages_a, messages_b = aiter(on_a), aiter(on_b)
    got_a = {(await next_message(messages_a))[1]["from"] for _ in range(2)}
    got_b = {(await next_message(messages_b))[1]["from"] for _ in range(2)}
    assert got_a == got_b == {"a", "b"}
    # A node's own messages come back from Redis too; they must not be delivered twice.
    await asyncio.sleep(0.3)
    assert await drain(on_a) == []
    assert await drain(on_b) == []


async def test_a_local_publish_stays_on_its_node(nodes: Callable[..., Any]) -> None:
    """Figures every node computes alike (fleet stats) go to this node's subscribers only."""
    node_a: RedisBus = await nodes()
    node_b: RedisBus = await nodes()
    on_a = await node_a.subscribe(["fleet.stats"])
    on_b = await node_b.subscribe(["fleet.stats"])
    assert await eventually(lambda: node_a.has_subscribers("fleet.stats"), 2)
    assert await eventually(lambda: node_b.has_subscribers("fleet.stats"), 2)
    await node_a.publish("fleet.stats", {"from": "a"}, local=True)
    await node_b.publish("fleet.stats", {"from": "b"}, local=True)
    await node_a.publish("fleet.stats", {"from": "a, to all"})
    assert [m["from"] for _c, m in [await next_message(aiter(on_a)) for _ in range(2)]] == [
        "a",
        "a, to all",
    ]
    messages_b = aiter(on_b)
    got_b = [(await next_message(messages_b))[1]["from"] for _ in range(2)]
    assert sorted(got_b) == ["a, to all", "b"]
    await asyncio.sleep(0.3)
    assert await drain(on_a) == []
    assert await drain(on_b) == []


async def test_has_subscribers_turns_true_by_announcement_without_waiting_for_refresh(
    nodes: Callable[..., Any],
) -> None:
    # A refresh interval far longer than the test: only the announcement can explain a True.
    node_a: RedisBus = await nodes(refresh_interval=60)
    node_b: RedisBus = await nodes(refresh_interval=60)
    assert not node_a.has_subscribers("fleet.status")
    subscription = await node_b.subscribe(["fleet.status"])
    took = await eventually(lambda: node_a.has_subscribers("fleet.status"), 1.0)
    assert took is not None and took < 1.0
    await subscription.close()


async def test_has_subscribers_turns_false_within_the_refresh_bound(
    nodes: Callable[..., Any],
) -> None:
    interval = 0.3
    node_a: RedisBus = await nodes(refresh_interval=interval)
    node_b: RedisBus = await nodes(refresh_interval=interval)
    subscription = await node_b.subscribe(["fleet.status"])
    assert await eventually(lambda: node_a.has_subscribers("fleet.status"), 1.0) is not None
    await subscription.close()
    # The documented bound: one refresh interval plus a round trip (generous slack for CI).
    took = await eventually(lambda: not node_a.has_subscribers("fleet.status"), interval + 1.0)
    assert took is not None


async def test_a_subscriber_that_never_announced_is_found_by_the_refresh(
    nodes: Callable[..., Any], redis_client: aioredis.Redis, prefix: str
) -> None:
    # A node whose announcement was lost (say, sent while our pub/sub connection was down) looks
    # exactly like a plain Redis subscriber: PUBSUB CHANNELS still finds it.
    interval = 0.3
    node_a: RedisBus = await nodes(refresh_interval=interval)
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(f"{prefix}ev:charge_point.CP7.meter_values")
    try:
        took = await eventually(
            lambda: node_a.has_subscribers("charge_point.CP7.meter_values"), interval + 1.0
        )
        assert took is not None
        # And it receives the envelope: {"node": ..., "message": ...}, orjson-encoded.
        await node_a.publish("charge_point.CP7.meter_values", {"value": 1.5})
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        received = None
        while received is None and time.monotonic() < deadline:
            received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        assert received is not None
        assert orjson.loads(received["data"]) == {"node": node_a.node_id, "message": {"value": 1.5}}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_one_pubsub_connection_per_node(
    nodes: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    node: RedisBus = await nodes()
    subscriptions = [await node.subscribe([f"charge_point.CP{n}.status"]) for n in range(20)]
    subscriptions.append(await node.subscribe(["fleet.status"]))
    ours = [
        client
        for client in await redis_client.client_list()
        if client["name"] == f"chargegrid-bus:{node.node_id}" and "P" in client["flags"]
    ]
    assert len(ours) == 1
    # The control channel plus the 21 distinct channels, on that one connection.
    assert int(ours[0]["sub"]) == 22
    for subscription in subscriptions:
        await subscription.close()


async def test_subscriber_recovers_after_its_connection_is_killed(
    nodes: Callable[..., Any], redis_client: aioredis.Redis
) -> None:
    node_a: RedisBus = await nodes()
    node_b: RedisBus = await nodes()
    subscription = await node_b.subscribe(["charge_point.CP1.sessions"])
    messages = aiter(subscription)
    assert await eventually(lambda: node_a.has_subscribers("charge_point.CP1.sessions"), 2)
    await node_a.publish("charge_point.CP1.sessions", {"n": 0})
    assert await next_message(messages) == ("charge_point.CP1.sessions", {"n": 0})

    killed = 0
    for client in await redis_client.client_list():
        if client["name"] == f"chargegrid-bus:{node_b.node_id}" and "P" in client["flags"]:
            await redis_client.client_kill_filter(_id=client["id"])
            killed += 1
    assert killed == 1

    # Reconnected and re-subscribed by itself: later messages arrive.
    assert await eventually(lambda: node_b.reconnects >= 1 and node_b.connected, 10) is not None
    received = await _publish_until_received(node_a, "charge_point.CP1.sessions", messages)
    assert received["marker"] >= 0
    await node_a.publish("charge_point.CP1.sessions", {"n": 1})
    assert await _skip_markers(messages) == ("charge_point.CP1.sessions", {"n": 1})
    assert node_a.has_subscribers("charge_point.CP1.sessions")


async def test_redis_outage_publish_does_not_raise_and_events_resume(
    nodes: Callable[..., Any],
) -> None:
    proxy = Proxy(REDIS_URL)
    await proxy.start()
    try:
        node_a: RedisBus = await nodes(proxy.url)
        node_b: RedisBus = await nodes(proxy.url)
        remote = await node_b.subscribe(["charge_point.CP1.meter_values"])
        local = await node_a.subscribe(["charge_point.CP1.meter_values"])
        remote_messages, local_messages = aiter(remote), aiter(local)
        assert await eventually(lambda: node_a.has_subscribers("charge_point.CP1.meter_values"), 2)

        await proxy.stop()
        began = time.monotonic()
        for n in range(200):
            await node_a.publish("charge_point.CP1.meter_values", {"n": n})
        # The publisher's hot path never waits for Redis...
        assert time.monotonic() - began < 0.5
        # ...its own node's subscribers still get everything...
        assert [(await next_message(local_messages))[1]["n"] for _ in range(200)] == list(
            range(200)
        )
        # ...and what could not reach Redis is counted, not raised.
        assert await eventually(lambda: node_a.publish_dropped > 0, DELIVERY_TIMEOUT)
        assert await eventually(lambda: not node_b.connected, DELIVERY_TIMEOUT) is not None
        # Redis unreachable: the view is kept (a False must be right).
        await asyncio.sleep(node_a.refresh_interval * 1.5)
        assert node_a.has_subscribers("charge_point.CP1.meter_values")

        await proxy.start()
        received = await _publish_until_received(
            node_a, "charge_point.CP1.meter_values", remote_messages, timeout=20
        )
        assert received["marker"] >= 0
        await node_a.publish("charge_point.CP1.meter_values", {"n": "after"})
        assert await _skip_markers(remote_messages) == (
            "charge_point.CP1.meter_values",
            {"n": "after"},
        )
        assert node_b.reconnects >= 1
        # Stop the nodes before the proxy goes, or they would see (and log) one more outage.
        await node_a.stop()
        await node_b.stop()
    finally:
        if proxy._server is not None:
            await proxy.stop()


async def test_start_fails_fast_when_redis_is_unreachable(prefix: str) -> None:
    # A port nobody listens on: bind one, note it, close it.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

    bus = RedisBus(f"redis://user:secret@127.0.0.1:{port}/0", prefix=prefix)
    began = time.monotonic()
    with pytest.raises(BusUnavailable) as raised:
        await bus.start()
    assert time.monotonic() - began < 5
    assert f"127.0.0.1:{port}" in str(raised.value)
    assert "secret" not in str(raised.value)
    # Unusable but harmless: local publish and stop work.
    await bus.publish("x", {"n": 1})
    await bus.stop()


async def _publish_until_received(
    bus: RedisBus,
    channel: str,
    messages: AsyncIterator[tuple[str, dict[str, Any]]],
    timeout: float = 10,
) -> dict[str, Any]:
    """After a fault, publish markers until one arrives: when is unknown, that it does is the
    claim."""
    # One pending read, never cancelled in between: cancelling an async generator's anext()
    # would end the iteration for good.
    pending = asyncio.ensure_future(anext(messages))
    deadline = time.monotonic() + timeout
    marker = 0
    while time.monotonic() < deadline:
        await bus.publish(channel, {"marker": marker})
        marker += 1
        done, _ = await asyncio.wait({pending}, timeout=0.2)
        if done:
            return pending.result()[1]
    pending.cancel()
    raise AssertionError(f"no message on {channel} within {timeout} s")


async def _skip_markers(
    messages: AsyncIterator[tuple[str, dict[str, Any]]],
) -> tuple[str, dict[str, Any]]:
    while True:
        channel, message = await next_message(messages)
        if "marker" not in message:
            return channel, message
