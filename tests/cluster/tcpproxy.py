"""A TCP forwarder to put between server nodes and PostgreSQL, to cut the database on purpose.

The shared PostgreSQL server cannot be stopped (other tests and other people use it), so the
nodes reach it through this forwarder instead, and the forwarder is what goes down: ``cut()``
closes its listening socket (new connections are refused, as by a stopped server) and resets
every forwarded connection (as a server that went away); ``restore()`` listens again on the same
port. This is the one fake allowed in these tests: a failure injected on purpose.

The forwarder runs its own asyncio loop in a thread, so it keeps forwarding while the test's
loop is blocked (a synchronous fixture teardown stopping the nodes, which still talk to the
database on their way out).

``stall()``: connections stay open and new ones are accepted, but nothing is forwarded either
way, as from a database host that froze or a network that drops packets silently; ``restore()``
lets the held bytes through.

``lose_acks(marker)``: the next transaction whose statements carry ``marker`` (a string the test
put in a message, e.g. a timestamp) reaches PostgreSQL and commits, but the server's answer to
its COMMIT is never forwarded: the commit happened, the node does not know. Cutting then gives
the node an error for a write that is durable, the worst case for "exactly once". To see the
statements, the forwarder declines TLS on the nodes' behalf (it answers PostgreSQL's SSLRequest
with "N", as a server without TLS does; clients with the default ``sslmode=prefer`` continue in
the clear).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# PostgreSQL protocol: the 8-byte requests a client may send before its startup message
# (length 8, then a magic "protocol version"), answered with one byte, "S" or "N".
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)
# asyncpg commits with a simple query ("COMMIT;"); SAVEPOINT releases do not contain the word.
_COMMIT = b"COMMIT"
_TAIL = 256  # bytes kept from the previous chunk, so a marker split across reads is still seen


@dataclass(eq=False)
class _Pipe:
    """One forwarded connection: the node's socket and ours to PostgreSQL."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    armed: bytes | None = None  # the marker seen in this connection's current statements
    deaf: bool = False  # answers from PostgreSQL are dropped from now on (lose_acks)
    tail: bytes = b""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        # RST both ways: the node sees its connection fail at once, PostgreSQL rolls back
        # whatever transaction was open on it (a COMMIT it already received stays committed).
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._markers: list[bytes] = []
        self._lost: list[bytes] = []
        self._lock = threading.Lock()
        self._flowing: asyncio.Event | None = None  # cleared while stalled (the loop's own)

    # -- control, from any thread -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        """Refuse new connections and reset every forwarded one."""
        self._call(self._cut())

    def stall(self) -> None:
        """Forward nothing, close nothing: the database stops answering."""
        self._call(self._set_flowing(False))

    def restore(self) -> None:
        """Listen again on the same port (after a cut); forward again (after a stall)."""
        self._call(self._listen())
        self._call(self._set_flowing(True))

    def lose_acks(self, marker: bytes) -> None:
        """Drop PostgreSQL's answer to the COMMIT of the next transaction carrying ``marker``."""
        with self._lock:
            self._markers.append(marker)

    @property
    def acks_lost(self) -> list[bytes]:
        """The markers whose transaction's COMMIT went out and whose answer was dropped."""
        with self._lock:
            return list(self._lost)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # -- the loop's side ----------------------------------------------------------------------

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        if self._server is not None:
            return
        # The same port again after a cut: the nodes' database URL names it. reuse_address
        # (the default on Unix) lets it be bound again at once despite connections in TIME_WAIT.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for pipe in list(self._pipes):
            pipe.abort()
            for task in pipe.tasks:
                task.cancel()
        self._pipes.clear()
        if server is not None:
            await server.wait_closed()

    async def _shutdown(self) -> None:
        await self._cut()
        # Connections still being set up (or held by a stall) end here, not in a closed loop.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            await self._flowing.wait()  # stalled: the handshake gets no answer
            first = await self._startup(reader, client)
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.IncompleteReadError) as error:
            log.info("tcpproxy: connection dropped before it was forwarded: %s", error)
            client.transport.abort()
            return
        if self._server is None:  # cut while connecting
            client.transport.abort()
            upstream.transport.abort()
            return
        pipe = _Pipe(client, upstream)
        self._pipes.add(pipe)
        upstream.write(first)
        pipe.tasks = [
            asyncio.create_task(self._to_server(pipe, reader)),
            asyncio.create_task(self._to_client(pipe, upstream_reader)),
        ]
        try:
            await asyncio.gather(*pipe.tasks, return_exceptions=True)
        finally:
            self._pipes.discard(pipe)
            pipe.abort()

    async def _startup(self, reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> bytes:
        """The client's startup message, after declining any TLS/GSS encryption request."""
        while True:
            first = await reader.readexactly(8)  # a startup message is never shorter
            if first not in (_SSL_REQUEST, _GSSENC_REQUEST):
                return first
            client.write(b"N")
            await client.drain()

    async def _to_server(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                await self._flowing_wait()
                self._watch(pipe, chunk)
                pipe.upstream.write(chunk)
                await pipe.upstream.drain()
        pipe.abort()

    async def _to_client(self, pipe: _Pipe, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                await self._flowing_wait()
                if pipe.deaf:
                    continue  # the commit's answer, and anything after it, never arrives
                pipe.client.write(chunk)
                await pipe.client.drain()
        pipe.abort()

    async def _flowing_wait(self) -> None:
        assert self._flowing is not None
        await self._flowing.wait()

    def _watch(self, pipe: _Pipe, chunk: bytes) -> None:
        """Arm on a marker in the client's statements; go deaf at that transaction's COMMIT."""
        with self._lock:
            if not self._markers and pipe.armed is None:
                return
            window = pipe.tail + chunk
            pipe.tail = window[-_TAIL:]
            start = 0
            if pipe.armed is None:
                for marker in self._markers:
                    at = window.find(marker)
                    if at >= 0:
                        pipe.armed, start = marker, at + len(marker)
                        break
            if pipe.armed is not None and not pipe.deaf and _COMMIT in window[start:]:
                if pipe.armed in self._markers:
                    self._markers.remove(pipe.armed)
                    self._lost.append(pipe.armed)
                    pipe.deaf = True
                else:  # another connection's COMMIT already lost this marker's ack
                    pipe.armed = None
