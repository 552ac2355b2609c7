"""chargegrid: an OCPP 1.6J central system, as a server or inside your application.

The public, typed API (see docs/embedding.md)::

    from chargegrid import ChargeGrid, HookContext, OcppError, ErrorCode, build_app, load_settings

    grid_app = build_app(load_settings(database_url="sqlite+aiosqlite:///./cg.db"))
    grid = grid_app.node                    # hooks, decisions, events, queries, commands

Names not listed in ``__all__`` are internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Imported after __version__: app.py reads it while this module is being initialised.
from chargegrid.app import Application, ChargeGrid, build_app
from chargegrid.commands.service import CommandError, Operation
from chargegrid.config import Settings, load_settings
from chargegrid.csms.context import Context as HandlerContext
from chargegrid.csms.decisions import BootPolicy, ExternalAuthorizer, IdTagAuthorizer
from chargegrid.events import Event, EventStream, Listener
from chargegrid.hooks import AfterHook, BeforeHook, HookContext, Hooks
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.store.queries import Queries

__all__ = [
    "AfterHook",
    "Application",
    "BeforeHook",
    "BootPolicy",
    "ChargeGrid",
    "CommandError",
    "ErrorCode",
    "Event",
    "EventStream",
    "ExternalAuthorizer",
    "HandlerContext",
    "HookContext",
    "Hooks",
    "IdTagAuthorizer",
    "Listener",
    "OcppError",
    "Operation",
    "Queries",
    "Settings",
    "__version__",
    "build_app",
    "load_settings",
]
