"""The official OCPP 1.6 JSON schemas, compiled once into fast validators.

The schemas ship in the ``ocpp`` package (``ocpp/v16/schemas``: ``X.json`` for the request of
action X, ``XResponse.json`` for its response; draft-04, the Security Whitepaper ones draft-06).
Each is compiled by fastjsonschema on first use, or all at once by :func:`compile_all`.

Every schema is compiled as draft-04, the 22 draft-06 files of the Security Whitepaper too:
their keywords mean the same in both, except that draft-06 counts ``2.0`` as an integer. One
rule for all actions keeps the promise that a validated "integer" field is a Python ``int``.

Two more rewrites do not change what is valid but make the generated code faster on the hot
path:

* a string ``enum`` becomes a custom format backed by a frozenset: fastjsonschema would test
  the values one by one (up to 22 comparisons for a measurand), a set lookup is one;
* ``additionalProperties`` is dropped from string-typed properties (the shipped schemas put
  it on every enum), where it means nothing but still costs a check.

Before it, a payload meets a check compiled by jsonschema-rs (Rust), about four times faster
than the generated Python on a MeterValues of three values (docs/benchmarks.md, session 8):
:func:`request_check` / :func:`response_check` answer only "valid"; where they do not, the
fastjsonschema validator runs and names the first problem, as before. The check is used only
for schemas where the two agree by construction: none with ``multipleOf`` (decimal arithmetic
differs between them) or the ``uri`` format (not the same rule); the property test in
tests/ocpp/test_ocpp_schemas.py holds both to the untouched schemas.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, Final, TypeVar

import fastjsonschema
import jsonschema_rs
import orjson

from chargegrid.ocpp.actions import ACTIONS
from chargegrid.ocpp.formats import is_date_time

__all__ = [
    "DRAFT_04",
    "ENUM_FORMATS",
    "Check",
    "Validator",
    "compile_all",
    "request_check",
    "request_validator",
    "response_check",
    "response_validator",
]

Validator = Callable[[Any], Any]
"""A compiled schema: returns on success, raises ``fastjsonschema.JsonSchemaValueException``."""

Check = Callable[[Any], bool]
"""True: the payload is valid. False: it may not be (run the :data:`Validator` to know why)."""

_SCHEMA_DIR: Final = resources.files("ocpp") / "v16" / "schemas"
DRAFT_04: Final = "http://json-schema.org/draft-04/schema#"

# Shared by every compiled validator, which looks formats up by name when it runs. "date-time"
# replaces fastjsonschema's regex (see chargegrid.ocpp.formats); "uri" keeps fastjsonschema's
# check, which only GetDiagnostics.location and UpdateFirmware.location use.
_FORMATS: Final[dict[str, Callable[[str], bool]]] = {"date-time": is_date_time}

ENUM_FORMATS: Final[dict[str, tuple[str, ...]]] = {}
"""Format name -> the enum values it stands for, to describe a failed check."""

_Compiled = TypeVar("_Compiled")
_enum_names: dict[tuple[str, ...], str] = {}
_requests: dict[str, Validator] = {}
_responses: dict[str, Validator] = {}
_request_checks: dict[str, Check] = {}
_response_checks: dict[str, Check] = {}


def request_validator(action: str) -> Validator:
    """Return the validator of the request payload of ``action`` (``KeyError`` if unknown)."""
    return _cached(_requests, _compile, action, "")


def response_validator(action: str) -> Validator:
    """Return the validator of the response payload of ``action`` (``KeyError`` if unknown)."""
    return _cached(_responses, _compile, action, "Response")


def request_check(action: str) -> Check:
    """Return the fast check of the request payload of ``action`` (``KeyError`` if unknown)."""
    return _cached(_request_checks, _compile_check, action, "")


def response_check(action: str) -> Check:
    """Return the fast check of the response payload of ``action`` (``KeyError`` if unknown)."""
    return _cached(_response_checks, _compile_check, action, "Response")


def _cached(
    cache: dict[str, _Compiled], compile: Callable[[str, str], _Compiled], action: str, suffix: str
) -> _Compiled:
    found = cache.get(action)
    if found is None:
        found = cache[action] = compile(action, suffix)
    return found


def compile_all() -> None:
    """Compile the request and response schema of every action now (warm-up at startup)."""
    for action in ACTIONS:
        request_validator(action)
        response_validator(action)
        request_check(action)
        response_check(action)


def _never(payload: Any) -> bool:
    return False


def _compile_check(action: str, suffix: str) -> Check:
    schema = _load(action, suffix)
    raw = orjson.dumps(schema)
    if b'"multipleOf"' in raw or b'"uri"' in raw:
        return _never  # the two validators may disagree here (see the module's docstring)
    is_valid = jsonschema_rs.Draft4Validator(
        schema, validate_formats=True, formats={"date-time": is_date_time}
    ).is_valid

    def check(payload: Any) -> bool:
        try:
            return bool(is_valid(payload))
        except Exception:  # a Python value JSON has no form for (REST-built): let the other say
            return False

    return check


def _load(action: str, suffix: str) -> dict[str, Any]:
    if action not in ACTIONS:
        raise KeyError(action)
    schema: dict[str, Any] = orjson.loads((_SCHEMA_DIR / f"{action}{suffix}.json").read_bytes())
    schema["$schema"] = DRAFT_04
    return schema


def _compile(action: str, suffix: str) -> Validator:
    schema = _load(action, suffix)
    # use_default=False: a validator must never write defaults into the wire dict.
    validator: Validator = fastjsonschema.compile(
        _rewrite(schema), formats=_FORMATS, use_default=False
    )
    return validator


def _rewrite(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rewrite(value) for key, value in node.items()}
    if node.get("type") == "string":
        node.pop("additionalProperties", None)
        values = node.get("enum")
        if (
            "format" not in node
            and isinstance(values, list)
            and all(isinstance(value, str) for value in values)
        ):
            del node["enum"]
            node["format"] = _enum_format(tuple(values))
    return node


def _enum_format(values: tuple[str, ...]) -> str:
    name = _enum_names.get(values)
    if name is None:
        name = f"ocpp-enum-{len(_enum_names)}"
        _enum_names[values] = name
        ENUM_FORMATS[name] = values
        _FORMATS[name] = frozenset(values).__contains__
    return name
