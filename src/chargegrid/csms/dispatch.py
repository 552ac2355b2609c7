"""Routing an incoming CALL to its handler, with the embedding application's hooks around it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from chargegrid.csms.context import Context, Handler, NowaitHandler
from chargegrid.csms.routes import NOWAIT_ROUTES, ROUTES
from chargegrid.hooks import HookContext, Hooks
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.validation import validate_response
from chargegrid.store.group_commit import StoreUnavailable

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        routes: Mapping[str, Handler] = ROUTES,
        *,
        hooks: Hooks | None = None,
        node: Any = None,
        nowait_routes: Mapping[str, NowaitHandler] = NOWAIT_ROUTES,
    ) -> None:
        self.routes = dict(routes)
        # Only where the route is the built-in one: routes given with another handler for an
        # action get that handler called for every CALL of it.
        self.nowait_routes = {
            action: handler
            for action, handler in nowait_routes.items()
            if self.routes.get(action) is ROUTES.get(action)
        }
        self.hooks = hooks or Hooks()
        self.node = node  # handed to hooks as HookContext.node

    def nowait(
        self,
        context: Context,
        action: str,
        payload: dict[str, Any],
        done: Callable[[OcppError | None], None],
    ) -> dict[str, Any] | None:
        """Answer a CALL without a coroutine where its action allows (csms/routes.py
        NOWAIT_ROUTES) and no hook is around it: the response to send once ``done`` is called
        with None, or an OcppError instead; None: not taken, await :meth:`__call__`."""
        handler = self.nowait_routes.get(action)
        hooks = self.hooks
        if handler is None or hooks.has_before(action) or hooks.has_after(action):
            return None

        def ended(failure: Exception | None) -> None:
            done(None if failure is None else _not_stored(context, action, failure))

        return handler(context, payload, ended)

    async def __call__(
        self, context: Context, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        handler = self.routes.get(action)
        if handler is None:  # the engine only passes supported actions; defensive
            raise OcppError(ErrorCode.NOT_SUPPORTED, f"{action} is not supported")
        try:
            return await self._handle(handler, context, action, payload)
        except StoreUnavailable as error:
            raise _not_stored(context, action, error) from error

    async def _handle(
        self, handler: Handler, context: Context, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        hooks = self.hooks
        if not (hooks.has_before(action) or hooks.has_after(action)):
            return await handler(context, payload)  # the hot path: no hooks, no extra work
        hook_context = HookContext(
            charge_point=context.charge_point.identity,
            charge_point_id=context.charge_point.id,
            action=action,
            node=self.node,
        )
        response = await hooks.run_before(hook_context, payload)
        if response is None:
            response = await handler(context, payload)
        else:
            try:
                validate_response(action, response)
            except OcppError as error:
                # A hook's mistake must not reach the charge point as a malformed answer.
                hooks.failures += 1
                log.error("a before hook for %s returned an invalid response: %s", action, error)
                raise RuntimeError("invalid response from a before hook") from error
        hooks.schedule_after(hook_context, payload, response)
        return response


def _not_stored(context: Context, action: str, failure: Exception) -> OcppError:
    """The CALLERROR for a CALL whose write failed (StoreUnavailable, or a commit callback's
    failure). The writer logged the failed batch once; a trace per charge point would flood
    the log during a database outage. The CP keeps the message and retries (guarantee 1)."""
    log.warning("%s: %s not stored: %s", context.charge_point.identity, action, failure)
    error = OcppError(ErrorCode.INTERNAL_ERROR, "internal error")
    error.__cause__ = failure
    return error
