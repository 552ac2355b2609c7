"""Plugins named in settings: ``plugins = ["myapp.ocpp:setup"]``.

Each is a dotted path ``module:function`` (or ``module.function``); the function is called with
the :class:`~chargegrid.app.ChargeGrid` node once it is built, and registers hooks, decisions and
DataTransfer handlers on it — the settings-file way of doing what the decorators do in code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class PluginError(Exception):
    pass


def load_plugin(path: str) -> Callable[[Any], Any]:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise PluginError(f"plugin {path!r} must be 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise PluginError(f"plugin {path!r}: cannot import {module_name!r}: {error}") from error
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PluginError(f"plugin {path!r}: {module_name} has no function {attribute!r}")
    return function  # type: ignore[no-any-return]
