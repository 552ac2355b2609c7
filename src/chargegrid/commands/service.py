"""Sending CSMS-initiated operations to charge points and recording what became of them.

An operation is recorded before anything is sent and moves ``pending -> sent -> accepted |
rejected | error | timeout`` (CONFORMANCE R11). Callers either await the charge point's answer
(``perform_now``) or get the recorded operation at once and follow it (``perform_later``), the
reference gem's two styles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from chargegrid.bus import channels
from chargegrid.bus.base import Bus
from chargegrid.clock import Clock, isoformat_z
from chargegrid.commands import catalog, effects
from chargegrid.config import Settings
from chargegrid.credentials import hash_secret
from chargegrid.gateway.admission import Admission
from chargegrid.gateway.connection import (
    CallRejected,
    CallTimeout,
    ChargePointConnection,
    ConnectionClosed,
)
from chargegrid.gateway.registry import ConnectionRegistry
from chargegrid.hooks import HookContext, Hooks
from chargegrid.ocpp.errors import OcppError
from chargegrid.ocpp.validation import validate_request
from chargegrid.store.group_commit import GroupCommitter
from chargegrid.store.tables import charge_points, operations

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"accepted", "rejected", "error", "timeout"})


class _Turn:
    """One charge point's turn for CSMS-initiated calls, and how many operations share it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Callee(Protocol):
    """Where a CALL goes: a local socket, or (cluster) the node holding the charge point."""

    identity: str

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float
    ) -> dict[str, Any]: ...


class Locator(Protocol):
    """Finds a charge point held by another node (cluster mode); None if no node holds it.

    Raises CommandError when the other nodes cannot be asked (Redis down)."""

    async def locate(self, identity: str) -> Callee | None: ...


class CommandError(Exception):
    """The operation cannot be sent; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Operation:
    id: int
    charge_point: str
    action: str
    status: str
    request: dict[str, Any]
    response: dict[str, Any] | None
    error_code: str | None
    error_description: str | None
    requested_by: str | None
    created_at: datetime
    sent_at: datetime | None
    completed_at: datetime | None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "charge_point": self.charge_point,
            "action": self.action,
            "status": self.status,
            "request": self.request,
            "response": self.response,
            "error_code": self.error_code,
            "error_description": self.error_description,
            "requested_by": self.requested_by,
            "created_at": isoformat_z(self.created_at),
            "sent_at": isoformat_z(self.sent_at) if self.sent_at else None,
            "completed_at": isoformat_z(self.completed_at) if self.completed_at else None,
        }


_OPERATION_COLUMNS = (*operations.c, charge_points.c.identity)


def _operation(row: Any) -> Operation:
    m = row._mapping
    return Operation(
        id=m["id"],
        charge_point=m["identity"],
        action=m["action"],
        status=m["status"],
        request=m["request"],
        response=m["response"],
        error_code=m["error_code"],
        error_description=m["error_description"],
        requested_by=m["requested_by"],
        created_at=m["created_at"],
        sent_at=m["sent_at"],
        completed_at=m["completed_at"],
    )


def _oversized_integer(value: Any, path: str = "") -> str | None:
    """The path of the first integer in ``value`` outside the signed 32-bit range, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if -(2**31) <= value < 2**31 else path or "payload"
    if isinstance(value, dict):
        items: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in items:
        found = _oversized_integer(child, child_path)
        if found is not None:
            return found
    return None


class CommandService:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        writer: GroupCommitter,
        registry: ConnectionRegistry[ChargePointConnection],
        admission: Admission,
        bus: Bus,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self._engine = engine
        self._writer = writer
        self._registry = registry
        self._admission = admission
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._tasks: set[asyncio.Task[Operation]] = set()
        # Set by the composition root: the embedding application's hooks, and the node they see.
        self.hooks = Hooks()
        self.node: Any = None
        # One call in flight per charge point (CONFORMANCE R11): an operation waits its turn
        # here, still "pending", and becomes "sent" only when it goes on the wire.
        # An entry lives while operations for that charge point are waiting or running, so a
        # fleet that comes and goes does not leave a lock per identity ever seen.
        self._turns: dict[str, _Turn] = {}
        # Observability: called with (action, status, seconds) when a charge point answered or
        # the call failed (metrics); the time runs from just before the CALL is sent.
        self.on_finished: Callable[[str, str, float], None] | None = None
        # Cluster mode (set by the composition root): routes to the node holding the socket.
        self.router: Locator | None = None

    async def perform_now(
        self,
        identity: str,
        action: str,
        payload: dict[str, Any],
        *,
        requested_by: str | None = None,
        timeout: float | None = None,
    ) -> Operation:
        """Send ``action`` and return the operation once the charge point answered (or not)."""
        task = await self._launch(identity, action, payload, requested_by, timeout)
        return await asyncio.shield(task)

    async def perform_later(
        self,
        identity: str,
        action: str,
        payload: dict[str, Any],
        *,
        requested_by: str | None = None,
        timeout: float | None = None,
    ) -> Operation:
        """Send ``action`` in the background; return the operation as recorded (pending)."""
        task = await self._launch(identity, action, payload, requested_by, timeout)
        operation_id = task.get_name().removeprefix("operation-")
        operation = await self.get(int(operation_id))
        assert operation is not None
        return operation

    async def get(self, operation_id: int) -> Operation | None:
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(*_OPERATION_COLUMNS)
                    .join(charge_points, charge_points.c.id == operations.c.charge_point_id)
                    .where(operations.c.id == operation_id)
                )
            ).first()
        return _operation(row) if row else None

    async def history(self, identity: str, *, limit: int = 50, offset: int = 0) -> list[Operation]:
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(*_OPERATION_COLUMNS)
                .join(charge_points, charge_points.c.id == operations.c.charge_point_id)
                .where(charge_points.c.identity == identity)
                .order_by(operations.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [_operation(row) for row in rows]

    async def stop(self) -> None:
        """Wait for operations in flight (each ends by its own timeout)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _launch(
        self,
        identity: str,
        action: str,
        payload: dict[str, Any],
        requested_by: str | None,
        timeout: float | None,
    ) -> asyncio.Task[Operation]:
        if action not in catalog.ACTION_BY_SLUG.values():
            raise CommandError(404, f"{action} is not an operation a central system sends")
        try:
            validate_request(action, payload)
        except OcppError as error:
            raise CommandError(422, f"invalid {action} payload: {error.description}") from None
        too_large = _oversized_integer(payload)
        if too_large is not None:
            # The schemas set no bounds, but ids, connector numbers and versions are 32-bit
            # integers in the database; the effects of a larger one could not be stored.
            raise CommandError(422, f"invalid {action} payload: {too_large}: out of 32-bit range")
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(charge_points.c.id, charge_points.c.registration_status).where(
                        charge_points.c.identity == identity
                    )
                )
            ).first()
        if row is None:
            raise CommandError(404, f"no charge point {identity!r}")
        charge_point_id, registration = row
        if registration == "Rejected":
            # CONFORMANCE L3: a rejected charge point is sent nothing.
            raise CommandError(409, f"{identity} is Rejected; the central system sends it nothing")
        if registration == "Pending" and action in catalog.NOT_WHILE_PENDING:
            raise CommandError(
                409, f"{identity} is Pending; {action} is not sent before it is Accepted"
            )
        live: Callee | None = self._registry.get(identity)
        if live is None and self.router is not None:
            # Not held here: another node may hold it (answers at once when nobody does).
            live = await self.router.locate(identity)
        if live is None:
            raise CommandError(409, f"{identity} is not connected")
        now = self._clock.now()
        record = {
            "charge_point_id": charge_point_id,
            "action": action,
            "status": "pending",
            "request": catalog.masked(action, payload),
            "requested_by": requested_by,
            "created_at": now,
        }

        async def create(c: AsyncConnection) -> int:
            result = await c.execute(insert(operations).values(record).returning(operations.c.id))
            return int(result.scalar_one())

        operation_id = await self._writer.run(create)
        task = asyncio.create_task(
            self._execute(operation_id, live, charge_point_id, action, payload, timeout),
            name=f"operation-{operation_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _execute(
        self,
        operation_id: int,
        connection: Callee,
        charge_point_id: int,
        action: str,
        payload: dict[str, Any],
        timeout: float | None,
    ) -> Operation:
        response: dict[str, Any] | None = None
        error_code: str | None = None
        description: str | None = None
        identity = connection.identity
        turn = self._turns.get(identity)
        if turn is None:
            turn = self._turns[identity] = _Turn()
        turn.users += 1
        started = time.perf_counter()
        try:
            async with turn.lock:
                hook_context = self._hook_context(connection, charge_point_id, action)
                # A before hook may answer in the charge point's place, or refuse (OcppError).
                replaced = (
                    await self.hooks.run_before(hook_context, payload)
                    if self.hooks.has_before(action)
                    else None
                )
                await self._update(operation_id, status="sent", sent_at=self._clock.now())
                started = time.perf_counter()
                response = (
                    replaced
                    if replaced is not None
                    else await connection.call(
                        action,
                        payload,
                        timeout if timeout is not None else self._settings.call_timeout,
                    )
                )
            status = catalog.outcome(response)
            self.hooks.schedule_after(hook_context, payload, response)
        except CallTimeout as error:
            status, error_code, description = "timeout", "Timeout", str(error)
        except OcppError as error:  # a before hook refused the operation
            status, error_code, description = "error", str(error.code), error.description
        except CallRejected as error:
            status, error_code, description = "error", error.code, error.description
        except ConnectionClosed as error:
            status, error_code, description = "error", "ConnectionClosed", str(error)
        except Exception as error:  # never leave an operation pending
            log.exception("operation %d (%s) failed", operation_id, action)
            status, error_code, description = "error", "InternalError", type(error).__name__
        finally:
            turn.users -= 1
            if not turn.users:
                del self._turns[identity]
        if self.on_finished is not None:
            self.on_finished(action, status, time.perf_counter() - started)
        now = self._clock.now()

        async def finish(c: AsyncConnection) -> None:
            await c.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(
                    status=status,
                    response=response,
                    error_code=error_code,
                    error_description=description,
                    completed_at=now,
                )
            )
            if response is not None:  # effects.apply ignores refusals where they change nothing
                await effects.apply(
                    c,
                    charge_point_id=charge_point_id,
                    operation_id=operation_id,
                    action=action,
                    request=payload,
                    response=response,
                    now=now,
                )
            if (
                action == "ChangeConfiguration"
                and payload.get("key") == "AuthorizationKey"
                and response is not None
                and response.get("status") == "Accepted"
            ):
                # CONFORMANCE H8: the old key stops working only once the charge point has it.
                await c.execute(
                    update(charge_points)
                    .where(charge_points.c.id == charge_point_id)
                    .values(
                        auth_key_hash=hash_secret(
                            str(payload["value"]),
                            iterations=self._settings.auth_key_hash_iterations,
                        ),
                        updated_at=now,
                    )
                )

        try:
            await self._writer.run(finish)
        except Exception:
            # The answer could not be stored with its effects; never leave the operation "sent".
            log.exception("operation %d (%s): storing the result failed", operation_id, action)
            await self._update(
                operation_id,
                status="error",
                response=response,
                error_code="InternalError",
                error_description="the charge point answered, but its answer could not be stored",
                completed_at=now,
            )
        if action == "ChangeConfiguration" and payload.get("key") == "AuthorizationKey":
            self._admission.forget(connection.identity)
        operation = await self.get(operation_id)
        assert operation is not None
        await self._publish(operation)
        return operation

    def _hook_context(self, connection: Callee, charge_point_id: int, action: str) -> HookContext:
        return HookContext(
            charge_point=connection.identity,
            charge_point_id=charge_point_id,
            action=action,
            node=self.node,
        )

    async def _update(self, operation_id: int, **values: Any) -> None:
        async def unit(c: AsyncConnection) -> None:
            await c.execute(
                update(operations).where(operations.c.id == operation_id).values(**values)
            )

        await self._writer.run(unit)

    async def _publish(self, operation: Operation) -> None:
        message = operation.as_dict()
        for channel in (
            channels.charge_point(operation.charge_point, channels.OPERATIONS),
            channels.fleet(channels.OPERATIONS),
        ):
            if self._bus.has_subscribers(channel):
                await self._bus.publish(channel, message)
