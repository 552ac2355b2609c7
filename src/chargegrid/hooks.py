"""Hooks: code of the embedding application around every OCPP action.

A *before* hook runs before chargegrid handles a CALL (from the charge point) or sends one (to it):
it may return a response to use instead (the handler is then skipped), raise
:class:`~chargegrid.ocpp.errors.OcppError` to answer with that CALLERROR, or return None to go on.
An *after* hook sees the request and the response once they are settled; it runs in the background,
so it never delays the CALLRESULT. A hook that raises anything else is logged and counted; a
charge point then gets ``InternalError`` (before hooks) or nothing changes (after hooks) — its
connection stays up.

::

    grid = ChargeGrid(settings)

    @grid.hooks.before("BootNotification")
    async def only_known_vendors(ctx: HookContext, request: dict) -> dict | None:
        if request["chargePointVendor"] not in ALLOWED:
            raise OcppError(ErrorCode.SECURITY_ERROR, "vendor not allowed")
        return None

    @grid.hooks.after("StatusNotification")
    async def keep_my_connectors(ctx: HookContext, request: dict, response: dict) -> None:
        ...
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from chargegrid.ocpp.actions import ACTIONS
from chargegrid.ocpp.errors import OcppError

if TYPE_CHECKING:
    from chargegrid.app import ChargeGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a hook has in reach: the charge point, and the node with its store and services."""

    charge_point: str  # the identity
    charge_point_id: int
    action: str
    node: ChargeGrid  # .engine, .queries, .commands, .bus, .settings, ...


BeforeHook = Callable[[HookContext, dict[str, Any]], Awaitable[dict[str, Any] | None]]
AfterHook = Callable[[HookContext, dict[str, Any], dict[str, Any]], Awaitable[None]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])

ALL = "*"


class Hooks:
    """The hooks of one node, by action (``"*"``: every action)."""

    def __init__(self) -> None:
        self._before: defaultdict[str, list[BeforeHook]] = defaultdict(list)
        self._after: defaultdict[str, list[AfterHook]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self.failures = 0  # hooks that raised something other than OcppError

    @staticmethod
    def _check(action: str) -> str:
        if action != ALL and action not in ACTIONS:
            raise ValueError(f"{action!r} is not an OCPP 1.6 action")
        return action

    def before(self, action: str = ALL) -> Callable[[H], H]:
        """Decorator: register a before hook for ``action`` (default: all actions)."""

        def register(hook: H) -> H:
            self._before[self._check(action)].append(hook)
            return hook

        return register

    def after(self, action: str = ALL) -> Callable[[H], H]:
        """Decorator: register an after hook for ``action`` (default: all actions)."""

        def register(hook: H) -> H:
            self._after[self._check(action)].append(hook)
            return hook

        return register

    def has_before(self, action: str) -> bool:
        return bool(self._before.get(action) or self._before.get(ALL))

    def has_after(self, action: str) -> bool:
        return bool(self._after.get(action) or self._after.get(ALL))

    async def run_before(
        self, context: HookContext, request: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The first response a before hook gives, or None. OcppError passes through."""
        hooks: list[BeforeHook] = [
            *self._before.get(context.action, []),
            *self._before.get(ALL, []),
        ]
        for hook in hooks:
            try:
                response: dict[str, Any] | None = await hook(context, request)
            except Exception as error:
                if not isinstance(error, OcppError):
                    self.failures += 1
                    log.exception(
                        "%s: before hook %s for %s failed",
                        context.charge_point,
                        getattr(hook, "__qualname__", hook),
                        context.action,
                    )
                raise
            if response is not None:
                return response
        return None

    def schedule_after(
        self, context: HookContext, request: dict[str, Any], response: dict[str, Any]
    ) -> None:
        """Run the after hooks in the background: the caller's answer is not held up."""
        hooks = (*self._after.get(context.action, ()), *self._after.get(ALL, ()))
        if not hooks:
            return
        task = asyncio.get_running_loop().create_task(
            self._run_after(hooks, context, request, response)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_after(
        self,
        hooks: tuple[AfterHook, ...],
        context: HookContext,
        request: dict[str, Any],
        response: dict[str, Any],
    ) -> None:
        for hook in hooks:
            try:
                await hook(context, request, response)
            except Exception:
                self.failures += 1
                log.exception(
                    "%s: after hook %s for %s failed",
                    context.charge_point,
                    getattr(hook, "__qualname__", hook),
                    context.action,
                )

    async def drain(self) -> None:
        """Wait for after hooks still running (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
