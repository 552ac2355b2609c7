"""uvicorn's ``websockets-sansio`` WebSocket protocol, trimmed for many idle connections.

A node holds tens of thousands of mostly idle charge point sockets (docs/benchmarks.md, idle
connections), and uvicorn's protocol object is most of what each costs. As shipped, every
connection keeps, for its whole life:

- an :class:`asyncio.Queue` for the ASGI receive channel (three deques and an Event with a fourth,
  ~3 KiB), though it holds a message or two at most;
- an :class:`asyncio.Event` for write flow control (another deque, ~0.7 KiB);
- the parsed upgrade request and the 101 response (~3 KiB of header objects), which are only
  read while the handshake is answered (websockets' parser keeps the request, too).

:class:`LeanWebSocketProtocol` behaves the same with a receive queue and a flag that allocate
only while something waits or is queued, and lets the request's headers and the response go
once the upgrade is answered. ``chargegrid serve`` uses it unless ``ws_lean_protocol`` is off;
it falls back to the stock objects wherever uvicorn's are not the ones it expects.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

__all__ = ["LeanWebSocketProtocol"]


class _ReceiveQueue:
    """What uvicorn's protocol uses of an unbounded :class:`asyncio.Queue` (``put_nowait``,
    ``get``, ``empty``, ``qsize``), FIFO for items and for waiting getters. It holds no deque
    while empty, and its one usual getter (the app awaiting the next message, which an idle
    connection always is) in a one-item list rather than a deque."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: deque[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append(item)
        self._wake_next()

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                getters = self._getters
                if getters is not None and getter in getters:
                    getters.remove(getter)
                    if not getters:
                        self._getters = None
                if self._items and not getter.cancelled():
                    # Woken for an item, then cancelled: pass the wake-up on (as asyncio does).
                    self._wake_next()
                raise
        items = self._items
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None


class _Flag:
    """What uvicorn's protocol uses of :class:`asyncio.Event` (``set``, ``clear``, ``is_set``,
    ``wait``); holds no deque while nobody waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters = self._waiters
            if waiters is not None:
                waiters.remove(waiter)
                if not waiters:
                    self._waiters = None


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with less memory per connection (see above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        queue: Any = self.queue
        if type(queue) is asyncio.Queue and queue.empty():
            self.queue = _ReceiveQueue()  # type: ignore[assignment]
        writable: Any = self.writable
        if type(writable) is asyncio.Event:
            self.writable = _Flag(writable.is_set())  # type: ignore[assignment]

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        # The request was read into the ASGI scope (its headers copied) and answered or handed
        # to the app; uvicorn does not look at it again. websockets' parser keeps a reference
        # to it for the connection's life (a local of its suspended generator), so its headers
        # are emptied as well.
        self.request = None  # type: ignore[assignment]
        event.headers.clear()

    def start_keepalive(self) -> None:
        # Called once, right after the 101 response was written: uvicorn does not look at the
        # response again.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()
