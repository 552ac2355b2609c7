"""Routing an incoming CALL to its handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chargegrid.csms.context import Context, Handler
from chargegrid.csms.routes import ROUTES
from chargegrid.ocpp.errors import ErrorCode, OcppError


class Dispatcher:
    def __init__(self, routes: Mapping[str, Handler] = ROUTES) -> None:
        self.routes = dict(routes)

    async def __call__(
        self, context: Context, action: str, payload: dict[str, Any]
    ) -> dict[str, Any]:
        handler = self.routes.get(action)
        if handler is None:  # the engine only passes supported actions; defensive
            raise OcppError(ErrorCode.NOT_SUPPORTED, f"{action} is not supported")
        return await handler(context, payload)
