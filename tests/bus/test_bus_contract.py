"""The event bus contract: the same assertions for every implementation.

Three set-ups of :class:`chargegrid.bus.base.Bus`:

- ``memory``: one MemoryBus publishes and subscribes;
- ``redis``: one RedisBus publishes and subscribes (local delivery);
- ``redis-two-nodes``: a RedisBus publishes, another one on the same Redis subscribes, so every
  message crosses Redis.

Redis delivers asynchronously and ``has_subscribers`` may lag by a documented bound, so assertions
about "eventually" poll up to ``Buses.bound`` (zero for memory: there it must hold at once). Redis
is found at CHARGEGRID_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); outside CI its tests are
skipped when it is not reachable, in CI they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import redis.asyncio as aioredis

from chargegrid.bus.base import Bus, Subscription
from chargegrid.bus.memory import MemoryBus
from chargegrid.bus.redis import RedisBus

REDIS_URL = os.environ.get("CHARGEGRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# How long a message may take to cross Redis in these tests (generous for loaded CI machines).
DELIVERY_TIMEOUT = 5.0


@dataclass
class Buses:
    publisher: Bus
    subscriber: Bus
    # How long has_subscribers may lag behind subscribe/close (RedisBus: refresh interval + slack).
    bound: float


async def _require_redis() -> None:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and not reachable at {REDIS_URL}: {error}")
        pytest.skip(f"Redis not reachable at {REDIS_URL}")
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis", "redis-two-nodes"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[Buses]:
    if request.param == "memory":
        memory = MemoryBus()
        await memory.start()
        yield Buses(memory, memory, 0.0)
        await memory.stop()
        return
    await _require_redis()
    # A prefix per test: tests (and other runs sharing the server) never see each other.
    prefix = f"test-{uuid.uuid4().hex}:"
    node_a = RedisBus(REDIS_URL, node_id="a", prefix=prefix)
    nodes = [node_a]
    if request.param == "redis-two-nodes":
        nodes.append(RedisBus(REDIS_URL, node_id="b", prefix=prefix))
    for node in nodes:
        await node.start()
    yield Buses(node_a, nodes[-1], node_a.refresh_interval + 1.0)
    for node in nodes:
        await node.stop()


async def eventually(predicate: Callable[[], bool], within: float) -> bool:
    """Whether ``predicate`` holds now or turns true within ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def subscribe(buses: Buses, channels: list[str], **options: Any) -> Subscription:
    """Subscribe on the subscriber side, then wait until the publisher knows (the documented
    bound), as the app's publishers check ``has_subscribers`` before publishing."""
    subscription = await buses.subscriber.subscribe(channels, **options)
    for channel in channels:
        assert await eventually(partial(buses.publisher.has_subscribers, channel), buses.bound)
    return subscription


async def take(
    messages: AsyncIterator[tuple[str, dict[str, Any]]], count: int
) -> list[tuple[str, dict[str, Any]]]:
    async def collect() -> list[tuple[str, dict[str, Any]]]:
        return [await anext(messages) for _ in range(count)]

    return await asyncio.wait_for(collect(), DELIVERY_TIMEOUT)


async def rest(subscription: Subscription) -> list[tuple[str, dict[str, Any]]]:
    """Close and drain: what was still waiting, and proof that iteration ends."""
    await subscription.close()

    async def collect() -> list[tuple[str, dict[str, Any]]]:
        return [item async for item in subscription]

    return await asyncio.wait_for(collect(), DELIVERY_TIMEOUT)


async def settle(buses: Buses) -> None:
    """Give messages in flight time to arrive (before asserting that something did not)."""
    if buses.publisher is not buses.subscriber:
        await asyncio.sleep(0.3)


async def test_publish_and_receive(buses: Buses) -> None:
    subscription = await subscribe(buses, ["charge_point.CP1.status"])
    messages = aiter(subscription)
    payload = {"connector_id": 1, "status": "Charging", "info": None, "value": 1.5}
    await buses.publisher.publish("charge_point.CP1.status", payload)
    assert await take(messages, 1) == [("charge_point.CP1.status", payload)]
    await subscription.close()


async def test_several_channels_keep_per_channel_order(buses: Buses) -> None:
    subscription = await subscribe(buses, ["a", "b"])
    messages = aiter(subscription)
    for n in range(3):
        await buses.publisher.publish("a", {"n": n})
        await buses.publisher.publish("b", {"n": n})
    received = await take(messages, 6)
    assert [m["n"] for c, m in received if c == "a"] == [0, 1, 2]
    assert [m["n"] for c, m in received if c == "b"] == [0, 1, 2]
    await subscription.close()


async def test_a_subscriber_only_gets_its_channels(buses: Buses) -> None:
    only_a = await subscribe(buses, ["a"])
    only_b = await subscribe(buses, ["b"])
    messages_a, messages_b = aiter(only_a), aiter(only_b)
    # "b" first: had it reached only_a it would come before "a" (order holds per node).
    await buses.publisher.publish("b", {"to": "b"})
    await buses.publisher.publish("a", {"to": "a"})
    await buses.publisher.publish("unheard", {"to": "nobody"})
    assert await take(messages_a, 1) == [("a", {"to": "a"})]
    assert await take(messages_b, 1) == [("b", {"to": "b"})]
    await settle(buses)
    assert await rest(only_a) == []
    assert await rest(only_b) == []


async def test_add_and_remove_at_runtime(buses: Buses) -> None:
    subscription = await buses.subscriber.subscribe([])
    messages = aiter(subscription)
    await subscription.add(["a"])
    assert await eventually(lambda: buses.publisher.has_subscribers("a"), buses.bound)
    await buses.publisher.publish("a", {"n": 1})
    assert await take(messages, 1) == [("a", {"n": 1})]

    await subscription.add(["b"])
    assert await eventually(lambda: buses.publisher.has_subscribers("b"), buses.bound)
    await buses.publisher.publish("b", {"n": 2})
    assert await take(messages, 1) == [("b", {"n": 2})]

    await subscription.remove(["a"])
    await buses.publisher.publish("a", {"n": 3})
    await buses.publisher.publish("b", {"n": 4})
    assert await take(messages, 1) == [("b", {"n": 4})]
    await settle(buses)
    assert await rest(subscription) == []


async def test_close_ends_iteration_and_stops_delivery(buses: Buses) -> None:
    subscription = await subscribe(buses, ["a"])
    messages = aiter(subscription)
    await buses.publisher.publish("a", {"n": 1})
    assert await take(messages, 1) == [("a", {"n": 1})]

    # A reader blocked waiting for the next message is released by close().
    waiting = asyncio.ensure_future(anext(messages, None))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await subscription.close()
    assert await asyncio.wait_for(waiting, DELIVERY_TIMEOUT) is None

    await buses.publisher.publish("a", {"n": 2})
    await settle(buses)
    assert await rest(subscription) == []
    # Closing twice is harmless.
    await subscription.close()


async def test_order_is_kept_for_a_thousand_messages(buses: Buses) -> None:
    subscription = await subscribe(buses, ["charge_point.CP1.meter_values"])
    messages = aiter(subscription)
    for n in range(1000):
        await buses.publisher.publish("charge_point.CP1.meter_values", {"n": n})
    received = await take(messages, 1000)
    assert [m["n"] for _, m in received] == list(range(1000))
    assert subscription.dropped == 0
    await subscription.close()


async def test_a_subscriber_that_never_reads_holds_at_most_max_pending(buses: Buses) -> None:
    subscription = await subscribe(buses, ["a"], max_pending=10)
    for n in range(50):
        await buses.publisher.publish("a", {"n": n})
    assert await eventually(lambda: subscription.dropped == 40, DELIVERY_TIMEOUT)
    await settle(buses)
    assert subscription.dropped == 40
    # The newest survive, in order.
    assert [m["n"] for _, m in await rest(subscription)] == list(range(40, 50))


async def test_has_subscribers(buses: Buses) -> None:
    channel = "charge_point.CP9.sessions"
    assert not buses.publisher.has_subscribers(channel)
    assert not buses.subscriber.has_subscribers(channel)

    first = await buses.subscriber.subscribe([channel])
    # On the subscriber's own node at once; on others within the bound.
    assert buses.subscriber.has_subscribers(channel)
    assert await eventually(lambda: buses.publisher.has_subscribers(channel), buses.bound)
    second = await buses.subscriber.subscribe([channel])

    # With one of two subscribers gone, a False would be wrong, at any moment.
    await first.close()
    assert buses.subscriber.has_subscribers(channel)
    assert buses.publisher.has_subscribers(channel)
    await asyncio.sleep(buses.bound)
    assert buses.subscriber.has_subscribers(channel)
    assert buses.publisher.has_subscribers(channel)

    await second.close()
    assert await eventually(lambda: not buses.subscriber.has_subscribers(channel), buses.bound)
    assert await eventually(lambda: not buses.publisher.has_subscribers(channel), buses.bound)


async def test_publish_without_subscribers_is_harmless(buses: Buses) -> None:
    await buses.publisher.publish("nobody.listens", {"n": 1})
    subscription = await subscribe(buses, ["nobody.listens"])
    messages = aiter(subscription)
    await buses.publisher.publish("nobody.listens", {"n": 2})
    # The message published before subscribing is not replayed.
    assert await take(messages, 1) == [("nobody.listens", {"n": 2})]
    await subscription.close()


async def test_stop_ends_subscriptions(buses: Buses) -> None:
    subscription = await subscribe(buses, ["a"])
    messages = aiter(subscription)
    await buses.subscriber.stop()
    assert await asyncio.wait_for(anext(messages, None), DELIVERY_TIMEOUT) is None
    assert not buses.subscriber.has_subscribers("a")
