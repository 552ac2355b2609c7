"""One charge point's live connection: the engine session, the handler queue, outgoing calls.

Transport-agnostic: the ASGI adapter (or any other) feeds received text to :meth:`receive` and
provides a :class:`Transport` to send and close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from chargegrid.gateway.observer import NO_OBSERVER, ConnectionObserver, FrameTrace
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.events import Ignored, IncomingCall, IncomingError, IncomingResult, Reply
from chargegrid.ocpp.frames import Call
from chargegrid.ocpp.session import OcppSession

log = logging.getLogger(__name__)

# (charge point session object, action, payload) -> response payload
Dispatch = Callable[[Any, str, dict[str, Any]], Awaitable[dict[str, Any]]]
# The same without a coroutine where the action allows (csms/dispatch.Dispatcher.nowait):
# (charge point session object, action, payload, done) -> the response to send once ``done``
# is called with None (or the OcppError to send instead), or None: await the Dispatch.
Nowait = Callable[
    [Any, str, dict[str, Any], Callable[[OcppError | None], None]], dict[str, Any] | None
]


# Seconds a connection's worker task waits for the next CALL before it ends (see _work).
WORKER_LINGER = 5.0


# CALLERRORs being sent by a task (receive_nowait, when the transport cannot send at once).
_replies: set[asyncio.Task[None]] = set()


class Transport(Protocol):
    def send_nowait(self, text: str) -> bool:
        """Send ``text`` now if the transport can without waiting (True), else nothing (False)."""
        ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class CallFailed(Exception):
    """A CSMS-initiated call did not get a CALLRESULT."""


class CallTimeout(CallFailed):
    pass


class CallRejected(CallFailed):
    """The charge point answered with a CALLERROR (or an invalid CALLRESULT)."""

    def __init__(self, code: str, description: str, details: dict[str, Any]) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = details


class ConnectionClosed(CallFailed):
    pass


class ChargePointConnection:
    """Serves one socket. Incoming CALLs run one at a time, in order, on a worker task, so a
    CALLRESULT for our own call is read while a handler waits for its commit, and a second CALL
    with a busy id can be seen and refused (CONFORMANCE R6).

    A node holds tens of thousands of these, mostly idle (docs/benchmarks.md, idle connections):
    slots instead of an instance dict, and the CALL queue, the call lock and the logger adapter
    exist only while they are used.
    """

    __slots__ = (
        "__weakref__",
        "_answer",
        "_call_lock",
        "_calls",
        "_dispatch",
        "_idle",
        "_idle_since",
        "_in_flight",
        "_linger",
        "_log",
        "_nowait",
        "_on_activity",
        "_transport",
        "_worker",
        "charge_point",
        "closed",
        "identity",
        "observer",
        "session",
        "trace",
    )

    def __init__(
        self,
        identity: str,
        charge_point: Any,
        session: OcppSession,
        transport: Transport,
        dispatch: Dispatch,
        on_activity: Callable[[], None],
        observer: ConnectionObserver = NO_OBSERVER,
        nowait: Nowait | None = None,
    ) -> None:
        self.identity = identity
        self.charge_point = charge_point
        self.session = session
        self._transport = transport
        self._dispatch = dispatch
        self._nowait = nowait
        # The CALL answered without the worker (``nowait``) and its response, until its
        # handler says done; CALLs that come meanwhile wait in _calls.
        self._in_flight: tuple[Call, dict[str, Any]] | None = None
        self._on_activity = on_activity
        self._calls: deque[Call] | None = None  # CALLs waiting for the worker, while any do
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[bool] | None = None  # the worker waits for a CALL on it
        self._idle_since = 0.0  # since when (loop time)
        self._linger: asyncio.TimerHandle | None = None  # ends a wait that lasts too long
        self._call_lock: asyncio.Lock | None = None  # made by the first CSMS-initiated call
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self.closed = False
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        # Observability: counters on every handled CALL; frames go to ``trace`` only while it is
        # set (the observer sets it per charge point), so tracing off costs one attribute test.
        self.observer = observer
        self.trace: FrameTrace | None = None

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """This connection's logger (``charge_point`` in every record), made when first used."""
        adapter = self._log
        if adapter is None:
            adapter = self._log = logging.LoggerAdapter(log, {"charge_point": self.identity})
        return adapter

    async def receive(self, text: str | bytes) -> None:
        """Feed one received text frame."""
        reply = self.take(text)
        if reply is not None:
            await self._send(reply)

    def receive_nowait(self, text: str | bytes) -> None:
        """Feed one received text frame, from a transport that delivers them by callback."""
        reply = self.take(text)
        if reply is not None:
            self._reply(reply)

    def _reply(self, text: str) -> None:
        """Send ``text`` now, or by a task if the transport cannot take it at once."""
        if not self._send_nowait(text):
            task = asyncio.get_running_loop().create_task(self._send(text))
            _replies.add(task)
            task.add_done_callback(_replies.discard)

    def take(self, text: str | bytes) -> str | None:
        """Take one received text frame without waiting: a CALL is queued for the worker, an
        answer settles our call. Returns what to send back at once (a CALLERROR for a frame
        that cannot be handled as a CALL), if anything."""
        self._on_activity()
        event = self.session.receive(text)
        if self.trace is not None:  # observability: message trace
            self.trace.frame_in(text, event)
        if isinstance(event, IncomingCall):
            if (
                self._nowait is not None
                and self._in_flight is None
                and not self._calls
                and (self._worker is None or self._idle is not None)  # no CALL being handled
                and self._take_nowait(event.call)
            ):
                return None
            calls = self._calls
            if calls is None:
                calls = self._calls = deque()
            calls.append(event.call)
            if self._in_flight is None:  # else it goes on when that one is answered
                self._resume()
        elif isinstance(event, IncomingResult):
            self._settle(event.call, event.payload, None)
        elif isinstance(event, IncomingError):
            self._settle(
                event.call, None, CallRejected(event.code, event.description, event.details)
            )
        elif isinstance(event, Reply):
            self.observer.call_refused(self, text, event)  # observability: metrics
            self.log.warning(
                "%s: %s %s (message %s)",
                self.identity,
                event.code,
                event.description,
                event.message_id,
            )
            return event.text
        elif isinstance(event, Ignored):
            self.log.info("%s: ignored frame: %s", self.identity, event.reason)
        return None

    def _resume(self) -> None:
        """Have the worker handle the queued CALLs: wake it, or start it."""
        idle = self._idle
        if idle is not None:  # the worker waits for it (or is about to see it)
            self._idle = None
            if not idle.done():
                idle.set_result(True)
        elif self._worker is None:
            self._worker = asyncio.create_task(self._work())

    def _take_nowait(self, call: Call) -> bool:
        """Answer ``call`` without the worker if its action allows (True), or leave it to
        the worker (False). Without a coroutine, its future and the task's wake-ups, the
        hot path (MeterValues) costs ~8 us less per message (docs/benchmarks.md, session 10)."""
        assert self._nowait is not None
        try:
            response = self._nowait(self.charge_point, call.action, call.payload, self._answered)
        except Exception as error:
            self._reply(self._answer_text(call, None, error))
            return True
        if response is None:
            return False
        self._in_flight = (call, response)
        return True

    def _answered(self, error: OcppError | None) -> None:
        """The CALL taken by :meth:`_take_nowait` is done: answer it, then go on with any
        CALL that came meanwhile."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:  # (each is answered once: the group commit's promise)
            return
        call, response = in_flight
        self._reply(self._answer_text(call, response, error))
        if self._calls:
            self._resume()

    async def _work(self) -> None:
        """Handle queued CALLs one after another (OCPP-J 1.6 §4.1.1: one at a time), then wait
        up to :data:`WORKER_LINGER` seconds for the next before ending: a task per CALL was
        ~8 % of the event loop's CPU under load (docs/benchmarks.md, session 7), while an idle
        connection keeps no task (nor queue)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                calls = self._calls
                while calls:
                    await self._handle(calls.popleft())
                self._calls = None
                if self.closed:
                    return
                idle = self._idle = loop.create_future()
                self._idle_since = loop.time()
                if self._linger is None:
                    # One timer for many waits: arming and cancelling one per CALL was ~5 %
                    # of the event loop's time under load (docs/benchmarks.md, session 8).
                    self._linger = loop.call_later(WORKER_LINGER, self._linger_check)
                # False: the wait is over (or the connection closing), unless a CALL came in
                # just after; if it waits for one answered without the worker, that answer
                # starts a worker again (_answered).
                if not await idle and (self._in_flight is not None or not self._calls):
                    return
        finally:
            self._worker = None
            self._idle = None
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None

    def _linger_check(self) -> None:
        """The worker's timer: end its wait if it has waited :data:`WORKER_LINGER` seconds,
        else look again when it will have (a worker handling a CALL arms a new one later)."""
        self._linger = None
        idle = self._idle
        if idle is None or idle.done():
            return
        loop = asyncio.get_running_loop()
        left = self._idle_since + WORKER_LINGER - loop.time()
        if left > 0:
            self._linger = loop.call_later(left, self._linger_check)
        else:
            idle.set_result(False)

    async def _handle(self, call: Call) -> None:
        try:
            response = await self._dispatch(self.charge_point, call.action, call.payload)
        except Exception as error:
            text = self._answer_text(call, None, error)
        else:
            text = self._answer_text(call, response, None)
        await self._send(text)

    def _answer_text(
        self, call: Call, response: dict[str, Any] | None, error: Exception | None
    ) -> str:
        """The frame answering ``call``, whose handler returned ``response`` or failed."""
        error_code: str | None = None  # observability: the CALLERROR sent, if any
        if error is None:
            try:
                text = self.session.result(call.message_id, response)
            except Exception as failure:  # e.g. a response that is not JSON
                error = failure
        if isinstance(error, OcppError):
            error_code = error.code
            text = self.session.error(call.message_id, error.code, error.description, error.details)
        elif error is not None:
            error_code = ErrorCode.INTERNAL_ERROR
            # CONFORMANCE R8: generic description, empty details; never a trace or SQL to the CP.
            self.log.error("%s: handler for %s failed", self.identity, call.action, exc_info=error)
            text = self.session.error(
                call.message_id, ErrorCode.INTERNAL_ERROR, "internal error", {}
            )
        # The boot handler may have changed the registration status (errata §3.8).
        self.session.accepted = bool(self.charge_point.accepted)
        self.observer.call_handled(self, call.action, error_code)  # observability: metrics
        return text

    async def call(
        self,
        action: str,
        payload: dict[str, Any],
        timeout: float,
    ) -> dict[str, Any]:
        """Send a CSMS-initiated CALL and return the CALLRESULT payload.

        One call in flight per charge point (OCPP-J 1.6 §4.1.1); later callers wait their turn.
        Raises OcppError if ``payload`` fails the schema; CallTimeout, CallRejected or
        ConnectionClosed if the charge point does not answer with a CALLRESULT.
        """
        lock = self._call_lock
        if lock is None:
            lock = self._call_lock = asyncio.Lock()
        async with lock:
            if self.closed:
                raise ConnectionClosed("the charge point is not connected")
            call = self.session.call(action, payload)
            answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._answer = answer
            try:
                await self._send(self.session.encode(call))
                return await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                self.session.cancel(call.message_id)
                raise CallTimeout(f"no answer to {action} within {timeout:g} s") from None
            finally:
                self._answer = None

    def _settle(self, call: Call, payload: dict[str, Any] | None, error: CallFailed | None) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        if error is not None:
            answer.set_exception(error)
        else:
            assert payload is not None
            answer.set_result(payload)

    async def _send(self, text: str) -> None:
        if self._send_nowait(text):
            return
        try:
            await self._transport.send(text)
        except Exception as error:  # the socket went away under us; the receive loop ends it
            self.log.info("%s: send failed: %s", self.identity, error)

    def _send_nowait(self, text: str) -> bool:
        """Send ``text`` now if the transport can without waiting; True if done with it (sent,
        or nothing to send it to), False if it must go through ``send``."""
        if self.closed:
            return True
        if self.trace is not None:  # observability: message trace
            self.trace.frame_out(text)
        try:
            return self._transport.send_nowait(text)
        except Exception as error:  # the socket went away under us; the receive loop ends it
            self.log.info("%s: send failed: %s", self.identity, error)
            return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_waiting()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionClosed("the connection closed"))
        with contextlib.suppress(Exception):  # already gone is as good as closed
            await self._transport.close(code, reason)

    def _stop_waiting(self) -> None:
        """A worker waiting for the next CALL ends (the connection is closing)."""
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(False)

    def connection_lost(self) -> None:
        """The transport is gone: fail a waiting call; queued CALLs can no longer be answered."""
        self.closed = True
        self._stop_waiting()
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionClosed("the connection closed"))
        if self._calls is not None:
            self._calls.clear()
