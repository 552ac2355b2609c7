"""Routing an incoming CALL to its handler, with the embedding application's hooks around it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from chargegrid.csms.context import Context, Handler
from chargegrid.csms.routes import ROUTES
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
    ) -> None:
        self.routes = dict(routes)
        self.hooks = hooks or Hooks()
        self.node = node  # handed to hooks as HookContext.node

    async def __call__(
        self, context: Context, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        handler = self.routes.get(action)
        if handler is None:  # the engine only passes supported actions; defensive
            raise OcppError(ErrorCode.NOT_SUPPORTED, f"{action} is not supported")
        try:
            return await self._handle(handler, context, action, payload)
        except StoreUnavailable as error:
            # The writer logged the failed batch once; a trace per charge point would flood the
            # log during a database outage. The CP keeps the message and retries (guarantee 1).
            log.warning("%s: %s not stored: %s", context.charge_point.identity, action, error)
            raise OcppError(ErrorCode.INTERNAL_ERROR, "internal error") from error

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
