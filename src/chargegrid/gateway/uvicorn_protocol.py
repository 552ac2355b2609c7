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

It also offers the ASGI application a shorter path for text messages, the ASGI extension
:data:`DIRECT_TEXT`. Through ASGI every message costs a dict, a hop through the receive queue
with a wake-up of the application's task, pausing and resuming the socket's reading, and on the
way out a chain of coroutines and websockets' frame objects: a quarter of the event loop's time
under load (docs/benchmarks.md). An application that attaches a callback gets each complete
text message handed to it as it is parsed, and a function that writes a text frame at once.
Everything else (binary messages, the disconnect, the close handshake, pings) stays on the
ASGI path.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import apply_mask  # type: ignore[attr-defined]  # C where compiled
from websockets.http11 import Request
from websockets.protocol import State
from websockets.streams import StreamReader

__all__ = ["DIRECT_TEXT", "LeanWebSocketProtocol", "TextSink"]

# scope["extensions"][DIRECT_TEXT] = {"attach": attach, "send_text": send_text} once the
# upgrade request is read. ``attach(on_text)`` hands every complete text message from then on
# (those already queued first, in order, before it returns) to ``on_text`` instead of the
# receive queue. ``send_text(text)`` writes one text frame at once and returns True, or returns
# False where the application must use the ASGI ``send`` instead (writing is paused, or the
# connection is closing: ``send`` waits, or raises, as ASGI says).
DIRECT_TEXT = "chargegrid.direct_text"

TextSink = Callable[[str], None]

# RFC 6455 §5.2: FIN + opcode 0x1 (text); payload lengths up to 125 in the second byte, up to
# 65,535 after the marker 126 in two bytes, beyond in eight after 127. A server's frames are not
# masked (§5.1).
_TEXT_FIN = 0x81
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
# A client's frame (§5.3: masked) of a whole text message: FIN + text, MASK + 7-bit length.
_MASKED = 0x80
# websockets' parser waits here between frames (its StreamReader.at_eof, see _between_frames).
_AT_EOF = getattr(StreamReader.at_eof, "__code__", None)


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

    def get_nowait(self) -> Any:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

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
        return self.get_nowait()

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
        # Set in __init__ so that it shares the instance dicts' keys with the rest (memory).
        self.on_text: TextSink | None = None
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
        scope: Any = getattr(self, "scope", None)  # none if the upgrade was refused
        if scope is not None:
            scope["extensions"][DIRECT_TEXT] = {
                "attach": self.attach_text,
                "send_text": self.send_text_now,
            }

    # -- the direct text path (DIRECT_TEXT) --------------------------------------------------

    def attach_text(self, on_text: TextSink) -> None:
        """Hand complete text messages to ``on_text`` from now on; see :data:`DIRECT_TEXT`."""
        self.on_text = on_text
        queue: Any = self.queue
        held: list[Any] = []
        # Messages the application has not read yet: the text ones go to on_text, in order;
        # anything from the first other one on (a binary message, the disconnect) stays queued.
        while not queue.empty():
            held.append(queue.get_nowait())
        rest = False
        for message in held:
            if not rest and message["type"] == "websocket.receive" and "text" in message:
                on_text(message["text"])
            else:
                rest = True
                queue.put_nowait(message)
        if self.read_paused and queue.empty():
            self.read_paused = False
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # The usual chunk of an OCPP connection is one whole text message in one unfragmented,
        # uncompressed frame: read here, in a few operations, what websockets' generic parser
        # (generators, a Frame object, its checks; ~10 % of the event loop's time under load)
        # makes of it. Only while that parser stands between frames, outside a fragmented
        # message, so that what it would have done is nothing but hand the text on: anything
        # else (control frames, fragments, a frame split across reads, too big, extensions)
        # goes to websockets as before, whole.
        on_text = self.on_text
        if on_text is not None and not self.close_sent:
            texts = self._whole_text_frames(data)
            if texts is not None:
                self._deliver_all(on_text, texts)
                return
        super().data_received(data)

    def _deliver_all(self, on_text: TextSink, texts: list[bytes]) -> None:
        for payload in texts:
            if self.close_sent:  # failed on a message: the rest is discarded, as uvicorn does
                return
            self._deliver(on_text, payload)

    def _whole_text_frames(self, data: bytes) -> list[bytes] | None:
        """The unmasked payloads of ``data`` if it is nothing but whole text frames that
        websockets would take as they are (else None: let websockets read it)."""
        conn = self.conn
        if conn.state is not State.OPEN or conn.extensions or not self._between_frames():
            return None
        limit = conn.max_message_size
        texts = []
        end = len(data)
        at = 0
        while at < end:
            if end - at < 6 or data[at] != _TEXT_FIN:  # RFC 6455 §5.2: RSV bits 0
                return None
            size = data[at + 1]
            if not size & _MASKED:
                return None  # §5.1: the server must fail an unmasked client frame
            size &= 0x7F
            at += 2
            if size == 126:
                size = (data[at] << 8) | data[at + 1]
                at += 2
            elif size == 127:
                return None
            if limit is not None and size > limit:
                return None
            start = at + 4
            if start + size > end:
                return None
            texts.append(apply_mask(data[start : start + size], data[at:start]))
            at = start + size
        return texts

    def _between_frames(self) -> bool:
        """websockets' parser waits for the first byte of a frame, not in a fragmented
        message. (Its generators' innermost is StreamReader.at_eof only there; if websockets
        ever changes that, this says False and its parser reads everything, as before.)"""
        conn = self.conn
        if conn.current_size is not None or conn.reader.buffer:
            return False
        generator: Any = conn.parser
        inner = getattr(generator, "gi_yieldfrom", None)
        while inner is not None:
            generator, inner = inner, getattr(inner, "gi_yieldfrom", None)
        return getattr(generator, "gi_code", None) is _AT_EOF

    def send_receive_event_to_app(self) -> None:
        on_text = self.on_text
        if on_text is None or self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        frames = self.frames
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self.frames = []
        self._deliver(on_text, data)

    def _deliver(self, on_text: TextSink, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            # As uvicorn does: RFC 6455 §8.1, a text message must be valid UTF-8.
            self.logger.exception("Invalid UTF-8 sequence received from client.")
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        try:
            on_text(text)
        except Exception:
            # What uvicorn does when an application fails: log it and end the connection
            # (1011: the server met an unexpected condition, RFC 6455 §7.4.1).
            self.logger.exception("Exception in ASGI application\n")
            self.conn.fail(1011)
            self.handle_parser_exception()

    def send_text_now(self, text: str) -> bool:
        """Write ``text`` as one text frame now (True), or leave it to ASGI ``send`` (False)."""
        conn = self.conn
        if (
            self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or conn.state is not State.OPEN
        ):
            return False
        data = text.encode()
        if conn.extensions:  # e.g. permessage-deflate: websockets frames it
            conn.send_text(data)
            self.transport.write(b"".join(conn.data_to_send()))
            return True
        size = len(data)
        if size < 126:
            header = _SHORT.pack(_TEXT_FIN, size)
        elif size < 65536:
            header = _MEDIUM.pack(_TEXT_FIN, 126, size)
        else:
            header = _LONG.pack(_TEXT_FIN, 127, size)
        self.transport.write(header + data)
        return True

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_text is not None:
            # The peer does not read what we send: read no more from it, or every message it
            # sends would add an answer to the buffer (the ASGI path stops at ``send``).
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_text is not None and not self.read_paused:
            self.transport.resume_reading()

    def start_keepalive(self) -> None:
        # Called once, right after the 101 response was written: uvicorn does not look at the
        # response again.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()
