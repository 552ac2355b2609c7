"""Payload validation against the official OCPP 1.6 JSON schemas, mapped to OCPP-J error codes.

The schemas are the ones shipped in the ``ocpp`` package (``ocpp/v16/schemas``, errata applied).
Each is compiled once with fastjsonschema, on first use or all at once by :func:`compile_all`,
and then runs as plain Python on the decoded wire dict. Failures become :class:`OcppError` with
the code OCPP-J 1.6 Table 7 prescribes (CONFORMANCE R4), a description naming the field and
``details = {"field": <path>}``; the root of the payload is the empty path.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, Final

import fastjsonschema
import orjson

from chargegrid.ocpp.actions import ACTIONS, CSMS_INITIATED
from chargegrid.ocpp.errors import ErrorCode, OcppError
from chargegrid.ocpp.formats import is_date_time

__all__ = ["compile_all", "validate_outgoing_call", "validate_request", "validate_response"]

_Validator = Callable[[Any], Any]

_SCHEMA_DIR: Final = resources.files("ocpp") / "v16" / "schemas"
# Overrides fastjsonschema's date-time regex; "uri" keeps fastjsonschema's check, which only
# GetDiagnostics.location and UpdateFirmware.location use.
_FORMATS: Final = {"date-time": is_date_time}

_requests: dict[str, _Validator] = {}
_responses: dict[str, _Validator] = {}

# JSON Schema keyword broken -> OCPP-J 1.6 Table 7 code. Table 7: "FormationViolation: payload
# is syntactically incorrect or not conform the PDU structure"; "PropertyConstraintViolation:
# a field contains an invalid value"; "OccurenceConstraintViolation: a field violates occurence
# constraints" (a missing required field, fewer array items than the cardinality allows);
# "TypeConstraintViolation: a field violates data type constraints". date-time and anyURI are
# data types in OCPP 1.6 §7, so a bad format is a type violation.
_CODES: Final[dict[str, ErrorCode]] = {
    "type": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "format": ErrorCode.TYPE_CONSTRAINT_VIOLATION,
    "required": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "maxItems": ErrorCode.OCCURENCE_CONSTRAINT_VIOLATION,
    "additionalProperties": ErrorCode.FORMATION_VIOLATION,
    "additionalItems": ErrorCode.FORMATION_VIOLATION,
}

_FORMAT_HINTS: Final = {
    "date-time": "an RFC 3339 date-time with offset, e.g. 2024-01-15T10:30:00Z",
    "uri": "a URI",
}


def validate_request(action: str, payload: dict[str, Any]) -> None:
    """Check the payload of a CALL of ``action``, in either direction.

    Raises :class:`OcppError` with the Table 7 code for the first problem found; with
    NotImplemented if ``action`` is not an OCPP 1.6 action.
    """
    validator = _requests.get(action) or _load(action, response=False)
    _run(validator, payload)


def validate_response(action: str, payload: dict[str, Any]) -> None:
    """Check the payload of a CALLRESULT answering a CALL of ``action``.

    Raises :class:`OcppError` like :func:`validate_request`.
    """
    validator = _responses.get(action) or _load(action, response=True)
    _run(validator, payload)


def validate_outgoing_call(action: str, payload: dict[str, Any]) -> None:
    """Check that we may send a CALL of ``action`` with this payload to a charge point.

    Like :func:`validate_request`, plus NotSupported for an action only a charge point may
    start. The REST API uses this to answer 422 before anything is queued.
    """
    if action not in CSMS_INITIATED and action in ACTIONS:
        raise OcppError(
            ErrorCode.NOT_SUPPORTED, f"{action} is sent by charge points, not by the CSMS"
        )
    validate_request(action, payload)


def compile_all() -> None:
    """Compile the request and response schema of every action now (warm-up at startup)."""
    for action in ACTIONS:
        if action not in _requests:
            _load(action, response=False)
        if action not in _responses:
            _load(action, response=True)


def _load(action: str, *, response: bool) -> _Validator:
    if action not in ACTIONS:
        raise OcppError(ErrorCode.NOT_IMPLEMENTED, f"{action[:64]!r} is not an OCPP 1.6 action")
    name = f"{action}Response.json" if response else f"{action}.json"
    schema = orjson.loads((_SCHEMA_DIR / name).read_bytes())
    # use_default=False: the validator must never write defaults into the wire dict.
    validator: _Validator = fastjsonschema.compile(schema, formats=_FORMATS, use_default=False)
    (_responses if response else _requests)[action] = validator
    return validator


def _run(validator: _Validator, payload: Any) -> None:
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _to_ocpp_error(exc) from None
    except (ArithmeticError, ValueError):
        # Only reachable with payloads built in Python (REST), e.g. NaN or an int too large for
        # a float hitting "multipleOf"; the wire decoder never produces those.
        raise OcppError(
            ErrorCode.PROPERTY_CONSTRAINT_VIOLATION,
            "payload: contains a number that cannot be checked",
            {"field": ""},
        ) from None


def _to_ocpp_error(exc: fastjsonschema.JsonSchemaValueException) -> OcppError:
    rule = exc.rule or ""
    field = _field_path(exc.name or "data")
    value = exc.value
    definition = exc.definition if isinstance(exc.definition, dict) else {}
    rule_definition = definition.get(rule)
    if rule == "required" and isinstance(value, dict):
        missing = next((key for key in rule_definition or () if key not in value), "?")
        field = _join(field, missing)
        problem = "is required"
    elif rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties") or {}
        extra = next((key for key in value if key not in known), "?")
        field = _join(field, str(extra))
        problem = "is not allowed here"
    elif rule == "type":
        types = rule_definition if isinstance(rule_definition, list) else [rule_definition]
        problem = "must be " + " or ".join(map(str, types))
    elif rule == "format":
        problem = "must be " + _FORMAT_HINTS.get(str(rule_definition), str(rule_definition))
    elif rule == "enum":
        problem = "must be one of " + ", ".join(map(str, rule_definition or ()))
    elif rule == "maxLength":
        problem = f"must be at most {rule_definition} characters long"
    elif rule == "minItems":
        problem = f"must have at least {rule_definition} item(s)"
    elif rule == "multipleOf":
        problem = f"must be a multiple of {rule_definition}"
    else:
        # Keywords the 1.6 schemas do not use today; fastjsonschema's text reads well enough.
        name = exc.name or ""
        message = exc.message
        problem = message[len(name) :].strip() if message.startswith(name) else message
    code = _CODES.get(rule, ErrorCode.PROPERTY_CONSTRAINT_VIOLATION)
    return OcppError(code, f"{field or 'payload'}: {problem}", {"field": field})


def _field_path(name: str) -> str:
    # fastjsonschema names the root "data": "data.meterValue[0].timestamp".
    if name.startswith("data."):
        return name[5:]
    if name.startswith("data"):
        return name[4:]
    return name


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key
